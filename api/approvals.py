"""Approvals over HTTP: the review queue of the token's tenant, and decisions on its gates.

- ``GET /v1/approvals``: pending gates, oldest first, with the draft under review.
- ``POST /v1/approvals/{workflow_id}/approve`` ``{comment?, gate?}``, ``…/reject``
  ``{reason, gate?}``, ``…/edit`` ``{text, comment?, gate?}``.

Reviewer and admin tokens only. The reviewer is the token's (``keel token create --role reviewer
--reviewer NAME``), never the body's. A decision goes the way ``keel approve`` sends it
(infra/approval_client.py): same checks, same idempotent Update, same audit rows. ``gate`` is the
gate the reviewer looked at (from the queue): a decision meant for it never lands on a newer
draft. A workflow of another tenant answers 404, as one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from activities.approvals import pending_gates
from api.auth import reviewer_caller
from api.errors import ApiError
from api.state import KeelApi, keel_api
from contracts.approvals import (
    ApproveDecision,
    Decision,
    EditDecision,
    GateStatus,
    RefusalType,
    RejectDecision,
)
from infra.database import session_factory
from services.api_tokens import VerifiedToken
from services.approval_client import DecisionProblem, DecisionRefused, DecisionSender

router = APIRouter(tags=["approvals"])

# A refusal's kind → (HTTP status, error code).
_REFUSALS: dict[str, tuple[int, str]] = {
    DecisionProblem.NO_SUCH_WORKFLOW: (404, "workflow_not_found"),
    RefusalType.NOT_AUTHORIZED.value: (403, "reviewer_not_authorized"),
    RefusalType.NOT_WAITING.value: (409, "not_waiting_for_approval"),
    DecisionProblem.FINISHED_BEFORE: (409, "not_waiting_for_approval"),
    RefusalType.ALREADY_DECIDED.value: (409, "gate_already_decided"),
    RefusalType.INVALID.value: (400, "invalid_decision"),
    DecisionProblem.UNCONFIRMED: (504, "decision_unconfirmed"),
    DecisionProblem.FAILED: (502, "decision_failed"),
}


class PendingApproval(BaseModel):
    workflow_id: str
    gate: str
    subject: str | None
    reason: str | None = Field(description="Why a person must look.")
    role: str = Field(description="The role asked now (escalation widens it).")
    escalation_level: int
    approvals: list[str] = Field(description="Reviewers whose approval counts so far.")
    approvals_required: int
    requested_at: datetime
    deadline_at: datetime | None
    draft: str | None = Field(description="The text under review.")


class ApprovalQueue(BaseModel):
    object: str = "list"
    data: list[PendingApproval]


class _DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: str | None = Field(
        default=None,
        max_length=200,
        description="The gate you reviewed (from GET /v1/approvals); a decision for an earlier "
        "gate is refused instead of landing on a newer draft. Default: the open gate.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_reviewer(cls, data: Any) -> Any:
        if isinstance(data, dict) and "reviewer" in data:
            raise ValueError("the reviewer is your token's: leave `reviewer` out of the body")
        return data


class ApproveBody(_DecisionBody):
    comment: str | None = Field(default=None, max_length=2000, description="For the trail.")


class RejectBody(_DecisionBody):
    reason: str = Field(min_length=1, max_length=4000, description="Why; a revision sees it.")


class EditBody(_DecisionBody):
    text: str = Field(min_length=1, description="The changed draft: what goes ahead.")
    comment: str | None = Field(default=None, max_length=2000)


class DecisionResult(BaseModel):
    workflow_id: str
    gate: str | None
    action: str
    reviewer: str
    counted: bool = Field(description="False when this decision was a repeat of one counted.")
    approvals: int | None = None
    approvals_required: int | None = None
    status: GateStatus | None = Field(description="The gate's status after this decision.")
    message: str


@router.get("/v1/approvals", response_model=ApprovalQueue)
async def list_approvals(caller: VerifiedToken = Depends(reviewer_caller)) -> ApprovalQueue:
    """The review queue: the token's tenant's pending approval gates, oldest first."""
    async with session_factory()() as session:
        gates = await pending_gates(session, caller.tenant)
    return ApprovalQueue(
        data=[
            PendingApproval(
                workflow_id=gate.workflow_id,
                gate=gate.gate,
                subject=gate.subject,
                reason=gate.reason_requested,
                role=gate.required_role,
                escalation_level=gate.escalation_level,
                approvals=list(gate.decided_by),
                approvals_required=gate.approvals_required,
                requested_at=gate.requested_at,
                deadline_at=gate.deadline_at,
                draft=gate.draft,
            )
            for gate in gates
        ]
    )


def _reviewer(caller: VerifiedToken) -> str:
    if caller.reviewer is None:
        raise ApiError(
            403,
            f"token {caller.id} names no reviewer, and a decision needs one: use a token "
            "created with `keel token create --role reviewer --reviewer NAME`",
            code="no_reviewer_identity",
        )
    return caller.reviewer


async def _decide(
    api: KeelApi, caller: VerifiedToken, workflow_id: str, action: str, decision: Decision
) -> DecisionResult:
    sender = DecisionSender(api.client, api.settings.reviewers, via="api", token_id=caller.id)
    try:
        sent = await sender.send(workflow_id, action, decision, tenant=caller.tenant)
    except DecisionRefused as refused:
        status, code = _REFUSALS.get(refused.kind, (502, "decision_failed"))
        message = refused.message
        if refused.kind == DecisionProblem.NO_SUCH_WORKFLOW:
            # The same words whether it does not exist or belongs to another tenant.
            message = f"no workflow {workflow_id!r} in this token's tenant"
        raise ApiError(status, message, code=code) from None
    receipt = sent.receipt
    if receipt is None:  # a repeat of an approval that counted, after the workflow finished
        return DecisionResult(
            workflow_id=workflow_id,
            gate=None,
            action=action,
            reviewer=decision.reviewer,
            counted=False,
            status=None,
            message=sent.message,
        )
    return DecisionResult(
        workflow_id=workflow_id,
        gate=receipt.gate,
        action=receipt.action,
        reviewer=receipt.reviewer,
        counted=receipt.counted,
        approvals=receipt.approvals,
        approvals_required=receipt.approvals_required,
        status=receipt.status,
        message=receipt.message,
    )


@router.post("/v1/approvals/{workflow_id}/approve", response_model=DecisionResult)
async def approve(
    workflow_id: str,
    body: ApproveBody,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(reviewer_caller),
) -> DecisionResult:
    """Approve the draft the workflow's open gate waits on, as the token's reviewer."""
    decision = ApproveDecision(reviewer=_reviewer(caller), comment=body.comment, gate=body.gate)
    return await _decide(api, caller, workflow_id, "approve", decision)


@router.post("/v1/approvals/{workflow_id}/reject", response_model=DecisionResult)
async def reject(
    workflow_id: str,
    body: RejectBody,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(reviewer_caller),
) -> DecisionResult:
    """Reject the draft, with the reason (the workflow may revise it and ask again)."""
    if not body.reason.strip():
        raise ApiError(400, "reason: say what must change", param="reason")
    decision = RejectDecision(reviewer=_reviewer(caller), reason=body.reason, gate=body.gate)
    return await _decide(api, caller, workflow_id, "reject", decision)


@router.post("/v1/approvals/{workflow_id}/edit", response_model=DecisionResult)
async def edit(
    workflow_id: str,
    body: EditBody,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(reviewer_caller),
) -> DecisionResult:
    """Approve a changed draft: ``text`` is what goes ahead (and what the export pairs)."""
    if not body.text.strip():
        raise ApiError(400, "text: the changed draft is empty", param="text")
    decision = EditDecision(
        reviewer=_reviewer(caller), text=body.text, comment=body.comment, gate=body.gate
    )
    return await _decide(api, caller, workflow_id, "edit", decision)
