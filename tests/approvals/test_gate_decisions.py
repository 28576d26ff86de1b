"""Decisions at a gate: Updates that answer, Signals that cannot, four-eyes, edits, refusals,
races, cancellation, and what the Web UI shows while a gate waits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from contracts.approvals import (
    ApproveDecision,
    Decision,
    DecisionReceipt,
    EditDecision,
    GateRequest,
    GateStatus,
    RejectDecision,
)
from contracts.search_attributes import KEEL_AWAITING
from tests.approvals.conftest import GateRig
from tests.approvals.records import gate_events, gate_row, pending_gate, seed_reviewers
from tests.helpers import audit_events, eventually

HOUR = timedelta(hours=1)
DRAFT = "The draft under review."


def gate(**fields: object) -> GateRequest:
    values: dict[str, object] = {
        "gate": "publish",
        "draft": DRAFT,
        "reason": "low confidence: 0.42 below 0.80",
        "role": "editor",
        "deadline": 24 * HOUR,
    }
    return GateRequest.model_validate({**values, **fields})


async def decide(handle: WorkflowHandle, action: str, decision: Decision) -> DecisionReceipt:
    return await handle.execute_update(action, decision, result_type=DecisionReceipt)


async def refusal(handle: WorkflowHandle, action: str, decision: Decision) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await decide(handle, action, decision)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_four_eyes_needs_two_distinct_reviewers_and_a_repeat_counts_once(
    gates: GateRig,
) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    handle = await gates.start(gate(approvals_required=2))
    await pending_gate(handle.id)

    first = await decide(handle, "approve", ApproveDecision(reviewer="alice", comment="fine"))
    assert (first.counted, first.approvals, first.status) == (True, 1, GateStatus.PENDING)
    again = await decide(handle, "approve", ApproveDecision(reviewer="alice"))
    assert (again.counted, again.approvals, again.status) == (False, 1, GateStatus.PENDING)
    await handle.signal("approve", ApproveDecision(reviewer="alice"))  # a third time, by signal
    row = await pending_gate(handle.id)
    assert row.decided_by == ["alice"] and row.approvals_required == 2

    second = await decide(handle, "approve", ApproveDecision(reviewer="bob"))
    assert second.counted and second.status == GateStatus.APPROVED
    (outcome,) = await handle.result()
    assert outcome.approved and outcome.decided_by == ["alice", "bob"]
    assert outcome.final == DRAFT
    assert await gate_events(handle.id) == [
        "approval.requested",
        "approval.approved",
        "approval.approved",
        "approval.decided",
    ]
    decided = await gate_row(handle.id)
    assert decided is not None and decided.status == "approved"
    assert decided.decided_by == ["alice", "bob"]


async def test_an_edit_restarts_the_count_and_becomes_the_final_text(gates: GateRig) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    handle = await gates.start(gate(approvals_required=2))
    await pending_gate(handle.id)
    await decide(handle, "approve", ApproveDecision(reviewer="alice"))
    edited = await decide(handle, "edit", EditDecision(reviewer="bob", text="A better draft."))
    assert (edited.approvals, edited.status) == (1, GateStatus.PENDING)
    row = await pending_gate(handle.id)
    assert row.final == "A better draft." and row.decided_by == ["bob"]

    # Alice approved the old text: her approval of the new one counts afresh.
    done = await decide(handle, "approve", ApproveDecision(reviewer="alice"))
    assert done.counted and done.status == GateStatus.EDITED
    (outcome,) = await handle.result()
    assert outcome.status == GateStatus.EDITED and outcome.final == "A better draft."
    assert outcome.decided_by == ["bob", "alice"]
    decided = await gate_row(handle.id)
    assert decided is not None and (decided.draft, decided.final) == (DRAFT, "A better draft.")


async def test_a_rejection_carries_its_reason(gates: GateRig) -> None:
    await seed_reviewers(alice="editor")
    handle = await gates.start(gate())
    await pending_gate(handle.id)
    receipt = await decide(
        handle, "reject", RejectDecision(reviewer="alice", reason="cite the source")
    )
    assert receipt.status == GateStatus.REJECTED
    (outcome,) = await handle.result()
    assert not outcome.approved and outcome.reason == "cite the source"
    row = await gate_row(handle.id)
    assert row is not None and row.status == "rejected" and row.decision_reason == "cite the source"


async def test_unknown_and_unauthorized_reviewers_are_refused_and_change_nothing(
    gates: GateRig,
) -> None:
    await seed_reviewers(alice="editor", mallory="finance")
    handle = await gates.start(gate())
    await pending_gate(handle.id)

    for name in ("nobody", "mallory"):
        refused = await refusal(handle, "approve", ApproveDecision(reviewer=name))
        assert refused.type == "ReviewerNotAuthorized"
        assert f"reviewer {name!r} is not authorized for gate 'publish'" in refused.message
        assert "needs role editor" in refused.message
    same_text = await refusal(handle, "edit", EditDecision(reviewer="alice", text=DRAFT))
    assert same_text.type == "InvalidDecision"

    # The roles are judged by the handler, against the reviewers table as it is now: those two
    # Updates are in history, failed. The identical edit was refused by the validator from
    # state alone and never reached history. Either way the gate is as it was.
    history = await handle.fetch_history()
    completed = [
        e.workflow_execution_update_completed_event_attributes.outcome
        for e in history.events
        if e.HasField("workflow_execution_update_completed_event_attributes")
    ]
    assert len(completed) == 2 and all(outcome.HasField("failure") for outcome in completed)
    row = await pending_gate(handle.id)
    assert row.decided_by == []
    await decide(handle, "approve", ApproveDecision(reviewer="alice"))
    (outcome,) = await handle.result()
    assert outcome.decided_by == ["alice"]


async def test_no_gate_open_and_already_decided_are_refused_by_name(gates: GateRig) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    handle = await gates.start(gate(), wait_before=HOUR, hold_after=HOUR)
    await eventually(handle.describe, lambda d: d.status is not None)

    early = await refusal(handle, "approve", ApproveDecision(reviewer="alice"))
    assert early.type == "NotWaitingForApproval"
    assert early.message == f"workflow {handle.id} is not waiting for approval (no gate is open)"

    await gates.env.sleep(HOUR + timedelta(minutes=1))
    await pending_gate(handle.id)
    await decide(handle, "approve", ApproveDecision(reviewer="alice"))
    await eventually(
        lambda: gate_row(handle.id), lambda r: r is not None and r.status == "approved"
    )

    late = await refusal(handle, "reject", RejectDecision(reviewer="bob", reason="too late"))
    assert late.type == "NotWaitingForApproval"
    assert "gate 'publish' was already decided (approved by alice)" in late.message
    named = await refusal(handle, "approve", ApproveDecision(reviewer="bob", gate="publish"))
    assert named.type == "GateAlreadyDecided"
    # The reviewer who decided, repeating themselves, is answered, not refused.
    repeat = await decide(handle, "approve", ApproveDecision(reviewer="alice", gate="publish"))
    assert not repeat.counted and repeat.status == GateStatus.APPROVED
    await handle.result()


async def test_two_decisions_racing_have_exactly_one_winner(gates: GateRig) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    handle = await gates.start(gate())
    await pending_gate(handle.id)
    results = await asyncio.gather(
        decide(handle, "approve", ApproveDecision(reviewer="alice")),
        decide(handle, "reject", RejectDecision(reviewer="bob", reason="no")),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, DecisionReceipt)]
    losers = [r for r in results if isinstance(r, WorkflowUpdateFailedError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0].cause, ApplicationError)
    assert losers[0].cause.type in ("GateAlreadyDecided", "NotWaitingForApproval")
    (outcome,) = await handle.result()
    assert outcome.decided_by == [winners[0].reviewer]
    decided = [e for e in await gate_events(handle.id) if e == "approval.decided"]
    assert len(decided) == 1


async def test_signals_follow_the_same_rules_and_their_refusals_are_recorded(
    gates: GateRig,
) -> None:
    await seed_reviewers(alice="editor")
    handle = await gates.start(gate())
    await pending_gate(handle.id)
    await handle.signal("approve", ApproveDecision(reviewer="mallory"))
    refused = await eventually(
        lambda: audit_events(handle.id),
        lambda rows: any(r.event_type == "approval.refused" for r in rows),
    )
    (row,) = [r for r in refused if r.event_type == "approval.refused"]
    assert row.actor == "mallory"
    assert row.payload["channel"] == "signal" and row.payload["refusal"] == "ReviewerNotAuthorized"
    assert (await pending_gate(handle.id)).decided_by == []

    await handle.signal("approve", ApproveDecision(reviewer="alice"))
    (outcome,) = await handle.result()
    assert outcome.approved and outcome.decided_by == ["alice"]


async def test_the_web_ui_shows_what_the_gate_waits_for_and_the_approve_command(
    gates: GateRig,
) -> None:
    await seed_reviewers(alice="editor")
    handle = await gates.start(gate(subject="summary of q3.md"))
    await pending_gate(handle.id)

    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    details = metadata.current_details
    assert f"`keel approve {handle.id} --reviewer NAME`" in details
    assert "gate `publish`: summary of q3.md" in details
    assert "low confidence: 0.42 below 0.80" in details and "role editor" in details
    assert "--name approve" in details  # the signal-only tools' command
    assert "Nobody holds that role yet" not in details
    search = (await handle.describe()).typed_search_attributes
    assert search.get(KEEL_AWAITING) == "approval"

    await decide(handle, "approve", ApproveDecision(reviewer="alice"))
    await handle.result()
    assert (await handle.describe()).typed_search_attributes.get(KEEL_AWAITING) is None


async def test_cancelling_the_workflow_takes_the_gate_out_of_the_queue(gates: GateRig) -> None:
    handle = await gates.start(gate())  # nobody holds the role: the Web UI says how to fix it
    await pending_gate(handle.id)
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "Nobody holds that role yet: `keel reviewers add NAME --role editor`" in (
        metadata.current_details
    )
    await handle.cancel()
    row = await eventually(
        lambda: gate_row(handle.id), lambda r: r is not None and r.status != "pending"
    )
    assert row is not None and row.status == "cancelled"
    assert (await gate_events(handle.id))[-1] == "approval.cancelled"
