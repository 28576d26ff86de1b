"""A reusable approval gate: any workflow can stop, ask a person, and go on with their decision.

Use it from a workflow in two lines::

    @workflow.defn
    class PublishSomething:
        def __init__(self) -> None:
            self.approval = ApprovalGate()  # registers the handlers below; create it here

        @workflow.run
        async def run(self, params: ...) -> ...:
            outcome = await self.approval.request(
                GateRequest(
                    gate="publish",  # unique within the run
                    draft=text,  # what is approved
                    reason="confidence 0.42 below 0.80",  # why a human must look
                    role="editor",  # who is asked first
                    deadline=timedelta(hours=24),  # then: default_action
                    escalation=[EscalationStep(role="managing-editor", after=timedelta(hours=4))],
                    remind_every=timedelta(hours=1),
                    approvals_required=2,  # four-eyes
                )
            )
            if outcome.approved:
                ...  # outcome.final is the approved text (the reviewer's edit, if any)
            await workflow.wait_condition(workflow.all_handlers_finished)

What the gate gives the workflow and the people around it:

- **Updates** ``approve`` / ``reject`` / ``edit`` (``ApproveDecision`` / ``RejectDecision`` /
  ``EditDecision``) answer with a ``DecisionReceipt``, or refuse with a clear message and an
  ApplicationError type from ``RefusalType``. Their validator refuses what workflow state alone
  decides (no gate open, a gate already decided, a decision meant for an earlier gate, an edit
  that changes nothing); such an Update never enters history. Whether the reviewer holds one of
  the roles asked so far is the handler's call, against the reviewers table as it is then (see
  below). Either way the client that sent the Update records the refusal (``keel approve`` and
  the API do).
- **Signals** of the same names and payloads, for tools that can only signal
  (``temporal workflow signal``): the same checks apply; a refusal is recorded here.
- **Query** ``approval_status`` (``GateView``).
- **Records**: the gate's ``approvals`` row and an ``audit_events`` row for every event
  (approval.requested / reminded / escalated / approved / rejected / edited / refused /
  decided / timed_out / cancelled); the ``KeelAwaiting`` search attribute is ``approval``
  while a gate waits, and the Web UI's current details name the exact approve command.

Reviewers are authorized from a roster (the ``reviewers`` table plus ``KEEL_REVIEWERS``, only the
gate's roles). The gate reads it when it opens, at each reminder and escalation, and for every
decision: the decision's handler (not its validator, which can do no I/O) reads the roster by
local activity before judging, so a reviewer added, removed or given another role while the gate
waits counts at once, and the answer is in history, so replay judges the same way. Four-eyes
counts distinct reviewers; an edit restarts the count (earlier approvals were for other text).
One gate is open at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        LOAD_REVIEWER_ROSTER,
        OPEN_APPROVAL_GATE,
        RECORD_GATE_EVENT,
        REFRESH_GATE,
    )
    from contracts.approvals import (
        ApproveDecision,
        Decision,
        DecisionReceipt,
        DefaultAction,
        EditDecision,
        GateEvent,
        GateOutcome,
        GateRequest,
        GateStatus,
        GateView,
        OpenGateInput,
        RefreshInput,
        RefusalType,
        RejectDecision,
        Roster,
        RosterRequest,
    )
    from contracts.search_attributes import KEEL_AWAITING
    from workflows.activity_calls import GATE_RECORD, call_local

APPROVE, REJECT, EDIT = "approve", "reject", "edit"
STATUS_QUERY = "approval_status"
AWAITING_APPROVAL = "approval"
_PAST_TENSE = {APPROVE: "approved", REJECT: "rejected", EDIT: "edited"}
# When timers fall on the same instant: the deadline decides, an escalation beats a reminder.
_TIMER_ORDER = {"deadline": 0, "escalate": 1, "remind": 2}
# Decisions read the current roster before judging the reviewer. Executions whose history holds
# decisions judged on the roster of the last reload keep that behaviour on replay.
CURRENT_ROSTER_PATCH = "approval-decision-reads-current-roster"


class ApprovalTimedOut(ApplicationError):
    """Nobody decided before the deadline and the gate's default action is ``fail``."""


