"""``keel worker --queue Q``: run one worker process in the foreground."""

from __future__ import annotations

import asyncio

import typer

from infra.settings import get_settings
from infra.structured_logging import configure_logging


def worker(
    queue: str = typer.Option(
        None, help="Task queue to poll (default: the interactive queue, keel-interactive)."
    ),
    nice: int = typer.Option(
        0,
        min=0,
        max=19,
        help="Lower this process's CPU priority (`keel dev up` runs the batch worker at 10).",
    ),
) -> None:
    """Run a worker for one task queue until Ctrl-C / SIGTERM."""
    # The worker's imports are heavy; only pay them here.
    from workers.__main__ import lower_cpu_priority, run_worker

    lower_cpu_priority(nice)
    configure_logging()
    asyncio.run(run_worker(queue or get_settings().interactive_task_queue))
