"""DocumentReviewWorkflow with its approval gate: auto-approval, approval by Update, rejection and
revision, the deadline's default action and escalation (timers skipped)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from contracts.approvals import (
    ApproveDecision,
    DecisionReceipt,
    DefaultAction,
    GateView,
    RejectDecision,
    ReviewPolicy,
)
from contracts.llm import AttemptInput
from tests.workflows.conftest import Rig, eventually, timers
from workflows.approval_gate import STATUS_QUERY
from workflows.document_review import DocumentReviewWorkflow, ReviewInput

DOCUMENT = "Keel runs LLM workflows on Temporal. It was released in 2026."
FACTS = "- keel runs LLM workflows on Temporal\n- released in 2026"
DRAFT = "Keel, released in 2026, runs LLM workflows durably on Temporal."
REVISED = "Keel runs LLM workflows on Temporal (2026)."


def self_check(confidence: float, *flags: str) -> str:
    return json.dumps({"confidence": confidence, "policy_flags": list(flags), "issues": ""})


def scripted_answers(rig: Rig, confidence: float, *flags: str) -> None:
    by_purpose = {
        "review.extract": FACTS,
        "review.draft": DRAFT,
        "review.self_check": self_check(confidence, *flags),
        "review.revise": REVISED,
    }

    def answer(call: AttemptInput) -> str:
        return by_purpose[call.request.purpose]

    rig.mocks.llm.answer = answer


async def start_review(rig: Rig, **policy: object) -> WorkflowHandle:
    return await rig.start(
        DocumentReviewWorkflow.run,
        ReviewInput(
            document=DOCUMENT, source_name="notes.txt", policy=ReviewPolicy.model_validate(policy)
        ),
    )


async def gate_view(handle: WorkflowHandle) -> GateView:
    return await handle.query(STATUS_QUERY, result_type=GateView)


async def wait_for_gate(handle: WorkflowHandle, gate: str) -> None:
    async def is_open() -> bool:
        return (await gate_view(handle)).open_gate == gate

    await eventually(is_open, f"gate {gate} to open")


async def approve(handle: WorkflowHandle, reviewer: str) -> DecisionReceipt:
    return await handle.execute_update(
        "approve", ApproveDecision(reviewer=reviewer), result_type=DecisionReceipt
    )


async def test_a_confident_draft_is_published_without_a_gate(rig: Rig) -> None:
    scripted_answers(rig, confidence=0.95)

    handle = await start_review(rig)
    result = await handle.result()

    assert result.status == "published" and result.published_id == 42
    assert result.gated_because is None and result.approved_by == []
    assert result.cost_usd == 3 * rig.mocks.llm.cost
    [published] = rig.mocks.inputs("publish_document")
    assert published.content == DRAFT and published.approval_gate is None
    extract, draft, check = rig.mocks.llm.attempts()
    assert (extract.route, draft.route, check.route) == ("cheap", "quality", "cheap")
    assert DOCUMENT in extract.request.messages[-1].content
    assert FACTS in draft.request.messages[-1].content
    assert check.request.parameters.json_schema_name == "self_check"
    assert rig.mocks.inputs("load_reviewer_roster") == []
    assert rig.mocks.audit.types(handle.id) == [
        "review.started",
        "review.extracted",
        "review.drafted",
        "review.checked",
        "review.auto_approved",
        "review.published",
    ]


async def test_a_low_confidence_draft_waits_for_an_approval_by_update(rig: Rig) -> None:
    scripted_answers(rig, confidence=0.4)
    handle = await start_review(rig)
    await wait_for_gate(handle, "publish")

    # maria's role is only asked after the escalation: the Update is refused, nothing changes.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await approve(handle, "maria")
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "ReviewerNotAuthorized"
    receipt = await approve(handle, "alice")
    result = await handle.result()

    assert receipt.counted and receipt.reviewer == "alice"
    assert result.status == "published" and result.approved_by == ["alice"]
    assert result.gated_because == "low confidence: 0.40 below 0.80"
    [published] = rig.mocks.inputs("publish_document")
    assert (published.content, published.approval_gate) == (DRAFT, "publish")
    [opened] = rig.mocks.inputs("open_approval_gate")
    assert (opened.draft, opened.required_role) == (DRAFT, "editor")
    # The roster covers every role the gate may ask, escalation included ("owner" holds none).
    assert opened.event.payload["reviewers"] == ["alice", "bob", "maria"]
    assert rig.mocks.approvals.gate_event_types() == [
        "approval.requested",
        "approval.approved",
        "approval.decided",
    ]


async def test_a_rejection_sends_the_draft_back_with_the_reason(rig: Rig) -> None:
    scripted_answers(rig, 0.9, "unverified_claim")
    handle = await start_review(rig, max_revisions=1)
    await wait_for_gate(handle, "publish")

    await handle.execute_update(
        "reject",
        RejectDecision(reviewer="alice", reason="the release year is not in the source"),
        result_type=DecisionReceipt,
    )
    await wait_for_gate(handle, "publish-revision-1")
    await approve(handle, "bob")
    result = await handle.result()

    assert result.status == "published" and result.revisions == 1
    assert result.approved_by == ["bob"]
    assert result.gated_because == "revision 1 after rejection by alice"
    revise = [a for a in rig.mocks.llm.attempts() if a.request.purpose == "review.revise"]
    assert len(revise) == 1
    assert "the release year is not in the source" in revise[0].request.messages[-1].content
    drafts = [g.draft for g in rig.mocks.inputs("open_approval_gate")]
    assert drafts == [DRAFT, REVISED]
    assert rig.mocks.inputs("publish_document")[0].content == REVISED


async def test_a_rejection_past_the_revision_limit_rejects_the_document(rig: Rig) -> None:
    scripted_answers(rig, confidence=0.4)
    handle = await start_review(rig, max_revisions=0)
    await wait_for_gate(handle, "publish")

    await handle.execute_update(
        "reject", RejectDecision(reviewer="bob", reason="off topic"), result_type=DecisionReceipt
    )
    result = await handle.result()

    assert result.status == "rejected" and result.rejection_reason == "off topic"
    assert result.published_id is None
    assert rig.mocks.inputs("publish_document") == []
    assert rig.mocks.audit.types(handle.id)[-1] == "review.rejected"


async def test_nobody_deciding_by_the_deadline_applies_the_default_action(rig: Rig) -> None:
    scripted_answers(rig, confidence=0.4)
    handle = await start_review(
        rig,
        escalation=[],
        remind_every=None,
        deadline=timedelta(hours=24),
        default_action=DefaultAction.APPROVE_WITH_FLAG,
    )
    await wait_for_gate(handle, "publish")

    result = await handle.result()  # a day without a decision, skipped

    durations, fired = await timers(handle)
    # One timer, for what is left of the day when the gate's task ran (within a second).
    assert [round(d.total_seconds()) for d in durations] == [24 * 3600] and fired == 1
    assert result.status == "published" and result.flagged and result.approved_by == []
    [published] = rig.mocks.inputs("publish_document")
    assert published.flagged and published.content == DRAFT
    assert rig.mocks.approvals.gate_event_types() == ["approval.requested", "approval.timed_out"]


async def test_an_undecided_gate_reminds_then_escalates_to_the_next_role(rig: Rig) -> None:
    scripted_answers(rig, confidence=0.4)
    # The default policy: remind every hour, escalate to managing-editor after 4 hours.
    handle = await start_review(rig)
    await wait_for_gate(handle, "publish")

    await rig.env.sleep(timedelta(hours=4, minutes=30))

    async def escalated() -> bool:
        return (await gate_view(handle)).escalation_level == 1

    await eventually(escalated, "the gate to escalate")
    assert (await gate_view(handle)).roles == ["editor", "managing-editor"]
    await approve(handle, "maria")
    result = await handle.result()

    assert result.status == "published" and result.approved_by == ["maria"]
    # Reminders at 1, 2 and 3 hours; at 4 the escalation asks the new role instead.
    assert rig.mocks.approvals.gate_event_types() == [
        "approval.requested",
        "approval.reminded",
        "approval.reminded",
        "approval.reminded",
        "approval.escalated",
        "approval.approved",
        "approval.decided",
    ]
    escalation = rig.mocks.inputs("refresh_gate")[-1]
    assert escalation.event.payload["to_role"] == "managing-editor"
    assert escalation.roles == ["editor", "managing-editor"]
