"""The zero-setup stack: ``up`` / ``down`` / ``status`` over all its parts.

``up`` starts, in order and only what the settings call for: the Temporal dev server (its Web UI
pointed at the codec server), the embedded Postgres (or checks DATABASE_URL), the migrations, the
LLM simulator, the codec server, one worker per task queue. The first ``up`` also creates the
payload encryption key file when no key is configured, and the job-callback signing secret file
when no secret is. Everything lives under ``settings.home``.
``up`` is idempotent; ``down`` stops only what keel started (proved by its pid files) and keeps the
data unless ``purge`` (the key file stays even then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import structlog
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from devstack import embedded_postgres, temporal_dev_server
from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.other_stacks import RunningStack, stack_on_port
from devstack.processes import (
    ManagedProcess,
    PortClaim,
    StopOutcome,
    ensure_port_free,
    port_is_free,
    probe,
    recorded_parts,
    remove_record,
    spawn,
    stop_parts,
    wait_ready,
)
from infra.callback_signing import SigningSecretError, ensure_secret_file, signing_secret
from infra.payload_codec import EncryptionKeysError, configured_keys, ensure_key_file
from infra.settings import KeelSettings, get_settings

log = structlog.get_logger(__name__)

TEMPORAL = temporal_dev_server.PART
POSTGRES = embedded_postgres.PART
SIMULATOR = "simulator"
CODEC_SERVER = "codec-server"
MIGRATIONS = "migrations"
WORKER_SETTLE_SECONDS = 1.5
# The bulkhead on one host (ARCHITECTURE.md, "Bulkhead"): the batch worker runs at nice 10, so
# when a batch keeps the CPUs busy the interactive worker and Temporal (nice 0) are scheduled
# first; an idle host still gives the batch every cycle it wants. Measured with
# bench/batch_throughput.py --batch-nice 0 vs 10.
BATCH_WORKER_NICE = 10

PartState = Literal["running", "stopped", "external", "not used"]


@dataclass
class PartStatus:
    name: str
    what: str
    state: PartState
    address: str | None = None
    pid: int | None = None
    log_path: Path | None = None
    action: str | None = None
    note: str | None = None


@dataclass
class StackStatus:
    home: Path
    parts: list[PartStatus]
    temporal_address: str
    temporal_namespace: str
    database_url: str
    web_ui_url: str | None = None
    simulator_url: str | None = None
    codec_server_url: str | None = None
    notes: list[str] = field(default_factory=list)
    home_origin: str = ""
    # Stacks of other homes holding ports this home's stopped parts need (`keel dev status` says
    # where the stack that *is* running lives, instead of only "stopped").
    other_stacks: list[RunningStack] = field(default_factory=list)

    def part(self, name: str) -> PartStatus:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    @property
    def started(self) -> list[str]:
        return [p.name for p in self.parts if p.action == "started"]

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.parts if p.pid is not None}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["home"] = str(self.home)
        for other in data["other_stacks"]:
            other["home"] = str(other["home"])
        for part in data["parts"]:
            part["log_path"] = str(part["log_path"]) if part["log_path"] else None
        return data


# --- naming and environment -----------------------------------------------------------------


def worker_part(queue: str) -> str:
    """The part name (pid/log file stem) of the worker for ``queue``."""
    return "worker-" + re.sub(r"[^A-Za-z0-9._-]", "_", queue)


def worker_queues(settings: KeelSettings) -> list[str]:
    return list(dict.fromkeys([settings.interactive_task_queue, settings.batch_task_queue]))


def stack_env(settings: KeelSettings) -> dict[str, str]:
    """The environment for processes of the stack (workers, simulator).

    The parent's environment plus the settings that decide where the stack is, spelled so that
    ``get_settings()`` in the child derives the same addresses (workers read settings themselves).
    """
    env = dict(os.environ)
    env["KEEL_HOME"] = str(settings.home)
    env["KEEL_DEV_TEMPORAL_PORT"] = str(settings.dev_temporal_port)
    env["KEEL_DEV_TEMPORAL_UI_PORT"] = str(settings.dev_temporal_ui_port)
    env["KEEL_DEV_POSTGRES_PORT"] = str(settings.dev_postgres_port)
    env["KEEL_SIMULATOR_PORT"] = str(settings.simulator_port)
    env["KEEL_TEMPORAL_NAMESPACE"] = settings.temporal_namespace
    env["KEEL_INTERACTIVE_TASK_QUEUE"] = settings.interactive_task_queue
    env["KEEL_BATCH_TASK_QUEUE"] = settings.batch_task_queue
    for key in ("KEEL_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"):
        env.pop(key, None)
    if settings.temporal_address is not None:
        env["KEEL_TEMPORAL_ADDRESS"] = settings.temporal_address
    for key in ("KEEL_DATABASE_URL", "DATABASE_URL"):
        env.pop(key, None)
    if settings.database_url is not None:
        env["KEEL_DATABASE_URL"] = settings.database_url.get_secret_value()
    env.pop("KEEL_SIMULATOR_URL", None)
    if settings.simulator_url is not None:
        env["KEEL_SIMULATOR_URL"] = settings.simulator_url
    # Every process of the stack encrypts and decrypts with the same keys.
    env.pop("KEEL_ENCRYPTION_KEYS", None)
    if settings.encryption_keys is not None:
        env["KEEL_ENCRYPTION_KEYS"] = settings.encryption_keys.get_secret_value()
    env["KEEL_ENCRYPTION_KEYS_FILE"] = str(settings.effective_encryption_keys_file)
    env["KEEL_ENCRYPTION"] = "on" if settings.encryption else "off"
    env["KEEL_CODEC_SERVER_PORT"] = str(settings.codec_server_port)
    # Every process signs job callbacks with the same secret and sends them to the same places.
    env.pop("KEEL_CALLBACK_SIGNING_SECRET", None)
    if settings.callback_signing_secret is not None:
        env["KEEL_CALLBACK_SIGNING_SECRET"] = settings.callback_signing_secret.get_secret_value()
    env["KEEL_CALLBACK_SIGNING_SECRET_FILE"] = str(settings.effective_callback_signing_secret_file)
    env["KEEL_CALLBACK_ALLOWED_DESTINATIONS"] = (
        ",".join(settings.effective_callback_allowed_destinations) or "none"
    )
    return env


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_url(port: int) -> str:
    """Where the stack's own HTTP services (simulator, codec server) listen: loopback only."""
    return f"http://127.0.0.1:{port}"