def refusal(kind: RefusalType, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind.value, non_retryable=True)


def describe(outcome: GateOutcome) -> str:
    who = f" by {', '.join(outcome.decided_by)}" if outcome.decided_by else ""
    why = f": {outcome.reason}" if outcome.reason else ""
    return f"{outcome.status.value}{who}{why}"


@dataclass
class _OpenGate:
    """A gate while it waits. Decisions change it synchronously in their handlers, so two
    decisions in one workflow task can never both win."""

    request: GateRequest
    opened_at: datetime
    roster: Roster
    under_review: str
    level: int = 0
    edited: bool = False
    approvers: list[str] = field(default_factory=list)
    reminders_sent: int = 0
    next_reminder_at: datetime | None = None
    outcome: GateOutcome | None = None
    votes_recording: int = 0
    finalized: bool = False

    @property
    def name(self) -> str:
        return self.request.gate

    @property
    def roles(self) -> list[str]:
        return self.request.roles_at(self.level)

    @property
    def deadline_at(self) -> datetime:
        return self.opened_at + self.request.deadline

    def escalation_at(self) -> tuple[datetime, str] | None:
        if self.level >= len(self.request.escalation):
            return None
        step = self.request.escalation[self.level]
        return self.opened_at + step.after, step.role


class ApprovalGate:
    """Create in the workflow's ``__init__``; then ``await gate.request(GateRequest(...))``."""

    def __init__(self) -> None:
        self._open: _OpenGate | None = None
        self._decided: dict[str, GateOutcome] = {}
        # (gate, reviewer) pairs whose approval counts: a second approval is answered, not added.
        self._counted: set[tuple[str, str]] = set()
        self._last_tenant = "default"
        workflow.set_update_handler(APPROVE, self._approve, validator=self._validate_approve)
        workflow.set_update_handler(REJECT, self._reject, validator=self._validate_reject)
        workflow.set_update_handler(EDIT, self._edit, validator=self._validate_edit)
        workflow.set_signal_handler(APPROVE, self._approve_signal)
        workflow.set_signal_handler(REJECT, self._reject_signal)
        workflow.set_signal_handler(EDIT, self._edit_signal)
        workflow.set_query_handler(STATUS_QUERY, self.status)

    # --- The workflow's side -------------------------------------------------------------

    async def request(self, request: GateRequest) -> GateOutcome:
        """Open a gate and wait for its outcome: a decision, or the deadline's default action.

        Raises ``ApprovalTimedOut`` (non-retryable) when the default action is ``fail``.
        """
        if self._open is not None:
            raise RuntimeError(f"gate {self._open.name!r} is still open; one gate at a time")
        if request.gate in self._decided:
            raise ValueError(f"gate {request.gate!r} was already used in this run")
        roster = await call_local(
            LOAD_REVIEWER_ROSTER,
            RosterRequest(roles=request.all_roles),
            **GATE_RECORD,
            summary=f"reviewers · {', '.join(request.all_roles)}",
        )
        gate = _OpenGate(
            request=request,
            opened_at=workflow.now(),
            roster=roster,
            under_review=request.draft,
        )
        self._last_tenant = request.tenant
        if request.remind_every is not None:
            gate.next_reminder_at = gate.opened_at + request.remind_every
        # Open for decisions before the row is visible: nobody can act on a gate sooner.
        self._open = gate
        workflow.upsert_search_attributes([KEEL_AWAITING.value_set(AWAITING_APPROVAL)])
        self._show_waiting(gate)
        await call_local(
            OPEN_APPROVAL_GATE,
            OpenGateInput(
                event=self._event(
                    gate,
                    "approval.requested",
                    payload={
                        "reason": request.reason,
                        "role": request.role,
                        "approvals_required": request.approvals_required,
                        "deadline_at": gate.deadline_at.isoformat(),
                        "default_action": request.default_action.value,
                        "escalation": [
                            {"role": s.role, "after_seconds": s.after.total_seconds()}
                            for s in request.escalation
                        ],
                        "reviewers": sorted(roster.reviewers),
                    },
                ),
                subject=request.subject,
                reason=request.reason,
                required_role=request.role,
                approvals_required=request.approvals_required,
                draft=request.draft,
                deadline_at=gate.deadline_at,
            ),
            **GATE_RECORD,
            summary=f"open gate {request.gate} · {request.role} · {request.tenant}",
        )
        try:
            await self._wait_for_outcome(gate)
        except asyncio.CancelledError:
            # The workflow is being cancelled: take the gate out of the review queue first.
            if gate.outcome is None:
                gate.outcome = GateOutcome(
                    gate=gate.name,
                    status=GateStatus.CANCELLED,
                    approved=False,
                    reason="the workflow was cancelled",
                    escalation_level=gate.level,
                )
            await self._finalize(gate)
            raise
        outcome = await self._finalize(gate)
        if outcome.status == GateStatus.TIMED_OUT and (
            request.default_action == DefaultAction.FAIL
        ):
            raise ApprovalTimedOut(
                f"nobody decided gate {gate.name!r} by its deadline "
                f"({gate.deadline_at.isoformat()}); its default action is to fail",
                type="ApprovalTimedOut",
                non_retryable=True,
            )
        return outcome

    def status(self) -> GateView:
        view = GateView(decided=list(self._decided.values()))
        gate = self._open
        if gate is not None:
            view.open_gate = gate.name
            view.subject = gate.request.subject
            view.roles = gate.roles
            view.approvals = list(gate.approvers)
            view.approvals_required = gate.request.approvals_required
            view.escalation_level = gate.level
            view.opened_at = gate.opened_at
            view.deadline_at = gate.deadline_at
        return view

    async def _wait_for_outcome(self, gate: _OpenGate) -> None:
        while gate.outcome is None:
            due_at, timer = self._next_timer(gate)
            remaining = (due_at - workflow.now()).total_seconds()
            if remaining > 0:
                try:
                    await workflow.wait_condition(
                        lambda: gate.outcome is not None,
                        timeout=timedelta(seconds=remaining),
                        timeout_summary=f"{gate.name}: {timer}",
                    )
                    continue
                except TimeoutError:
                    if gate.outcome is not None:
                        break
            await self._on_timer(gate, timer, due_at)

    def _next_timer(self, gate: _OpenGate) -> tuple[datetime, str]:
        timers = [(gate.deadline_at, "deadline")]
        escalation = gate.escalation_at()
        if escalation is not None:
            timers.append((escalation[0], "escalate"))
        if gate.next_reminder_at is not None and gate.next_reminder_at < gate.deadline_at:
            timers.append((gate.next_reminder_at, "remind"))
        return min(timers, key=lambda timer: (timer[0], _TIMER_ORDER[timer[1]]))

    async def _on_timer(self, gate: _OpenGate, timer: str, due_at: datetime) -> None:
        if timer == "deadline":
            self._apply_default_action(gate)
        elif timer == "escalate":
            await self._escalate(gate, due_at)
        else:
            await self._remind(gate)

    def _apply_default_action(self, gate: _OpenGate) -> None:
        action = gate.request.default_action
        approve = action == DefaultAction.APPROVE_WITH_FLAG
        gate.outcome = GateOutcome(
            gate=gate.name,
            status=GateStatus.TIMED_OUT,
            approved=approve,
            final=gate.request.draft if approve else None,
            reason=f"no decision by the deadline; default action: {action.value}",
            flagged=approve,
            escalation_level=gate.level,
        )

    async def _escalate(self, gate: _OpenGate, due_at: datetime) -> None:
        previous_roles = gate.roles
        gate.level += 1
        new_role = gate.roles[-1]
        workflow.logger.info("Approval gate %s escalated to %s", gate.name, new_role)
        gate.roster = await self._refresh(
            gate,
            "approval.escalated",
            payload={"level": gate.level, "from_roles": previous_roles, "to_role": new_role},
            changes={"escalation_level": gate.level, "required_role": new_role},
        )
        # The escalation asks the new level itself: a reminder due at the same time is skipped.
        if gate.next_reminder_at is not None and gate.request.remind_every is not None:
            while gate.next_reminder_at <= due_at:
                gate.next_reminder_at += gate.request.remind_every
        self._show_waiting(gate)

    async def _remind(self, gate: _OpenGate) -> None:
        gate.reminders_sent += 1
        assert gate.next_reminder_at is not None and gate.request.remind_every is not None
        gate.next_reminder_at += gate.request.remind_every
        workflow.logger.info("Approval gate %s: reminder %d", gate.name, gate.reminders_sent)
        gate.roster = await self._refresh(
            gate,
            "approval.reminded",
            payload={
                "reminder": gate.reminders_sent,
                "roles": gate.roles,
                "reviewers": sorted(
                    name
                    for name in gate.roster.reviewers
                    if gate.roster.authorized(name, gate.roles)
                ),
                "waiting_seconds": round((workflow.now() - gate.opened_at).total_seconds()),
            },
        )

    async def _refresh(
        self,
        gate: _OpenGate,
        event_type: str,
        payload: dict[str, Any],
        changes: dict[str, Any] | None = None,
    ) -> Roster:
        return await call_local(
            REFRESH_GATE,
            RefreshInput(
                event=self._event(gate, event_type, payload=payload, changes=changes or {}),
                roles=gate.request.all_roles,
            ),
            **GATE_RECORD,
            summary=f"gate {gate.request.gate} · {event_type}",
        )

    async def _finalize(self, gate: _OpenGate) -> GateOutcome:
        outcome = gate.outcome
        assert outcome is not None
        # Votes still being written go first, so the trail reads in the order things happened.
        await workflow.wait_condition(lambda: gate.votes_recording == 0)
        event_type = {
            GateStatus.TIMED_OUT: "approval.timed_out",
            GateStatus.CANCELLED: "approval.cancelled",
        }.get(outcome.status, "approval.decided")
        await self._record(
            self._event(
                gate,
                event_type,
                actor=", ".join(outcome.decided_by) or "keel",
                payload={
                    "status": outcome.status.value,
                    "approved": outcome.approved,
                    "flagged": outcome.flagged,
                    "decided_by": outcome.decided_by,
                    "reason": outcome.reason,
                    "escalation_level": gate.level,
                    "waited_seconds": round((workflow.now() - gate.opened_at).total_seconds()),
                },
                changes={
                    "status": outcome.status.value,
                    "final": outcome.final,
                    "decided_by": outcome.decided_by,
                    "decision_reason": outcome.reason,
                },
            )
        )
        gate.finalized = True
        self._decided[gate.name] = outcome
        self._open = None
        workflow.upsert_search_attributes([KEEL_AWAITING.value_unset()])
        workflow.set_current_details(f"Gate `{gate.name}` {describe(outcome)}.")
        return outcome

    # --- Decisions -------------------------------------------------------------------------

    # Validators refuse what workflow state alone decides. Whether the reviewer may decide
    # depends on the reviewers table now, which only the handler can read.
    def _validate_approve(self, decision: ApproveDecision) -> None:
        self._admit(APPROVE, decision, authorize=False)

    def _validate_reject(self, decision: RejectDecision) -> None:
        self._admit(REJECT, decision, authorize=False)

    def _validate_edit(self, decision: EditDecision) -> None:
        self._admit(EDIT, decision, authorize=False)

    async def _approve(self, decision: ApproveDecision) -> DecisionReceipt:
        return await self._decide(APPROVE, decision)

    async def _reject(self, decision: RejectDecision) -> DecisionReceipt:
        return await self._decide(REJECT, decision)

    async def _edit(self, decision: EditDecision) -> DecisionReceipt:
        return await self._decide(EDIT, decision)

    async def _approve_signal(self, decision: ApproveDecision) -> None:
        await self._decide_from_signal(APPROVE, decision)

    async def _reject_signal(self, decision: RejectDecision) -> None:
        await self._decide_from_signal(REJECT, decision)

    async def _edit_signal(self, decision: EditDecision) -> None:
        await self._decide_from_signal(EDIT, decision)

    def _target(self, decision: Decision) -> str | None:
        if decision.gate is not None:
            return decision.gate
        if self._open is not None:
            return self._open.name
        return next(reversed(self._decided), None)

    def _is_duplicate(self, action: str, decision: Decision) -> bool:
        target = self._target(decision)
        return action == APPROVE and (target, decision.reviewer) in self._counted

    def _admit(self, action: str, decision: Decision, *, authorize: bool = True) -> None:
        """Raise the refusal for ``decision``, or return when it may be applied. Reads only
        workflow state: validators must be deterministic and do no I/O. With ``authorize``, the
        reviewer is judged against the open gate's roster (which the handler has just read)."""
        if self._is_duplicate(action, decision):
            return  # answered idempotently by the handler
        gate = self._open
        workflow_id = workflow.info().workflow_id
        if decision.gate is not None and (gate is None or decision.gate != gate.name):
            earlier = self._decided.get(decision.gate)
            if earlier is not None:
                newer = (
                    f"; the open gate is {gate.name!r}: look at its draft first "
                    f"(keel show {workflow_id})"
                    if gate is not None
                    else ""
                )
                raise refusal(
                    RefusalType.ALREADY_DECIDED,
                    f"gate {decision.gate!r} was already decided ({describe(earlier)}){newer}",
                )
            if gate is None:
                raise refusal(
                    RefusalType.NOT_WAITING,
                    f"workflow {workflow_id} is not waiting for approval "
                    f"(no gate named {decision.gate!r})",
                )
            raise refusal(
                RefusalType.INVALID,
                f"no gate named {decision.gate!r}; the open gate is {gate.name!r}",
            )
        if gate is None:
            last = next(reversed(self._decided.values()), None)
            why = (
                f": gate {last.gate!r} was already decided ({describe(last)})"
                if last is not None
                else " (no gate is open)"
            )
            raise refusal(
                RefusalType.NOT_WAITING, f"workflow {workflow_id} is not waiting for approval{why}"
            )
        if gate.outcome is not None:
            raise refusal(
                RefusalType.ALREADY_DECIDED,
                f"gate {gate.name!r} was already decided ({describe(gate.outcome)})",
            )
        if authorize and not gate.roster.authorized(decision.reviewer, gate.roles):
            escalation = gate.escalation_at()
            later = (
                f"; role {escalation[1]} may decide from {escalation[0]:%Y-%m-%d %H:%M} UTC"
                if escalation is not None
                else ""
            )
            raise refusal(
                RefusalType.NOT_AUTHORIZED,
                f"reviewer {decision.reviewer!r} is not authorized for gate {gate.name!r}: "
                f"it needs role {' or '.join(gate.roles)}{later} "
                "(grant one with `keel reviewers add NAME --role ROLE`)",
            )
        if isinstance(decision, EditDecision) and decision.text == gate.under_review:
            raise refusal(
                RefusalType.INVALID,
                "the edited text is identical to the draft under review: approve it instead",
            )

    async def _decide_from_signal(self, action: str, decision: Decision) -> None:
        # A signal cannot answer back: a refusal is recorded instead of raised (raising from a
        # signal handler would fail the whole workflow).
        try:
            await self._decide(action, decision)
        except ApplicationError as refused:
            await self._record_refusal(action, decision, refused)

    async def _record_refusal(
        self, action: str, decision: Decision, refused: ApplicationError
    ) -> None:
        gate = self._open
        info = workflow.info()
        target = self._target(decision) or "-"
        await self._record(
            GateEvent(
                event_key=f"{info.workflow_id}/{info.run_id}/{target}/refused/{workflow.uuid4()}",
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                tenant=gate.request.tenant if gate is not None else self._last_tenant,
                gate=target,
                event_type="approval.refused",
                actor=decision.reviewer,
                payload={
                    "action": action,
                    "channel": "signal",
                    "refusal": refused.type,
                    "message": refused.message,
                },
            )
        )

    async def _decide(self, action: str, decision: Decision) -> DecisionReceipt:
        if self._is_duplicate(action, decision):
            return self._receipt(action, decision, counted=False)
        if workflow.patched(CURRENT_ROSTER_PATCH):
            # Refuse what state decides before reading the database (a signal has had no
            # validator), then judge the reviewer on the roster as it is now.
            self._admit(action, decision, authorize=False)
            await self._read_current_roster()
            if self._is_duplicate(action, decision):  # counted while we read
                return self._receipt(action, decision, counted=False)
        # State may have moved since the validator ran (two decisions in one task, or while
        # the roster was read): check again; a refusal here fails this Update with the same
        # clear message. From here to the vote the gate changes synchronously.
        self._admit(action, decision)
        gate = self._open
        assert gate is not None
        vote = self._apply(gate, action, decision)
        gate.votes_recording += 1
        try:
            await self._record(vote)
        finally:
            gate.votes_recording -= 1
        if gate.outcome is not None:
            await workflow.wait_condition(lambda: gate.finalized)
        return self._receipt(action, decision, counted=True)

    async def _read_current_roster(self) -> None:
        gate = self._open
        assert gate is not None
        roster = await call_local(
            LOAD_REVIEWER_ROSTER,
            RosterRequest(roles=gate.request.all_roles),
            **GATE_RECORD,
            summary="reviewers now",
        )
        if self._open is gate:  # not decided (and replaced by the next gate) meanwhile
            gate.roster = roster

    def _apply(self, gate: _OpenGate, action: str, decision: Decision) -> GateEvent:
        """Change the gate for one admitted decision (synchronously) and return its event."""
        reviewer = decision.reviewer
        required = gate.request.approvals_required
        payload: dict[str, Any] = {"action": action, "approvals_required": required}
        changes: dict[str, Any] = {}
        if isinstance(decision, RejectDecision):
            gate.outcome = GateOutcome(
                gate=gate.name,
                status=GateStatus.REJECTED,
                approved=False,
                reason=decision.reason,
                decided_by=[reviewer],
                escalation_level=gate.level,
            )
            payload["reason"] = decision.reason
        else:
            if isinstance(decision, EditDecision):
                # Approvals so far were for the old text: the edit starts the count again.
                self._counted = {(g, r) for g, r in self._counted if g != gate.name}
                gate.under_review, gate.edited, gate.approvers = decision.text, True, []
                changes["final"] = decision.text
                payload["edited_chars"] = len(decision.text)
            gate.approvers.append(reviewer)
            self._counted.add((gate.name, reviewer))
            changes["decided_by"] = list(gate.approvers)
            payload["approvals"] = len(gate.approvers)
            comment = getattr(decision, "comment", None)
            if comment:
                payload["comment"] = comment
            if len(gate.approvers) >= required:
                gate.outcome = GateOutcome(
                    gate=gate.name,
                    status=GateStatus.EDITED if gate.edited else GateStatus.APPROVED,
                    approved=True,
                    final=gate.under_review,
                    reason=comment,
                    decided_by=list(gate.approvers),
                    escalation_level=gate.level,
                )
        self._show_waiting(gate)
        return self._event(
            gate,
            f"approval.{_PAST_TENSE[action]}",
            actor=reviewer,
            payload=payload,
            changes=changes,
        )

    def _receipt(self, action: str, decision: Decision, counted: bool) -> DecisionReceipt:
        target = self._target(decision) or ""
        gate = self._open if self._open is not None and self._open.name == target else None
        outcome = gate.outcome if gate is not None else self._decided.get(target)
        if gate is not None:
            approvals, required = len(gate.approvers), gate.request.approvals_required
        else:
            approvals = len(outcome.decided_by) if outcome else 0
            required = approvals
        status = outcome.status if outcome is not None else GateStatus.PENDING
        if not counted:
            message = f"your approval of gate {target!r} was already counted ({status.value})"
        elif outcome is not None:
            message = f"gate {target!r} {describe(outcome)}; the workflow goes on"
        else:
            message = (
                f"{_PAST_TENSE[action]} gate {target!r}: {approvals} of {required} approvals; "
                f"{required - approvals} more needed from another reviewer"
            )
        return DecisionReceipt(
            gate=target,
            action=action,
            reviewer=decision.reviewer,
            counted=counted,
            approvals=approvals,
            approvals_required=required,
            status=status,
            message=message,
        )

    # --- Records and what the Web UI shows -------------------------------------------------

    def _event(
        self,
        gate: _OpenGate,
        event_type: str,
        payload: dict[str, Any],
        actor: str = "keel",
        changes: dict[str, Any] | None = None,
    ) -> GateEvent:
        info = workflow.info()
        return GateEvent(
            # Replay-stable: the same history always produces the same keys.
            event_key=f"{info.workflow_id}/{info.run_id}/{gate.name}/{event_type}/{workflow.uuid4()}",
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            tenant=gate.request.tenant,
            gate=gate.name,
            event_type=event_type,
            actor=actor,
            payload=payload,
            changes=changes or {},
        )

    async def _record(self, event: GateEvent) -> None:
        await call_local(
            RECORD_GATE_EVENT,
            event,
            **GATE_RECORD,
            summary=f"gate {event.gate} · {event.event_type}",
        )

    def _show_waiting(self, gate: _OpenGate) -> None:
        workflow.set_current_details(waiting_details(workflow.info().workflow_id, gate))


