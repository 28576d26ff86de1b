"""A gate outlives its worker: the worker process is killed while the gate waits, a new one
starts, and the decision made through the CLI is honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from contracts.approvals import ApprovalMode, ReviewPolicy
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import Approval
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


async def test_a_decision_on_a_gate_whose_row_is_written_but_not_yet_open_waits_for_it(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    interactive_worker: Worker,
) -> None:
    """The window a killed worker leaves: it wrote the gate's row and died before its workflow
    task completed, so Postgres (and `keel approvals`) show the gate pending while the next
    worker is still replaying up to it. A decision sent then is held until the gate opens, not
    refused as "not waiting for approval"."""
    await seed_reviewers(alice="editor")
    simulator.configure(fixed_latency_s=1.5)  # the draft takes a while: the gate opens after it
    handle = await start_review(client, keel_settings, ReviewPolicy(mode=ApprovalMode.ALWAYS))
    async with session_factory().begin() as session:
        session.add(
            Approval(
                workflow_id=handle.id,
                gate="publish",
                tenant="default",
                status="pending",
                required_role="editor",
                run_id=handle.result_run_id,
            )
        )

    approved = await KeelCli(client, keel_settings)("approve", handle.id, "--reviewer", "alice")

    assert approved.code == 0, approved.text
    result = await handle.result()
    assert result.status == "published" and result.approved_by == ["alice"]
