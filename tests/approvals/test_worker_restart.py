"""A gate outlives its worker: the worker process is killed while the gate waits, a new one
starts, and the decision made through the CLI is honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client

from contracts.approvals import ApprovalMode, ReviewPolicy
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.approvals.records import pending_gate, seed_reviewers
from tests.approvals.reviews import published, start_review
from tests.helpers import KeelCli, audit_events
from tests.worker_processes import WorkerProcess, worker_environment, worker_processes


@pytest.mark.slow
async def test_a_decision_is_honoured_after_the_worker_is_killed_and_replaced(
    client: Client, keel_settings: KeelSettings, simulator: SimServer, tmp_path: Path
) -> None:
    await seed_reviewers(alice="editor")
    env = worker_environment(client, keel_settings)
    queue = keel_settings.interactive_task_queue
    first = WorkerProcess(queue, env, tmp_path / "first.log").start()
    second = WorkerProcess(queue, env, tmp_path / "second.log")
    with worker_processes(first, second):
        await first.wait_until_polling()
        handle = await start_review(client, keel_settings, ReviewPolicy(mode=ApprovalMode.ALWAYS))
        gate = await pending_gate(handle.id)

        first.kill()
        second.start()
        await second.wait_until_polling()
        approved = await KeelCli(client, keel_settings)("approve", handle.id, "--reviewer", "alice")
        assert approved.code == 0, approved.text + second.logs()

        result = await handle.result()
    assert result.status == "published" and result.approved_by == ["alice"]
    row = await published(handle.id)
    assert row is not None and row.content == gate.draft
    events = [e.event_type for e in await audit_events(handle.id)]
    # Replayed on the new worker, nothing was written twice.
    assert events.count("approval.requested") == 1 and events.count("review.drafted") == 1
    assert events[-3:] == ["approval.approved", "approval.decided", "review.published"]
