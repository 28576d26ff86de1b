"""``python -m workers --queue keel-interactive``: one worker process per task queue."""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog

from infra.settings import get_settings
from infra.structured_logging import configure_logging
from infra.temporal_client import connect
from workers.builder import build_worker

log = structlog.get_logger("keel.worker")


async def run_worker(queue: str) -> None:
    settings = get_settings()
    client = await connect(settings)
    worker = build_worker(client, queue, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "worker.started",
        task_queue=queue,
        temporal=settings.effective_temporal_address,
        simulator=settings.effective_simulator_url if settings.uses_simulator else None,
    )
    if settings.uses_simulator:
        log.warning(
            "worker.using_simulator",
            hint="no OPENAI_API_KEY or ANTHROPIC_API_KEY is set: LLM calls go to keel's simulator",
        )
    async with worker:
        await stop.wait()
    log.info("worker.stopped", task_queue=queue)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("--queue", required=True, help="task queue to poll, e.g. keel-interactive")
    args = parser.parse_args()
    configure_logging()
    asyncio.run(run_worker(args.queue))


if __name__ == "__main__":
    main()
