"""Deadlines, reminders, escalation and default actions, on the time-skipping server: hours of
waiting pass in a moment, and the audit trail says what happened when."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from contracts.approvals import (
    ApproveDecision,
    DecisionReceipt,
    DefaultAction,
    EscalationStep,
    GateRequest,
    GateStatus,
    GateView,
)
from tests.approvals.conftest import GateRig
from tests.approvals.records import gate_events, gate_row, pending_gate, seed_reviewers
from tests.helpers import audit_events, eventually

HOUR = timedelta(hours=1)


def gate(**fields: object) -> GateRequest:
    values: dict[str, object] = {
        "gate": "publish",
        "draft": "The draft under review.",
        "reason": "policy: every draft is reviewed",
        "role": "editor",
        "deadline": 6 * HOUR,
    }
    return GateRequest.model_validate({**values, **fields})


async def test_reminders_then_escalation_then_the_default_reject(gates: GateRig) -> None:
    await seed_reviewers(alice="editor", lena="lead")
    handle = await gates.start(
        gate(
            escalation=[EscalationStep(role="lead", after=2 * HOUR)],
            remind_every=HOUR,
            default_action=DefaultAction.REJECT,
        )
    )
    (outcome,) = await handle.result()

    assert outcome.status == GateStatus.TIMED_OUT and not outcome.approved
    assert outcome.escalation_level == 1 and not outcome.flagged
    assert await gate_events(handle.id) == [
        "approval.requested",
        "approval.reminded",  # 1 h
        "approval.escalated",  # 2 h: the escalation asks the lead; no reminder on top
        "approval.reminded",  # 3 h
        "approval.reminded",  # 4 h
        "approval.reminded",  # 5 h
        "approval.timed_out",  # 6 h
    ]
    rows = {r.event_type: r for r in await audit_events(handle.id)}
    reminders = [r for r in await audit_events(handle.id) if r.event_type == "approval.reminded"]
    waited = [r.payload["waiting_seconds"] for r in reminders]
    assert waited == pytest.approx([3600, 3 * 3600, 4 * 3600, 5 * 3600], abs=60)
    assert reminders[0].payload["roles"] == ["editor"]
    assert reminders[-1].payload["roles"] == ["editor", "lead"]
    assert reminders[-1].payload["reviewers"] == ["alice", "lena"]
    assert rows["approval.escalated"].payload["to_role"] == "lead"
    assert rows["approval.timed_out"].actor == "keel"
    assert rows["approval.timed_out"].payload["waited_seconds"] == pytest.approx(6 * 3600, abs=60)
    row = await gate_row(handle.id)
    assert row is not None
    assert (row.status, row.escalation_level, row.required_role) == ("timed_out", 1, "lead")
    assert row.final is None and row.decided_at is not None


async def test_default_approve_with_flag_goes_ahead_flagged(gates: GateRig) -> None:
    handle = await gates.start(gate(deadline=HOUR, default_action="approve_with_flag"))
    (outcome,) = await handle.result()
    assert outcome.approved and outcome.flagged and outcome.status == GateStatus.TIMED_OUT
    assert outcome.final == "The draft under review." and outcome.decided_by == []
    row = await gate_row(handle.id)
    assert row is not None and row.status == "timed_out" and row.final == outcome.final


async def test_default_fail_fails_the_workflow_clearly(gates: GateRig) -> None:
    handle = await gates.start(gate(deadline=HOUR, default_action="fail"))
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ApprovalTimedOut"
    assert "nobody decided gate 'publish'" in cause.message
    row = await gate_row(handle.id)
    assert row is not None and row.status == "timed_out"
    assert (await gate_events(handle.id))[-1] == "approval.timed_out"


async def test_escalation_widens_who_may_decide(gates: GateRig) -> None:
    await seed_reviewers(alice="editor", lena="lead")
    handle = await gates.start(gate(escalation=[EscalationStep(role="lead", after=2 * HOUR)]))
    await pending_gate(handle.id)

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("approve", ApproveDecision(reviewer="lena"))
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ReviewerNotAuthorized"
    assert "needs role editor" in cause.message and "role lead may decide from" in cause.message

    await gates.env.sleep(2 * HOUR + timedelta(minutes=5))
    await eventually(
        lambda: handle.query("approval_status", result_type=GateView),
        lambda view: view.escalation_level == 1,
    )
    receipt = await handle.execute_update(
        "approve", ApproveDecision(reviewer="lena"), result_type=DecisionReceipt
    )
    assert receipt.counted and receipt.status == GateStatus.APPROVED
    (outcome,) = await handle.result()
    assert outcome.decided_by == ["lena"] and outcome.escalation_level == 1


async def test_a_reviewer_added_while_a_gate_waits_may_decide_after_the_next_reminder(
    gates: GateRig,
) -> None:
    handle = await gates.start(gate(remind_every=HOUR))
    await pending_gate(handle.id)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("approve", ApproveDecision(reviewer="carol"))

    await seed_reviewers(carol="editor")
    await gates.env.sleep(HOUR + timedelta(minutes=1))
    await eventually(lambda: gate_events(handle.id), lambda e: "approval.reminded" in e)
    receipt = await handle.execute_update(
        "approve", ApproveDecision(reviewer="carol"), result_type=DecisionReceipt
    )
    assert receipt.status == GateStatus.APPROVED
