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
) -> None:
    """Run a worker for one task queue until Ctrl-C / SIGTERM."""
    from workers.__main__ import run_worker  # the worker's imports are heavy; only pay them here

    configure_logging()
    asyncio.run(run_worker(queue or get_settings().interactive_task_queue))