def _http_service_spec(
    settings: KeelSettings,
    *,
    name: str,
    what: str,
    module: str,
    port: int,
    port_hint: str,
    port_what: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> ManagedProcess:
    """``python -m <module> --host 127.0.0.1 --port <port>``, ready once ``/health`` answers."""
    url = local_url(port)
    return ManagedProcess(
        name=name,
        what=what,
        argv=(
            sys.executable,
            "-m",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra_args,
        ),
        address=url,
        env=stack_env(settings),
        cwd=Path.cwd(),
        ports=(PortClaim(port, port_what or what, port_hint),),
        ready=lambda: http_ok(f"{url}/health"),
        ready_timeout=30.0,
    )


def simulator_spec(
    settings: KeelSettings, layout: StackLayout, profile: str | None = None
) -> ManagedProcess:
    return _http_service_spec(
        settings,
        name=SIMULATOR,
        what="LLM simulator",
        module="llmsim",
        port=settings.simulator_port,
        port_hint="set KEEL_SIMULATOR_PORT to a free port, KEEL_SIMULATOR_URL to use a running "
        "simulator, or OPENAI_API_KEY/ANTHROPIC_API_KEY to use real providers",
        extra_args=("--profile", profile) if profile else (),
    )


def uses_codec_server(settings: KeelSettings) -> bool:
    """Whenever payloads may be encrypted: encryption on, or keys kept for older payloads."""
    if settings.encryption:
        return True
    try:
        return bool(configured_keys(settings).keys)
    except EncryptionKeysError:
        return True  # configured, if wrongly: the codec server will say what is wrong


def codec_server_spec(settings: KeelSettings) -> ManagedProcess:
    return _http_service_spec(
        settings,
        name=CODEC_SERVER,
        what="codec server (Web UI decoding)",
        module="starters.codec_server",
        port=settings.codec_server_port,
        port_what="codec server",
        port_hint="set KEEL_CODEC_SERVER_PORT to a free port",
    )


def _ensure_encryption_key(settings: KeelSettings, report: _Reporter) -> None:
    """The dev stack's zero-setup key: created once, kept by `down` (even `--purge`)."""
    try:
        created = ensure_key_file(settings)
    except EncryptionKeysError as exc:
        raise DevStackError(
            f"Payload encryption keys are unusable: {exc}",
            hint="fix KEEL_ENCRYPTION_KEYS or the key file, then run `keel dev up` again",
        ) from exc
    if created is not None:
        report.note(
            f"created payload encryption key {created.key_id} in "
            f"{settings.effective_encryption_keys_file} (mode 600): prompts and answers in "
            "Temporal's history are encrypted with it; without it they cannot be read"
        )


def _ensure_callback_secret(settings: KeelSettings, report: _Reporter) -> None:
    """The dev stack's job-callback signing secret, created once like the encryption key, so
    `keel api` and every worker sign alike with nothing to set; and where callbacks may go."""
    try:
        created = ensure_secret_file(settings)
        signing_secret(settings)  # an unusable file stops `up` here, not a callback later
    except (SigningSecretError, OSError) as exc:
        raise DevStackError(
            f"The job-callback signing secret is unusable: {exc}",
            hint="fix KEEL_CALLBACK_SIGNING_SECRET or the secret file, then run `keel dev up` "
            "again",
        ) from exc
    if created is not None:
        report.note(
            f"created the job-callback signing secret in {created} (mode 600): `keel api` and "
            "the workers sign callbacks with it; receivers verify X-Keel-Signature with it"
        )
    allowed = settings.effective_callback_allowed_destinations
    if settings.callback_allowed_destinations is None and allowed:
        report.note(
            "job callbacks may go to loopback (127.0.0.0/8, ::1) on this dev stack; private, "
            "link-local and metadata addresses stay refused (KEEL_CALLBACK_ALLOWED_DESTINATIONS)"
        )


def worker_argv(queue: str, *, nice: int = 0) -> tuple[str, ...]:
    """How the stack (and bench/batch_throughput.py) runs the worker process of ``queue``."""
    return (
        sys.executable,
        "-m",
        "workers",
        "--queue",
        queue,
        *(("--nice", str(nice)) if nice else ()),
    )


def worker_nice(settings: KeelSettings, queue: str) -> int:
    """The batch queue's worker yields the CPU; the interactive one (or a shared one) does not."""
    if queue == settings.batch_task_queue and queue != settings.interactive_task_queue:
        return BATCH_WORKER_NICE
    return 0


def worker_spec(settings: KeelSettings, queue: str) -> ManagedProcess:
    return ManagedProcess(
        name=worker_part(queue),
        what=f"worker ({queue})",
        argv=worker_argv(queue, nice=worker_nice(settings, queue)),
        address=f"task queue {queue}",
        env=stack_env(settings),
        cwd=Path.cwd(),
        settle_seconds=WORKER_SETTLE_SECONDS,
    )


# --- another home's stack ---------------------------------------------------------------------


def _ports_needed(settings: KeelSettings, layout: StackLayout) -> list[int]:
    """The ports of this home's parts that are not running yet (what ``up`` would claim)."""
    wanted: list[tuple[str, int]] = []
    if settings.uses_dev_temporal:
        wanted.append((TEMPORAL, settings.dev_temporal_port))
        wanted.append((TEMPORAL, settings.dev_temporal_ui_port))
    if settings.uses_embedded_postgres:
        wanted.append((POSTGRES, settings.dev_postgres_port))
    if settings.uses_simulator and settings.simulator_url is None:
        wanted.append((SIMULATOR, settings.simulator_port))
    if uses_codec_server(settings):
        wanted.append((CODEC_SERVER, settings.codec_server_port))
    running = {name for name in {n for n, _ in wanted} if probe(layout, name).state == "running"}
    return list(dict.fromkeys(port for name, port in wanted if name not in running))


def other_stacks(settings: KeelSettings, layout: StackLayout) -> list[RunningStack]:
    """Other homes' stacks listening on ports this home's stopped parts need, one per home."""
    found: dict[Path, RunningStack] = {}
    for port in _ports_needed(settings, layout):
        if port_is_free(port):
            continue
        other = stack_on_port(port, besides=layout.home)
        if other is not None:
            found.setdefault(other.home, other)
    return list(found.values())


def _refuse_beside_another_stack(settings: KeelSettings, layout: StackLayout) -> None:
    """Refuse to start a second stack (and its second encryption key) on a running one's ports.

    Runs before ``up`` creates anything under this home, so a refused ``up`` leaves no key file,
    no directory and no process behind.
    """
    running = other_stacks(settings, layout)
    if running:
        other = running[0]
        raise DevStackError(
            f"A keel dev stack is already running from another home: {other.home} (its "
            f"{other.part}, pid {other.pid}, holds port {other.port}). This command's home is "
            f"{layout.home} ({settings.home_origin}); starting a stack here would create a "
            "second encryption key that the running stack's workers cannot read.",
            hint=f"use the running stack: `export KEEL_HOME={other.home}` (or put it in front "
            f"of each command: `KEEL_HOME={other.home} keel dev status`); or stop it first "
            f"with `KEEL_HOME={other.home} keel dev down`; or give this home its own ports "
            "(KEEL_DEV_TEMPORAL_PORT, KEEL_DEV_TEMPORAL_UI_PORT, KEEL_DEV_POSTGRES_PORT, "
            "KEEL_SIMULATOR_PORT, KEEL_CODEC_SERVER_PORT)",
        )


# --- up -------------------------------------------------------------------------------------


class _Reporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.actions: dict[str, str] = {}
        self.notes: list[str] = []

    def action(self, part: str, what: str, text: str) -> None:
        self.actions[part] = what
        self.console.print(f"[green]✓[/] {escape(text)}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.debug("devstack.note", note=text)
        self.console.print(f"[yellow]•[/] {escape(text)}")


def _ensure_running(
    specs: Sequence[ManagedProcess], layout: StackLayout, report: _Reporter
) -> None:
    """Start each spec not already running (spawn all, then wait for all)."""
    spawned = []
    for spec in specs:
        found = probe(layout, spec.name, spec.argv)
        if found.state == "running":
            assert found.record is not None
            text = f"{spec.label} already running (pid {found.pid})"
            if found.record.argv is not None and found.record.argv != spec.argv:
                text += " with other options than requested; `keel dev down` then `up` to apply"
            report.action(spec.name, "already running", text)
            continue
        if found.state == "stale":
            remove_record(layout, spec.name)
            report.note(f"removed stale pid file of {spec.name}: {found.reason}")
        for claim in spec.ports:
            ensure_port_free(claim)
        spawned.append((spec, spawn(spec, layout)))
    for spec, process in spawned:
        wait_ready(spec, layout, process)
        where = f" at {spec.address}" if spec.address else ""
        report.action(spec.name, "started", f"{spec.label} started (pid {process.pid}){where}")


def _run_migrations(settings: KeelSettings, report: _Reporter) -> None:
    shown = embedded_postgres.display_url(settings.effective_database_url)
    try:
        from infra.migrate import upgrade_to_head  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise DevStackError(
            f"Cannot run the database migrations: {exc}.",
            hint="infra/migrate.py (upgrade_to_head) is part of keel; check the checkout",
        ) from exc
    alembic_logger = logging.getLogger("alembic")
    previous_level = alembic_logger.level
    if alembic_logger.getEffectiveLevel() < logging.WARNING:
        alembic_logger.setLevel(logging.WARNING)  # the console line below says what happened
    try:
        _outside_event_loop(lambda: upgrade_to_head(settings.effective_database_url))
    except DevStackError:
        raise
    except Exception as exc:
        raise DevStackError(
            f"Database migrations (alembic upgrade head) failed against {shown}: "
            f"{type(exc).__name__}: {exc}",
            hint="fix the migration error above, then run `keel dev up` again "
            "(everything already started stays running)",
        ) from exc
    finally:
        alembic_logger.setLevel(previous_level)
    report.action(MIGRATIONS, "applied", f"database migrations at head ({shown})")


def _outside_event_loop(fn: Callable[[], None]) -> None:
    """Run ``fn`` here, or in a helper thread when this thread runs an event loop (alembic's
    env.py calls ``asyncio.run``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        fn()
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="keel-migrations")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _simulator_banner(settings: KeelSettings, profile: str | None, console: Console) -> None:
    profile_text = f" (profile '{profile}')" if profile else ""
    console.print(
        Panel(
            "No OPENAI_API_KEY or ANTHROPIC_API_KEY is set, so every LLM call goes to the keel "
            f"LLM simulator at {escape(settings.effective_simulator_url)}{escape(profile_text)}.\n"
            "Set a provider key to use real models.",
            title="[bold]LLM SIMULATOR IN USE[/]",
            border_style="bold yellow",
        )
    )


def _ensure_embedded_postgres(
    settings: KeelSettings,
    layout: StackLayout,
    report: _Reporter,
    override: ManagedProcess | None = None,
) -> None:
    if override is not None:
        _ensure_running([override], layout, report)
        return
    run_as = embedded_postgres.run_as_user()
    cluster, notes = embedded_postgres.prepare_cluster(layout, run_as)
    for note in notes:
        report.note(note)
    if embedded_postgres.initdb(cluster, layout, run_as):
        report.note(f"initialised a new Postgres cluster in {cluster.data}")
    _ensure_running(
        [embedded_postgres.postgres_spec(settings, layout, cluster, run_as)], layout, report
    )
    if embedded_postgres.ensure_database(settings.dev_postgres_port):
        report.note(f"created database '{embedded_postgres.DATABASE}'")


def up_postgres_only(settings: KeelSettings, console: Console | None = None) -> str:
    """Start only the embedded Postgres under ``settings.home`` and return its URL (the test
    suite's fallback on a machine with no Postgres of its own). ``down`` stops it."""
    layout = StackLayout(settings.home)
    layout.ensure()
    _ensure_embedded_postgres(settings, layout, _Reporter(console or Console(stderr=True)))
    return embedded_postgres.embedded_url(settings)


def up(
    settings: KeelSettings | None = None,
    *,
    sim_profile: str | None = None,
    workers: bool = True,
    migrate: bool = True,
    overrides: Mapping[str, ManagedProcess] | None = None,
    console: Console | None = None,
) -> StackStatus:
    """Start what is not running yet; return the resulting status.

    ``overrides`` maps a part name (``simulator``, ``worker-<queue>``, ``temporal``) to the
    :class:`ManagedProcess` to run instead of the default one (the test seam).
    Raises :class:`DevStackError` with what to do when a part cannot start; parts already started
    stay running.
    """
    settings = settings or get_settings()
    overrides = dict(overrides or {})
    console = console or Console()
    layout = StackLayout(settings.home)
    _refuse_beside_another_stack(settings, layout)
    layout.ensure()
    report = _Reporter(console)
    log.debug("devstack.up", home=str(layout.home))

    # 1. Temporal (its Web UI decodes payloads through the codec server)
    codec = uses_codec_server(settings)
    if settings.uses_dev_temporal:
        spec = overrides.get(TEMPORAL) or temporal_dev_server.temporal_spec(
            settings, layout, local_url(settings.codec_server_port) if codec else None
        )
        if probe(layout, spec.name, spec.argv).state != "running":
            for claim in spec.ports:  # a key is made only for a stack that can start
                ensure_port_free(claim)
        _ensure_encryption_key(settings, report)
        _ensure_running([spec], layout, report)
    else:
        warning = temporal_dev_server.check_external(
            settings.effective_temporal_address, settings.temporal_namespace
        )
        if warning:
            report.note(warning)
        report.action(TEMPORAL, "external", f"using Temporal at {settings.temporal_address}")

    # 2. Postgres
    if settings.uses_embedded_postgres:
        _ensure_embedded_postgres(settings, layout, report, overrides.get(POSTGRES))
    else:
        embedded_postgres.check_database_url(settings.effective_database_url)
        report.action(
            POSTGRES,
            "external",
            "using Postgres at " + embedded_postgres.display_url(settings.effective_database_url),
        )

    # 3. Migrations
    if migrate:
        _run_migrations(settings, report)

    # 4. Simulator (before the workers: they may call it right away)
    if settings.uses_simulator:
        if settings.simulator_url is not None:
            url = settings.simulator_url.rstrip("/")
            if not http_ok(f"{url}/health"):
                report.note(f"the simulator at {url} (KEEL_SIMULATOR_URL) does not answer /health")
        else:
            sim = overrides.get(SIMULATOR) or simulator_spec(settings, layout, sim_profile)
            _ensure_running([sim], layout, report)
        _simulator_banner(settings, sim_profile, console)

    # 5. Codec server, for the Web UI and `temporal … --codec-endpoint`
    if codec:
        _ensure_running(
            [overrides.get(CODEC_SERVER) or codec_server_spec(settings)], layout, report
        )

    # 6. Workers, one process per task queue (`keel api` reads the same secret file)
    _ensure_callback_secret(settings, report)
    if workers:
        specs = [
            overrides.get(worker_part(q)) or worker_spec(settings, q)
            for q in worker_queues(settings)
        ]
        _ensure_running(specs, layout, report)

    result = status(settings)
    for part in result.parts:
        part.action = report.actions.get(part.name, part.action)
    result.notes = report.notes
    return result


# --- status ---------------------------------------------------------------------------------


def _managed_status(layout: StackLayout, name: str, what: str, address: str | None) -> PartStatus:
    found = probe(layout, name)
    if found.state == "running":
        recorded = found.record.address if found.record is not None else None
        return PartStatus(
            name, what, "running", recorded or address, found.pid, layout.log_file(name)
        )
    note = f"stale pid file: {found.reason}" if found.state == "stale" else None
    return PartStatus(name, what, "stopped", address, None, layout.log_file(name), note=note)


def status(settings: KeelSettings | None = None) -> StackStatus:
    """The state of every part (reads pid files and the process table; changes nothing)."""
    settings = settings or get_settings()
    layout = StackLayout(settings.home)
    parts: list[PartStatus] = []

    if settings.uses_dev_temporal:
        parts.append(
            _managed_status(
                layout, TEMPORAL, "Temporal dev server", settings.effective_temporal_address
            )
        )
    else:
        parts.append(PartStatus(TEMPORAL, "Temporal", "external", settings.temporal_address))

    db_url = embedded_postgres.display_url(settings.effective_database_url)
    if settings.uses_embedded_postgres:
        parts.append(_managed_status(layout, POSTGRES, "embedded Postgres", db_url))
    else:
        parts.append(PartStatus(POSTGRES, "Postgres", "external", db_url))

    simulator_url: str | None = None
    if not settings.uses_simulator:
        parts.append(
            PartStatus(SIMULATOR, "LLM simulator", "not used", note="a provider key is set")
        )
    elif settings.simulator_url is not None:
        simulator_url = settings.simulator_url
        parts.append(PartStatus(SIMULATOR, "LLM simulator", "external", simulator_url))
    else:
        simulator_url = settings.effective_simulator_url
        parts.append(_managed_status(layout, SIMULATOR, "LLM simulator", simulator_url))

    codec_url: str | None = None
    if uses_codec_server(settings):
        codec_url = local_url(settings.codec_server_port)
        parts.append(
            _managed_status(layout, CODEC_SERVER, "codec server (Web UI decoding)", codec_url)
        )
    else:
        parts.append(
            PartStatus(CODEC_SERVER, "codec server", "not used", note="KEEL_ENCRYPTION=off")
        )

    for queue in worker_queues(settings):
        parts.append(
            _managed_status(layout, worker_part(queue), f"worker ({queue})", f"task queue {queue}")
        )

    known = {p.name for p in parts}
    for name in recorded_parts(layout):
        if name not in known:
            parts.append(_managed_status(layout, name, name, None))

    return StackStatus(
        home=layout.home,
        home_origin=settings.home_origin,
        other_stacks=other_stacks(settings, layout),
        parts=parts,
        temporal_address=settings.effective_temporal_address,
        temporal_namespace=settings.temporal_namespace,
        database_url=db_url,
        web_ui_url=settings.web_ui_url if settings.uses_dev_temporal else None,
        simulator_url=simulator_url,
        codec_server_url=codec_url,
    )


# --- down -----------------------------------------------------------------------------------


def _live_postmaster(data_dir: Path) -> int | None:
    """The pid of a live postmaster on ``data_dir`` (per its postmaster.pid), if any."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError, PermissionError):
        return None
    try:
        process = psutil.Process(pid)
        if process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE:
            return pid
    except psutil.Error:
        return None
    return None


def down(
    settings: KeelSettings | None = None,
    *,
    purge: bool = False,
    grace: float = 10.0,
    console: Console | None = None,
) -> list[StopOutcome]:
    """Stop what keel started (workers and simulator first, then Postgres and Temporal).

    SIGTERM to each process group, SIGKILL after ``grace`` seconds; Postgres is stopped with
    ``pg_ctl stop -m fast``. Data stays unless ``purge``. Idempotent.
    """
    settings = settings or get_settings()
    console = console or Console()
    layout = StackLayout(settings.home)
    names = recorded_parts(layout)
    core = [n for n in (POSTGRES, TEMPORAL) if n in names]
    first = [n for n in names if n not in core]
    outcomes = stop_parts(layout, first, grace=grace) + stop_parts(layout, core, grace=grace)
    for outcome in outcomes:
        if outcome.result == "stopped":
            console.print(f"[green]✓[/] stopped {escape(outcome.name)} (pid {outcome.pid})")
        elif outcome.result == "stale":
            console.print(
                f"[yellow]•[/] removed stale pid file of {escape(outcome.name)}: "
                f"{escape(outcome.detail or '')}"
            )
        elif outcome.result == "failed":
            console.print(
                f"[red]✗[/] could not stop {escape(outcome.name)} (pid {outcome.pid}): "
                f"{escape(outcome.detail or '')}"
            )
    if not any(o.result == "stopped" for o in outcomes):
        console.print("Nothing keel started is running.")
    failed = [o for o in outcomes if o.result == "failed"]
    if failed:
        raise DevStackError(
            "Some processes did not stop: " + ", ".join(f"{o.name} (pid {o.pid})" for o in failed),
            hint="stop them by hand (`kill -9 PID`) and run `keel dev down` again",
        )
    if purge:
        _purge(layout, console)
    return outcomes


def _purge(layout: StackLayout, console: Console) -> None:
    service_dir = embedded_postgres.service_dir_of(layout)
    data_dirs = [layout.postgres_data] + ([service_dir / "data"] if service_dir else [])
    for data in data_dirs:
        postmaster = _live_postmaster(data)
        if postmaster is not None:
            raise DevStackError(
                f"Not purging: a Postgres (pid {postmaster}) still runs on {data} "
                "without a keel pid file.",
                hint=f"stop it first: `kill {postmaster}`, then `keel dev down --purge` again",
            )
    # Before <home>/postgres, which holds the link to it: a failure leaves the link to retry.
    if service_dir is not None and service_dir.exists():
        embedded_postgres.remove_service_dir(service_dir)
        console.print(f"[green]✓[/] removed {escape(str(service_dir))}")
    for directory in layout.data_dirs():
        if directory.exists():
            shutil.rmtree(directory)
            console.print(f"[green]✓[/] removed {escape(str(directory))}")
    with contextlib.suppress(OSError):  # not empty (other files live there) or already gone
        layout.home.rmdir()


# --- rendering ------------------------------------------------------------------------------

_STATE_STYLE = {"running": "green", "stopped": "red", "external": "cyan", "not used": "dim"}


def print_status(result: StackStatus, console: Console) -> None:
    """The status table plus the addresses a person needs next."""
    table = Table(title=f"keel dev stack ({escape(str(result.home))})", title_justify="left")
    table.add_column("part")
    table.add_column("state")
    table.add_column("address")
    table.add_column("pid", justify="right")
    table.add_column("log")
    for part in result.parts:
        state = f"[{_STATE_STYLE[part.state]}]{part.state}[/]"
        if part.note:
            state += f" [dim]({escape(part.note)})[/]"
        table.add_row(
            escape(part.what),
            state,
            escape(part.address or ""),
            str(part.pid) if part.pid else "",
            escape(str(part.log_path)) if part.log_path and part.state == "running" else "",
        )
    console.print(table)
    console.print(f"Home:             {escape(str(result.home))} ({escape(result.home_origin)})")
    for other in result.other_stacks:
        console.print(
            f"[bold yellow]Another home's stack is running on this stack's ports:[/] "
            f"{escape(str(other.home))} ({escape(other.part)}, pid {other.pid}, port "
            f"{other.port}). Use it: [bold]export KEEL_HOME={escape(str(other.home))}[/]",
            soft_wrap=True,
        )
    if result.web_ui_url:
        console.print(f"Temporal Web UI:  [bold link={result.web_ui_url}]{result.web_ui_url}[/]")
    console.print(
        f"Temporal:         {escape(result.temporal_address)} "
        f"(namespace {escape(result.temporal_namespace)})"
    )
    console.print(f"Database:         {escape(result.database_url)}")
    if result.simulator_url:
        console.print(f"LLM simulator:    {escape(result.simulator_url)}")
    if result.codec_server_url:
        console.print(
            f"Codec server:     {escape(result.codec_server_url)} (decodes encrypted payloads "
            f"for the Web UI; CLI: temporal workflow show -w ID --codec-endpoint "
            f"{escape(result.codec_server_url)})"
        )
    console.print(f"Logs:             {escape(str(result.home / 'logs'))}")
