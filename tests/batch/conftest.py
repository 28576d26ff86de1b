"""Batch test fixtures: a worker on this test's batch queue, and helpers to load and run batches
the way `keel batch start` does (validate, load into Postgres, start the workflow)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.batch.files import BatchFileLimits, parse_lines
from contracts.batch import BatchOptions, BatchResult
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import BatchItem
from services.batches import submit_batch
from workers.builder import build_worker
from workflows.batch import PagedBatchWorkflow

CHEAP = "gpt-4o-mini"
BACKUP = "claude-3-5-haiku-latest"


@pytest.fixture
async def batch_worker(client: Client, keel_settings: KeelSettings) -> AsyncIterator[Worker]:
    """An in-process worker on this test's batch queue (workflows, batch and LLM activities)."""
    worker = build_worker(client, keel_settings.batch_task_queue, keel_settings)
    async with worker:
        yield worker


def prompt_lines(count: int, *, model: str | None = CHEAP, prefix: str = "q") -> list[str]:
    lines = []
    for n in range(count):
        line: dict[str, Any] = {
            "custom_id": f"{prefix}{n}",
            "prompt": f"Item {n}: name a river.",
            "max_tokens": 32,
        }
        if model:
            line["model"] = model
        lines.append(json.dumps(line))
    return lines


async def start_batch(
    client: Client,
    settings: KeelSettings,
    lines: Iterable[str],
    *,
    history_event_limit: int | None = None,
    **options: Any,
) -> tuple[str, WorkflowHandle[PagedBatchWorkflow, BatchResult]]:
    batch_id = f"t{uuid.uuid4().hex[:10]}"
    handle = await submit_batch(
        client,
        settings,
        session_factory(),
        list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
        batch_id=batch_id,
        options=BatchOptions(**options),
        source_name="test.jsonl",
        history_event_limit=history_event_limit,
    )
    return batch_id, handle


async def items_of(batch_id: str) -> list[BatchItem]:
    async with session_factory()() as session:
        result = await session.execute(
            select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(BatchItem.line_no)
        )
        return list(result.scalars())


def simulator_requests(stats: dict[str, Any]) -> int:
    return int(stats["totals"]["requests"])
