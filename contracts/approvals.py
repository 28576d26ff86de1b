"""The approval contract shared by workflows (which open gates and take decisions) and activities
(which record them), plus the review policy the settings carry.

Plain pydantic models, no I/O: workflows import this module inside the sandbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator

# --- What a gate is asked to do ------------------------------------------------------------


class DefaultAction(StrEnum):
    """What happens when nobody decides before the gate's deadline."""

    REJECT = "reject"
    APPROVE_WITH_FLAG = "approve_with_flag"  # goes ahead, marked as never seen by a human
    FAIL = "fail"  # the workflow fails with ApprovalTimedOut


class EscalationStep(BaseModel):
    """After ``after`` (counted from the moment the gate opened) reviewers with ``role`` are asked
    too. Earlier levels keep their say: escalation widens who may decide, it never narrows it."""

    role: str = Field(min_length=1, max_length=100)
    after: timedelta


def check_timeline(
    escalation: list[EscalationStep], deadline: timedelta, remind_every: timedelta | None
) -> None:
    if deadline <= timedelta(0):
        raise ValueError("deadline must be positive")
    previous = timedelta(0)
    for step in escalation:
        if not previous < step.after < deadline:
            raise ValueError(
                "escalation steps must come in increasing order, after the gate opens and "
                f"before its deadline ({deadline}); got {step.role!r} after {step.after}"
            )
        previous = step.after
    if remind_every is not None and remind_every <= timedelta(0):
        raise ValueError("remind_every must be positive")


class GateRequest(BaseModel):
    """Everything a gate needs to open: what, why, who, and until when."""

    gate: str = Field(
        min_length=1,
        max_length=200,
        description="Unique within the workflow run, e.g. 'publish' or 'publish-revision-1'.",
    )
    draft: str = Field(description="The text a reviewer approves, rejects or edits.")
    reason: str = Field(
        min_length=1, description="Why a human must look: a policy rule, low confidence, a sample."
    )
    role: str = Field(min_length=1, max_length=100, description="Who is asked first.")
    tenant: str = "default"
    subject: str = Field(default="", description="One line for queues and the Web UI.")
    approvals_required: int = Field(
        default=1, ge=1, le=10, description="Four-eyes: N distinct approvers."
    )
    deadline: timedelta = Field(description="When the default action applies (T2).")
    default_action: DefaultAction = DefaultAction.REJECT
    escalation: list[EscalationStep] = Field(
        default_factory=list, description="Next levels of reviewers, each after its T1."
    )
    remind_every: timedelta | None = Field(
        default=None, description="Remind the reviewers asked so far at this interval."
    )

    @model_validator(mode="after")
    def _check_timeline(self) -> GateRequest:
        check_timeline(self.escalation, self.deadline, self.remind_every)
        return self

    def roles_at(self, level: int) -> list[str]:
        """The roles that may decide once ``level`` escalations have happened."""
        return [self.role, *(step.role for step in self.escalation[:level])]

    @property
    def all_roles(self) -> list[str]:
        return self.roles_at(len(self.escalation))


class GateStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EDITED = "edited"  # approved with the reviewer's changes
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"  # the default action decided
    CANCELLED = "cancelled"


class GateOutcome(BaseModel):
    """How a gate ended. ``approved`` says whether the work may go ahead; ``final`` is what
    goes ahead (the draft, or the reviewer's edit)."""

    gate: str
    status: GateStatus
    approved: bool
    final: str | None = None
    reason: str | None = Field(default=None, description="The rejection reason or comment.")
    decided_by: list[str] = Field(default_factory=list)
    # Approved by the default action at the deadline: no human looked at it.
    flagged: bool = False
    escalation_level: int = 0


# --- Decisions (the Update and Signal payloads) -----------------------------------------------


class Decision(BaseModel):
    reviewer: str = Field(min_length=1, max_length=200)
    gate: str | None = Field(
        default=None,
        description="The gate the reviewer looked at; a decision meant for an earlier gate "
        "is refused instead of landing on a newer draft. None: the open gate.",
    )


