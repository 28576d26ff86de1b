"""Helpers for the dev-stack tests: settings on free ports, stand-in parts, process checks.

(A module with its own name rather than conftest.py, so the tests can import it unambiguously.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console

from devstack import embedded_postgres, stack
from devstack.layout import StackLayout
from devstack.processes import ManagedProcess, PortClaim, StopOutcome
from infra.settings import KeelSettings

FAKE_PARTS = Path(__file__).with_name("fake_parts.py")
DEFAULT_PORTS = {7233, 8233, 5499, 8299, 8234}
HAS_MIGRATIONS = importlib.util.find_spec("infra.migrate") is not None


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (never keel's defaults)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            port = sock.getsockname()[1]
            if port not in DEFAULT_PORTS:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def make_settings(home: Path, **overrides: object) -> KeelSettings:
    temporal, ui, postgres, simulator, codec = free_ports(5)
    values: dict[str, object] = {
        "home": home,
        "dev_temporal_port": temporal,
        "dev_temporal_ui_port": ui,
        "dev_postgres_port": postgres,
        "simulator_port": simulator,
        "codec_server_port": codec,
        # No key configured, as on a fresh machine: the first `up` creates the key file.
        "encryption_keys": None,
        "encryption_keys_file": None,
        # Likewise no callback signing secret: the first `up` creates its file.
        "callback_signing_secret": None,
        "callback_signing_secret_file": None,
        "callback_allowed_destinations": None,
        "temporal_address": None,
        "database_url": None,
        "openai_api_key": None,
        "anthropic_api_key": None,
        "simulator_url": None,
    }
    values.update(overrides)
    return KeelSettings(_env_file=None, **values)  # type: ignore[arg-type]


def cli_env(settings: KeelSettings) -> dict[str, str]:
    """The environment under which `python -m starters.dev …` sees ``settings``."""
    env = stack.stack_env(settings)
    for key in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "KEEL_OPENAI_API_KEY",
        "KEEL_ANTHROPIC_API_KEY",
    ):
        env.pop(key, None)
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"
    return env


def fake_overrides(settings: KeelSettings) -> dict[str, ManagedProcess]:
    url = f"http://127.0.0.1:{settings.simulator_port}"
    env = stack.stack_env(settings)
    overrides = {
        stack.SIMULATOR: ManagedProcess(
            name=stack.SIMULATOR,
            what="LLM simulator (test stand-in)",
            argv=(
                sys.executable,
                str(FAKE_PARTS),
                "simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.simulator_port),
            ),
            address=url,
            env=env,
            ports=(PortClaim(settings.simulator_port, "LLM simulator", "pick another port"),),
            ready=lambda: stack.http_ok(f"{url}/health"),
            ready_timeout=20,
        )
    }
    for queue in stack.worker_queues(settings):
        name = stack.worker_part(queue)
        overrides[name] = ManagedProcess(
            name=name,
            what=f"worker ({queue}, test stand-in)",
            argv=(sys.executable, str(FAKE_PARTS), "worker", "--queue", queue),
            address=f"task queue {queue}",
            env=env,
            settle_seconds=0.3,
        )
    return overrides


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200, no_color=True)


def processes_under(home: Path, *elsewhere: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions ``home`` (or a path in ``elsewhere``) or that
    run with KEEL_HOME=home."""
    found = []
    marker = str(home)
    markers = [marker, *map(str, elsewhere)]
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            cmdline = " ".join(proc.info["cmdline"] or ())
            if any(m in cmdline for m in markers) or proc.environ().get("KEEL_HOME") == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_leftovers(home: Path, *elsewhere: Path) -> None:
    procs = processes_under(home, *elsewhere)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


@dataclass
class Stack:
    settings: KeelSettings
    overrides: dict[str, ManagedProcess]
    first_up: stack.StackStatus | None = None

    def up(self) -> stack.StackStatus:
        return stack.up(
            self.settings,
            overrides=self.overrides,
            migrate=HAS_MIGRATIONS,
            console=quiet_console(),
        )

    def down(self, *, purge: bool = False) -> list[StopOutcome]:
        return stack.down(self.settings, purge=purge, console=quiet_console(), grace=5.0)


def discard_home(home: Path) -> None:
    """Stop what runs for ``home`` and delete its data, including a Postgres service directory
    outside it (which deleting the home alone would leave behind)."""
    service_dir: Path | None = None
    with contextlib.suppress(Exception):
        service_dir = embedded_postgres.service_dir_of(StackLayout(home))
    with contextlib.suppress(Exception):
        stack.down(make_settings(home), purge=True, console=quiet_console(), grace=3.0)
    kill_leftovers(home, *([service_dir] if service_dir else []))
    if service_dir is not None:
        with contextlib.suppress(Exception):
            embedded_postgres.remove_service_dir(service_dir)
    shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def throwaway_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="keel-devstack-"))
    try:
        yield home
    finally:
        discard_home(home)
