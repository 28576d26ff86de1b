"""Real worker processes for tests that need them (shared state, kill and restart)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from temporalio.client import Client

from infra.settings import KeelSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


def worker_environment(client: Client, settings: KeelSettings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update(
        TEMPORAL_ADDRESS=client.service_client.config.target_host,
        DATABASE_URL=settings.effective_database_url,
        KEEL_SIMULATOR_URL=settings.effective_simulator_url,
        KEEL_INTERACTIVE_TASK_QUEUE=settings.interactive_task_queue,
        KEEL_BATCH_TASK_QUEUE=settings.batch_task_queue,
        KEEL_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, queue: str, env: dict[str, str], log_path: Path) -> None:
        self.queue, self.env, self.log_path = queue, env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers", "--queue", self.queue],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    async def wait_until_polling(self, timeout: float = 60.0) -> None:
        """The worker logs `worker.started` once it is connected and registered."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if self.log_path.exists() and "worker.started" in self.log_path.read_text():
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"worker did not start:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float) -> int:
        """SIGTERM, as Kubernetes or compose scale a worker down, and the exit code it ends with."""
        assert self.process is not None, "the worker was never started"
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@contextmanager
def worker_processes(*workers: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()
