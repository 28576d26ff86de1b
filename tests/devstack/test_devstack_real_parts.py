"""The real simulator and workers under `up`, once their modules exist (llmsim/workers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import psutil
import pytest
from devstack_helpers import HAS_MIGRATIONS, fake_overrides, make_settings, quiet_console

from devstack import stack

pytestmark = pytest.mark.slow  # a real dev stack with the real simulator and workers

HAS_SIMULATOR = importlib.util.find_spec("llmsim.__main__") is not None
HAS_WORKERS = importlib.util.find_spec("workers.__main__") is not None


@pytest.mark.skipif(
    not (HAS_SIMULATOR or HAS_WORKERS), reason="neither llmsim/__main__ nor workers/__main__ yet"
)
def test_up_runs_the_real_simulator_and_workers(scratch_home: Path) -> None:
    settings = make_settings(scratch_home)
    overrides = fake_overrides(settings)
    real = []
    if HAS_SIMULATOR:
        overrides.pop(stack.SIMULATOR)
        real.append(stack.SIMULATOR)
    if HAS_WORKERS:
        for queue in stack.worker_queues(settings):
            overrides.pop(stack.worker_part(queue))
            real.append(stack.worker_part(queue))

    result = stack.up(
        settings, overrides=overrides, migrate=HAS_MIGRATIONS, console=quiet_console()
    )

    for name in real:
        part = result.part(name)
        assert part.state == "running", name
        assert "fake_parts" not in " ".join(psutil.Process(part.pid).cmdline())
    if HAS_SIMULATOR:
        assert stack.http_ok(f"http://127.0.0.1:{settings.simulator_port}/health")
    pids = result.pids
    stack.down(settings, console=quiet_console(), grace=10.0)
    assert not [pid for pid in pids.values() if psutil.pid_exists(pid)], "left running or unreaped"
