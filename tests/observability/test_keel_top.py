"""``keel top`` in a real terminal (tmux): it shows the dashboard's figures against a live stack
(Temporal, Postgres, a worker, the simulator), they change as calls are made, and it exits 0
on q and on Ctrl-C."""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from services.asks import start_ask
from tests.batch.conftest import CHEAP
from tests.helpers import KEEL, eventually
from tests.worker_processes import REPO_ROOT, worker_environment
from workflows.ask import AskInput


class Tmux:
    """A tmux server of its own (its own socket), killed at the end."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True
        ).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(f"keel-top-{uuid.uuid4().hex[:8]}")
    try:
        yield server
    finally:
        subprocess.run(["tmux", "-L", server.socket, "kill-server"], capture_output=True)


def start_top(tmux: Tmux, env: dict[str, str], tenant: str) -> None:
    """``keel top`` in the pane, under bash (which, unlike dash, carries on after a Ctrl-C its
    child handled), followed by its exit code."""
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    command = (
        f"cd {shlex.quote(str(REPO_ROOT))} && env -i {exports} {KEEL} top --tenant {tenant}; "
        'echo "keel top exited $?"; sleep 120'
    )
    tmux("new-session", "-d", "-s", "top", "-x", "150", "-y", "45", "bash", "-c", command)


def exit_code(tmux: Tmux) -> int | None:
    """keel top's exit code once it has exited (None while it runs)."""
    match = re.search(r"keel top exited (\d+)", tmux.screen())
    return int(match.group(1)) if match else None


def shown_figure(screen: str, label: str) -> str | None:
    """The value under ``label`` in the calls row (labels line, then values line); None while
    the screen does not show it (a capture can land mid-redraw)."""
    lines = screen.splitlines()
    for index, line in enumerate(lines[:-1]):
        if label in line and "calls/s" in line:
            values = lines[index + 1][line.index(label) :].split()
            return values[0] if values else None
    return None


def figure(screen: str, label: str) -> str:
    value = shown_figure(screen, label)
    assert value is not None, f"no {label!r} on screen:\n{screen}"
    return value


@pytest.mark.slow
async def test_keel_top_shows_live_figures_and_quits_on_q_and_ctrl_c(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    tmux: Tmux,
) -> None:
    # Its own tenant: the suite's other tests share this database's ledger.
    tenant = f"top-{uuid.uuid4().hex[:6]}"
    env = worker_environment(client, keel_settings, TERM="xterm-256color", NO_COLOR="1")
    start_top(tmux, env, tenant)
    screen = await eventually(tmux.screen, lambda s: "approvals pending" in s, timeout=120)
    assert figure(screen, "calls/s") == "0.00"
    assert f"{keel_settings.interactive_task_queue} activity" in screen
    assert "(none running)" in screen
    assert f"tenant {tenant}" in screen
    first_clock = screen.split("keel top", 1)[1].split()[0]

    for n in range(3):
        params = AskInput(prompt=f"Name river {n}.", models=[CHEAP], max_tokens=20, tenant=tenant)
        await (
            await start_ask(client, keel_settings, params, f"top-{uuid.uuid4().hex[:8]}")
        ).result()
    # Three calls in the last minute: 0.05/s; their latency and cost appear.
    screen = await eventually(
        tmux.screen, lambda s: shown_figure(s, "calls/s") == "0.05", timeout=90
    )
    assert figure(screen, "errors") == "0.0%"
    # Milliseconds, grouped by thousands on a slow machine ("2,193").
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", figure(screen, "p50")), screen
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", figure(screen, "p99")), screen
    assert figure(screen, "cost/hour") != "$0.0000"
    assert screen.split("keel top", 1)[1].split()[0] != first_clock  # refreshed every second

    tmux("send-keys", "-t", "top", "q")
    assert await eventually(lambda: exit_code(tmux), lambda code: code is not None, timeout=60) == 0
    tmux("kill-session", "-t", "top")

    start_top(tmux, env, tenant)
    await eventually(tmux.screen, lambda s: "approvals pending" in s, timeout=120)
    tmux("send-keys", "-t", "top", "C-c")
    assert await eventually(lambda: exit_code(tmux), lambda code: code is not None, timeout=60) == 0