def waiting_details(workflow_id: str, gate: _OpenGate) -> str:
    """What a person looking at the run in the Web UI needs: what, why, who, when, and how."""
    request = gate.request
    escalation = gate.escalation_at()
    later = (
        f" · escalates to {escalation[1]} at {escalation[0]:%Y-%m-%d %H:%M} UTC"
        if escalation
        else ""
    )
    subject = f": {request.subject}" if request.subject else ""
    eligible = [name for name in gate.roster.reviewers if gate.roster.authorized(name, gate.roles)]
    nobody = (
        []
        if eligible
        else [f"Nobody holds that role yet: `keel reviewers add NAME --role {gate.roles[-1]}`"]
    )
    return "\n".join(
        [
            f"**Waiting for approval** of gate `{gate.name}`{subject}",
            f"Why: {request.reason}",
            f"Who: role {' or '.join(gate.roles)} · {len(gate.approvers)} of "
            f"{request.approvals_required} approvals{later}",
            *nobody,
            f"Deadline: {gate.deadline_at:%Y-%m-%d %H:%M} UTC, then {request.default_action.value}",
            "",
            f"Approve: `keel approve {workflow_id} --reviewer NAME`",
            f"Reject: `keel reject {workflow_id} --reviewer NAME --reason TEXT`",
            f"Signal only: `temporal workflow signal --workflow-id {workflow_id} --name approve "
            '--input \'{"reviewer": "NAME"}\'`',
        ]
    )