class ApproveDecision(Decision):
    comment: str | None = None


class RejectDecision(Decision):
    reason: str = Field(min_length=1, description="Why; a revision sees it in its prompt.")


class EditDecision(Decision):
    text: str = Field(min_length=1, description="The changed draft, approved by this reviewer.")
    comment: str | None = None


class DecisionReceipt(BaseModel):
    """What an Update answers: was the decision counted, and where the gate stands now."""

    gate: str
    action: str
    reviewer: str
    counted: bool
    approvals: int
    approvals_required: int
    status: GateStatus
    message: str


class RefusalType(StrEnum):
    """ApplicationError types a refused decision carries; the CLI maps them to exit codes."""

    NOT_WAITING = "NotWaitingForApproval"
    ALREADY_DECIDED = "GateAlreadyDecided"
    NOT_AUTHORIZED = "ReviewerNotAuthorized"
    INVALID = "InvalidDecision"


class GateView(BaseModel):
    """The ``approval_status`` query: the open gate, if any, and every gate decided so far."""

    open_gate: str | None = None
    subject: str = ""
    roles: list[str] = Field(default_factory=list)
    approvals: list[str] = Field(default_factory=list)
    approvals_required: int = 0
    escalation_level: int = 0
    opened_at: datetime | None = None
    deadline_at: datetime | None = None
    decided: list[GateOutcome] = Field(default_factory=list)


# --- Activity inputs ---------------------------------------------------------------------


class RosterRequest(BaseModel):
    roles: list[str]


class Roster(BaseModel):
    """Reviewers who hold at least one of the requested roles, with those roles."""

    reviewers: dict[str, list[str]] = Field(default_factory=dict)

    def authorized(self, reviewer: str, roles: list[str]) -> bool:
        return any(role in roles for role in self.reviewers.get(reviewer, []))


class GateEvent(BaseModel):
    """One audited step of a gate; ``changes`` are applied to its ``approvals`` row in the same
    transaction, so the row and the trail never disagree."""

    event_key: str
    workflow_id: str
    run_id: str | None = None
    tenant: str
    gate: str
    event_type: str
    actor: str = "keel"
    payload: dict[str, Any] = Field(default_factory=dict)
    changes: dict[str, Any] = Field(default_factory=dict)


class OpenGateInput(BaseModel):
    event: GateEvent
    subject: str = ""
    reason: str
    required_role: str
    approvals_required: int
    draft: str
    deadline_at: datetime


class RefreshInput(BaseModel):
    """A reminder or an escalation: audit it, update the row, and read the roster afresh (so the
    next reminder and the Web UI name who may decide now; decisions read it themselves)."""

    event: GateEvent
    roles: list[str]


# --- The review policy (settings) ----------------------------------------------------------


class ApprovalMode(StrEnum):
    """When a draft needs a human (policy flags from the self-check always do)."""

    ALWAYS = "always"
    BELOW_CONFIDENCE = "below_confidence"
    SAMPLE = "sample"  # a random share of drafts, for QA


class ReviewPolicy(BaseModel):
    """How DocumentReview decides to ask a human, and how its gate behaves.

    Set as JSON in ``KEEL_REVIEW_POLICY``; unset fields keep these defaults.
    """

    mode: ApprovalMode = ApprovalMode.BELOW_CONFIDENCE
    confidence_threshold: float = Field(default=0.8, ge=0, le=1)
    sample_percent: float = Field(default=10, ge=0, le=100)
    role: str = "editor"
    escalation: list[EscalationStep] = Field(
        default_factory=lambda: [EscalationStep(role="managing-editor", after=timedelta(hours=4))]
    )
    deadline: timedelta = timedelta(hours=24)
    remind_every: timedelta | None = timedelta(hours=1)
    default_action: DefaultAction = DefaultAction.REJECT
    approvals_required: int = Field(default=1, ge=1, le=10)
    max_revisions: int = Field(default=1, ge=0, le=3)

    @model_validator(mode="after")
    def _check_timeline(self) -> ReviewPolicy:
        check_timeline(self.escalation, self.deadline, self.remind_every)
        return self
