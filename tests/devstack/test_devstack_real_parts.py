"""The real simulator and workers under `up`, once their modules exist (llmsim/workers)."""

from __future__ import annotations

import importlib.util
import os
import time
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
    if HAS_WORKERS:
        # The bulkhead on one host: every thread of the batch worker (the SDK's included, started
        # after the priority was lowered) yields the CPU; the interactive worker's do not.
        base = os.nice(0)
        batch = result.part(stack.worker_part(settings.batch_task_queue))
        interactive = result.part(stack.worker_part(settings.interactive_task_queue))
        assert batch.pid is not None and interactive.pid is not None
        batch_nice = thread_nice_values(started_threads(batch.pid))
        assert set(batch_nice) == {min(19, base + stack.BATCH_WORKER_NICE)}, batch_nice
        interactive_nice = thread_nice_values(started_threads(interactive.pid))
        assert set(interactive_nice) == {base}, interactive_nice
    pids = result.pids
    stack.down(settings, console=quiet_console(), grace=10.0)
    assert not [pid for pid in pids.values() if psutil.pid_exists(pid)], "left running or unreaped"


def started_threads(pid: int, timeout: float = 60.0) -> list[Path]:
    """The threads of ``pid`` once the worker has started the SDK's (it imports for a while
    first, on its main thread alone)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        if len(tasks) > 1:
            return tasks
        assert time.monotonic() < deadline, f"worker {pid} started no thread in {timeout}s"
        time.sleep(0.2)


def thread_nice_values(tasks: list[Path]) -> list[int]:
    """The nice value of each thread (``/proc/<pid>/task/<tid>/stat`` field 19)."""
    return [int((task / "stat").read_text().rpartition(")")[2].split()[16]) for task in tasks]
