"""Scheduled batches: a Temporal Schedule starts a batch workflow that reads its file on the
worker at run time (nightly scoring), and can be paused and deleted."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from activities.batch.items import batch_report
from contracts.batch import BatchInput, BatchOptions, BatchResult
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from services.batches import create_batch_schedule
from tests.batch.conftest import CHEAP, items_of
from workflows.batch import PagedBatchWorkflow


async def first_run_id(client: Client, schedule_id: str, timeout: float = 30) -> str:
    handle = client.get_schedule_handle(schedule_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        actions = (await handle.describe()).info.recent_actions
        if actions:
            return actions[0].action.workflow_id  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
    raise AssertionError("the schedule never started a run")


async def test_a_schedule_runs_the_file_as_a_batch_and_can_be_paused_and_deleted(
    client: Client,
    keel_settings: KeelSettings,
    batch_worker: Worker,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    path = tmp_path / "nightly.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"custom_id": f"n{n}", "prompt": f"Score {n}", "model": CHEAP})
            for n in range(5)
        )
        + "\n{not json\n"
    )
    schedule_id = f"nightly-{uuid.uuid4().hex[:6]}"
    await create_batch_schedule(
        client, keel_settings, schedule_id, path, "0 2 * * *", BatchOptions(concurrency=2)
    )
    schedule = client.get_schedule_handle(schedule_id)
    try:
        description = await schedule.describe()
        assert (await description.memo())["keel_cron"] == "0 2 * * *"
        assert description.schedule.spec.calendars  # the server's form of the cron
        assert description.info.next_action_times  # 02:00 is coming
        await schedule.trigger()  # tonight's run, now
        workflow_id = await first_run_id(client, schedule_id)
        assert workflow_id.startswith(f"batch-{schedule_id}-")
        result: BatchResult = await client.get_workflow_handle(
            workflow_id, result_type=BatchResult
        ).result()
        batch_id = workflow_id.removeprefix("batch-")
        assert (result.batch_id, result.status) == (batch_id, "completed")
        assert (result.total, result.ok, result.failed) == (6, 5, 1)
        async with session_factory()() as session:
            report = await batch_report(session, batch_id)
        assert report is not None and report.schedule_id == schedule_id
        assert report.source_name == str(path)
        assert {i.status for i in await items_of(batch_id)} == {"ok", "failed"}

        await schedule.pause(note="test")
        assert (await schedule.describe()).schedule.state.paused
    finally:
        await schedule.delete()


async def test_a_scheduled_file_with_duplicate_ids_is_refused_with_the_reason(
    client: Client,
    keel_settings: KeelSettings,
    batch_worker: Worker,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    path = tmp_path / "dupes.jsonl"
    path.write_text('{"custom_id": "a", "prompt": "x"}\n{"custom_id": "a", "prompt": "y"}\n')
    workflow_id = f"batch-dupes-{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow(
        PagedBatchWorkflow.run,
        # What the schedule starts: no batch id (it comes from the workflow id), a file path.
        BatchInput(source_path=str(path)),
        id=workflow_id,
        task_queue=keel_settings.batch_task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, ActivityError)
    cause = failure.value.cause.cause
    assert isinstance(cause, ApplicationError) and cause.type == "BatchFileRefused"
    assert "duplicate custom_id" in cause.message
    async with session_factory()() as session:
        report = await batch_report(session, workflow_id.removeprefix("batch-"))
    assert report is not None and report.status == "refused"
    assert "duplicate custom_id" in (report.status_reason or "")
