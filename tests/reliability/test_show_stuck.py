"""`keel show` on a running workflow that makes no progress says so and why, instead of
"the workflow is working"."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from infra.settings import KeelSettings
from tests.helpers import KeelCli, eventually
from tests.reliability.stuck_workflows import BuggyWorkflow


async def _task_attempt(handle: WorkflowHandle[BuggyWorkflow, str]) -> int:
    description = await handle.describe()
    return description.raw_description.pending_workflow_task.attempt


@pytest.mark.slow  # a real `keel` process
async def test_keel_show_says_a_workflow_whose_task_keeps_failing_is_stuck_and_why(
    client: Client, keel_settings: KeelSettings
) -> None:
    queue = f"stuck-{uuid.uuid4().hex[:8]}"
    workflow_id = f"stuck-{uuid.uuid4().hex[:12]}"
    async with Worker(client, task_queue=queue, workflows=[BuggyWorkflow]):
        handle = await client.start_workflow(
            BuggyWorkflow.run, "some text", id=workflow_id, task_queue=queue
        )
        try:
            # The first task failed and its retry is pending.
            await eventually(lambda: _task_attempt(handle), lambda attempt: attempt >= 2, 30)
            shown = await KeelCli(client, keel_settings)("show", workflow_id)
        finally:
            await handle.terminate("test over")

    assert shown.code == 0, shown.text
    assert "RUNNING" in shown.out
    assert "stuck:" in shown.out and "its workflow task has failed" in shown.out
    assert "a bug in the workflow code while handling 9 characters" in shown.out
    assert "the workflow is working" not in shown.out
