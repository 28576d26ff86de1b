"""Reviewers added, removed or given another role while a gate waits: the gate judges every
decision against the reviewers table as it is when the decision arrives, by Update and by
signal alike, without waiting for its next reminder or escalation to reload its roster.

These decisions reach the gate directly (not through keel's sender, which checks the table
itself): the gate must be right on its own, for `temporal workflow signal` and any other tool."""

from __future__ import annotations

from temporalio.client import WorkflowHandle

from activities.approvals import add_reviewer, remove_reviewer
from contracts.approvals import ApproveDecision, GateStatus, RejectDecision
from infra.database import session_factory
from tests.approvals.conftest import GateRig
from tests.approvals.records import gate_events, pending_gate, seed_reviewers
from tests.approvals.test_gate_decisions import HOUR, decide, gate, refusal
from tests.helpers import audit_events, eventually


async def signal_refusals(handle: WorkflowHandle, count: int) -> list[tuple[str, str]]:
    rows = await eventually(
        lambda: audit_events(handle.id),
        lambda rows: len([r for r in rows if r.event_type == "approval.refused"]) >= count,
    )
    return [
        (r.actor, r.payload["refusal"])
        for r in rows
        if r.event_type == "approval.refused" and r.payload["channel"] == "signal"
    ]


async def test_a_reviewer_added_after_the_gate_opened_decides_at_once_by_update_and_signal(
    gates: GateRig,
) -> None:
    # Reminders every hour: the roster would only be reloaded then; nobody waits for it here.
    handle = await gates.start(gate(approvals_required=2, remind_every=HOUR))
    await pending_gate(handle.id)
    await seed_reviewers(carol="editor", dave="editor")

    first = await decide(handle, "approve", ApproveDecision(reviewer="carol"))
    assert (first.counted, first.approvals, first.status) == (True, 1, GateStatus.PENDING)
    await handle.signal("approve", ApproveDecision(reviewer="dave"))
    (outcome,) = await handle.result()
    assert outcome.approved and outcome.decided_by == ["carol", "dave"]
    assert await gate_events(handle.id) == [
        "approval.requested",
        "approval.approved",
        "approval.approved",
        "approval.decided",
    ]


async def test_a_reviewer_removed_after_the_gate_opened_is_refused_by_update_and_signal(
    gates: GateRig,
) -> None:
    await seed_reviewers(alice="editor", bob="editor", erin="editor")
    handle = await gates.start(gate(remind_every=HOUR))
    await pending_gate(handle.id)
    async with session_factory().begin() as session:
        for name in ("alice", "bob"):
            assert await remove_reviewer(session, name, None, removed_by="security")

    refused = await refusal(handle, "approve", ApproveDecision(reviewer="alice"))
    assert refused.type == "ReviewerNotAuthorized"
    assert "reviewer 'alice' is not authorized for gate 'publish'" in refused.message
    await handle.signal("reject", RejectDecision(reviewer="bob", reason="no"))
    assert await signal_refusals(handle, 1) == [("bob", "ReviewerNotAuthorized")]
    assert (await pending_gate(handle.id)).decided_by == []

    await decide(handle, "approve", ApproveDecision(reviewer="erin"))
    (outcome,) = await handle.result()
    assert outcome.decided_by == ["erin"]


async def test_a_role_changed_after_the_gate_opened_counts_as_it_is_now(gates: GateRig) -> None:
    await seed_reviewers(alice="editor", mallory="finance")
    handle = await gates.start(gate(approvals_required=2, remind_every=HOUR))
    await pending_gate(handle.id)
    async with session_factory().begin() as session:
        # alice moves from editing to finance; mallory moves from finance to editing.
        assert await remove_reviewer(session, "alice", "editor", removed_by="ops") == ["editor"]
        assert await add_reviewer(session, "alice", "finance", added_by="ops")
        assert await remove_reviewer(session, "mallory", "finance", removed_by="ops")
        assert await add_reviewer(session, "mallory", "editor", added_by="ops")

    refused = await refusal(handle, "approve", ApproveDecision(reviewer="alice"))
    assert refused.type == "ReviewerNotAuthorized" and "needs role editor" in refused.message
    await handle.signal("approve", ApproveDecision(reviewer="alice"))
    assert await signal_refusals(handle, 1) == [("alice", "ReviewerNotAuthorized")]
    counted = await decide(handle, "approve", ApproveDecision(reviewer="mallory"))
    assert (counted.counted, counted.approvals) == (True, 1)
    assert (await pending_gate(handle.id)).decided_by == ["mallory"]
    await handle.cancel()
