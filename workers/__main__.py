"""``python -m workers --queue keel-interactive``: one worker process per task queue."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable

import structlog

from activities.llm.budgets import budget_states
from infra.metrics import MetricsServer, refresh_state_gauges_forever, temporal_runtime_with_metrics
from infra.settings import get_settings
from infra.structured_logging import configure_logging
from infra.temporal_client import connect
from infra.tracing import configure_tracing, shutdown_tracing
from workers.builder import build_worker

log = structlog.get_logger("keel.worker")


async def run_worker(
    queue: str,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str | None], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, or until ``stop`` is set when given (then signals are left
    alone: a test runs the worker in its own process). ``on_started`` gets the metrics URL."""
    settings = get_settings()
    configure_tracing(settings, role=queue)
    metrics_server: MetricsServer | None = None
    runtime = None
    if settings.metrics_enabled:
        # Before the client: the SDK's metrics come from the runtime the client is built on.
        runtime, sdk_metrics_url = temporal_runtime_with_metrics()
        metrics_server = MetricsServer(
            settings.metrics_host, settings.metrics_port, sdk_metrics_url
        ).start()
    client = await connect(settings, runtime=runtime)
    worker = build_worker(client, queue, settings)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    log.info(
        "worker.started",
        task_queue=queue,
        temporal=settings.effective_temporal_address,
        simulator=settings.effective_simulator_url if settings.uses_simulator else None,
        metrics=metrics_server.url if metrics_server else None,
    )
    if settings.uses_simulator:
        log.warning(
            "worker.using_simulator",
            hint="no OPENAI_API_KEY or ANTHROPIC_API_KEY is set: LLM calls go to keel's simulator",
        )
    gauges = None
    if metrics_server is not None:
        gauges = asyncio.create_task(
            refresh_state_gauges_forever(
                settings, lambda session: budget_states(session, None, settings), client
            )
        )
    try:
        async with worker:
            if on_started is not None:
                on_started(metrics_server.url if metrics_server else None)
            await stop.wait()
    finally:
        if gauges is not None:
            gauges.cancel()
        if metrics_server is not None:
            metrics_server.stop()
        shutdown_tracing()
    log.info("worker.stopped", task_queue=queue)


def lower_cpu_priority(increment: int) -> None:
    """``os.nice`` before anything starts a thread: Linux keeps a nice value per thread and a new
    thread inherits its creator's, so the SDK's threads started later all run at the new one."""
    if increment:
        os.nice(increment)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("--queue", required=True, help="task queue to poll, e.g. keel-interactive")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="lower this process's CPU priority (`keel dev up` runs the batch worker at 10)",
    )
    args = parser.parse_args()
    lower_cpu_priority(args.nice)
    configure_logging()
    asyncio.run(run_worker(args.queue))


if __name__ == "__main__":
    main()
