"""Sending a reviewer's decision to a workflow's approval gate: the one path shared by
``keel approve|reject|edit`` and the HTTP API (``POST /v1/approvals/{workflow_id}/…``).

What this adds to the gate's own Update validator (workflows/approval_gate.py):

- **A reviewer the table refuses is refused without sending.** The gate itself judges every
  decision against the reviewers table as it is when the decision arrives (its Update handler
  reads it by local activity; a validator cannot). A decision the handler refuses is in the
  workflow's history, so the sender keeps the plain cases out: before anything is sent, the
  reviewer must hold one of the gate's roles (first or any escalation's) in the current table
  (plus ``KEEL_REVIEWERS``), and a refusal names the roles they do hold. Which level's role
  suffices is still the gate's call.
- **The gate the reviewer can have seen**: the open one, else the last one (a decision for it is
  then refused as already decided, or answered as a repeat).
- **Refusals are recorded here**: a refused Update never enters the workflow's history, so the
  ``approval.refused`` audit row (actor: the reviewer) is written by the sender.
- **Idempotent**: the Update id is ``action/gate/reviewer`` (+ a hash of an edit's text), so a
  retried decision, by either channel, is answered with the first result.
- **Tenant**: given one (the API's token), a workflow of another tenant is answered exactly as one
  that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import select
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.approvals import gates_of, reviewer_roles
from activities.audit_trail import AuditEventInput, write_audit_event
from contracts.approvals import (
    Decision,
    DecisionReceipt,
    EditDecision,
    GateStatus,
    RefusalType,
)
from contracts.search_attributes import KEEL_TENANT
from infra.database import session_factory
from infra.tables import Approval, AuditEvent

DECISION_TIMEOUT_SECONDS = 30.0
_REFUSAL_TYPES = frozenset(refusal.value for refusal in RefusalType)


class DecisionProblem:
    """Kinds of failure that are not the gate's refusals (those use RefusalType's values)."""

    NO_SUCH_WORKFLOW = "NoSuchWorkflow"
    FINISHED_BEFORE = "FinishedBeforeDecision"
    UNCONFIRMED = "DecisionUnconfirmed"
    FAILED = "DecisionFailed"


class DecisionRefused(Exception):
    """The decision was not applied. ``kind`` is a RefusalType value or a DecisionProblem;
    ``message`` says why (the gate's own words for a refusal), ``hint`` what to do next."""

    def __init__(self, kind: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class DecisionSent:
    workflow_id: str
    # The gate's answer; None when the workflow had already finished with this very approval
    # recorded (a repeat of a decision that counted).
    receipt: DecisionReceipt | None
    message: str


def update_id(action: str, gate: str, decision: Decision) -> str:
    """Same reviewer, same gate, same decision: the same Update id, so Temporal answers a
    retried command with the first result instead of applying it again."""
    key = f"{action}/{gate}/{decision.reviewer}"
    if isinstance(decision, EditDecision):
        key += "/" + hashlib.sha256(decision.text.encode()).hexdigest()[:16]
    return key


def _workflow_tenant(
    description: WorkflowExecutionDescription, gates: list[Approval]
) -> str | None:
    if gates:
        return gates[-1].tenant
    return description.typed_search_attributes.get(KEEL_TENANT)


async def _gate_roles(gate: Approval) -> tuple[list[str], list[str]]:
    """The roles that may decide ``gate`` now, and every role that ever may (its first role and
    each escalation's), from its ``approval.requested`` audit row and its escalation level."""
    async with session_factory()() as session:
        requested = (
            await session.execute(
                select(AuditEvent.payload)
                .where(
                    AuditEvent.workflow_id == gate.workflow_id,
                    AuditEvent.run_id == gate.run_id,
                    AuditEvent.event_type == "approval.requested",
                    AuditEvent.payload["gate"].astext == gate.gate,
                )
                .limit(1)
            )
        ).scalar_one_or_none()
    if not requested:
        return [gate.required_role], [gate.required_role]
    first = str(requested.get("role") or gate.required_role)
    later = [str(step["role"]) for step in requested.get("escalation") or [] if "role" in step]
    return [first, *later[: gate.escalation_level]], [first, *later]


# How often a decision is sent again while the workflow replays up to a gate Postgres already
# shows pending (see DecisionSender.send).
GATE_OPENING_RETRY_SECONDS = 0.5


def _gate_still_opening(
    cause: BaseException | None, pending: Approval | None, gate_name: str | None
) -> bool:
    return (
        isinstance(cause, ApplicationError)
        and cause.type == RefusalType.NOT_WAITING.value
        and pending is not None
        and pending.gate == gate_name
    )


class DecisionSender:
    """Sends one decision; ``via`` (``cli`` or ``api``) and ``token_id`` go into refusal rows."""

    def __init__(
        self,
        client: Client,
        configured_reviewers: dict[str, list[str]],
        *,
        via: str,
        token_id: str | None = None,
        timeout: float = DECISION_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        self.configured_reviewers = configured_reviewers
        self.via = via
        self.token_id = token_id
        self.timeout = timeout

    async def send(
        self, workflow_id: str, action: str, decision: Decision, *, tenant: str | None = None
    ) -> DecisionSent:
        """Apply ``decision`` (``action``: approve, reject or edit) or raise DecisionRefused.
        With ``tenant``, only that tenant's workflows exist."""
        handle = self.client.get_workflow_handle(workflow_id)
        description = await self._describe(handle)
        async with session_factory()() as session:
            gates = [
                g for g in await gates_of(session, workflow_id) if g.run_id == description.run_id
            ]
        workflow_tenant = _workflow_tenant(description, gates)
        if tenant is not None and workflow_tenant != tenant:
            self._no_such_workflow(workflow_id)
        audit_tenant = workflow_tenant or "default"
        open_gate = next((g for g in reversed(gates) if g.status == GateStatus.PENDING.value), None)

        if description.status != WorkflowExecutionStatus.RUNNING:
            last = gates[-1] if gates else None
            if last is not None and action == "approve" and decision.reviewer in last.decided_by:
                return DecisionSent(
                    workflow_id,
                    None,
                    f"already recorded: {decision.reviewer} approved gate {last.gate!r} "
                    f"({last.status}); the workflow has finished",
                )
            status = (
                description.status.name.lower().replace("_", " ")
                if description.status
                else "closed"
            )
            await self._refuse(
                description,
                audit_tenant,
                last.gate if last else None,
                action,
                decision,
                RefusalType.NOT_WAITING.value,
                f"workflow {workflow_id} is not waiting for approval: it is {status}",
            )

        # The gate the reviewer looked at, when they say (the API's `gate`); else the one they
        # can have seen.
        target = open_gate or (gates[-1] if gates else None)
        gate_name = decision.gate or (target.gate if target is not None else None)
        decision = decision.model_copy(update={"gate": gate_name})
        repeat = (
            action == "approve"
            and open_gate is not None
            and (decision.reviewer in open_gate.decided_by)
        )
        if open_gate is not None and not repeat:
            await self._check_current_roles(description, audit_tenant, open_gate, action, decision)

        key = update_id(action, gate_name, decision) if gate_name else str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            while True:
                try:
                    receipt = await asyncio.wait_for(
                        handle.execute_update(
                            action, decision, id=key, result_type=DecisionReceipt
                        ),
                        timeout=max(deadline - loop.time(), 0.1),
                    )
                    break
                except WorkflowUpdateFailedError as error:
                    # Postgres shows the gate pending but the workflow says no gate is open:
                    # a worker wrote the gate's row and died before its workflow task
                    # completed, and the next worker is replaying up to the gate. It opens in
                    # a moment: ask again rather than refuse a decision on a gate the
                    # reviewer can see. (A rejected Update leaves no record: the id is free.)
                    if _gate_still_opening(error.cause, open_gate, gate_name) and (
                        loop.time() + GATE_OPENING_RETRY_SECONDS < deadline
                    ):
                        await asyncio.sleep(GATE_OPENING_RETRY_SECONDS)
                        continue
                    raise
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type in _REFUSAL_TYPES:
                await self._refuse(
                    description, audit_tenant, gate_name, action, decision, cause.type,
                    cause.message,
                )  # fmt: skip
            raise DecisionRefused(
                DecisionProblem.FAILED,
                f"the decision failed: {cause or error}",
                f"see the run: keel show {workflow_id}",
            ) from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise DecisionRefused(
                    DecisionProblem.FINISHED_BEFORE,
                    f"workflow {workflow_id} finished before the decision arrived",
                    f"see how it ended: keel show {workflow_id}",
                ) from None
            raise
        except TimeoutError:
            raise DecisionRefused(
                DecisionProblem.UNCONFIRMED,
                f"no worker answered within {self.timeout:g}s; the decision was not confirmed",
                "is a worker running (keel worker)? then send the same decision again: "
                "it is idempotent",
            ) from None
        return DecisionSent(workflow_id, receipt, receipt.message)

    # --- Steps ------------------------------------------------------------------------------

    async def _describe(self, handle: WorkflowHandle) -> WorkflowExecutionDescription:
        try:
            return await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                self._no_such_workflow(handle.id)
            raise

    def _no_such_workflow(self, workflow_id: str) -> NoReturn:
        raise DecisionRefused(
            DecisionProblem.NO_SUCH_WORKFLOW,
            f"no such workflow: {workflow_id!r}",
            "pending reviews and their workflow ids: keel approvals",
        )

    async def _check_current_roles(
        self,
        description: WorkflowExecutionDescription,
        tenant: str,
        gate: Approval,
        action: str,
        decision: Decision,
    ) -> None:
        roles_now, roles_ever = await _gate_roles(gate)
        async with session_factory()() as session:
            held = (await reviewer_roles(session, self.configured_reviewers)).get(
                decision.reviewer, []
            )
        if set(held).intersection(roles_ever):
            return  # whether this level's roles include theirs is the gate's call
        await self._refuse(
            description,
            tenant,
            gate.gate,
            action,
            decision,
            RefusalType.NOT_AUTHORIZED.value,
            f"reviewer {decision.reviewer!r} is not authorized for gate {gate.gate!r}: it needs "
            f"role {' or '.join(dict.fromkeys(roles_now))} "
            "(grant one with `keel reviewers add NAME --role ROLE`)",
        )

    async def _refuse(
        self,
        description: WorkflowExecutionDescription,
        tenant: str,
        gate: str | None,
        action: str,
        decision: Decision,
        refusal_type: str,
        message: str,
    ) -> NoReturn:
        payload: dict[str, object] = {
            "gate": gate,
            "action": action,
            "channel": "update",
            "via": self.via,
            "refusal": refusal_type,
            "message": message,
        }
        if self.token_id is not None:
            payload["token_id"] = self.token_id
        async with session_factory().begin() as session:
            await write_audit_event(
                session,
                AuditEventInput(
                    event_key=f"{description.id}/refused/{uuid.uuid4()}",
                    workflow_id=description.id,
                    run_id=description.run_id,
                    tenant=tenant,
                    event_type="approval.refused",
                    actor=decision.reviewer,
                    payload=payload,
                ),
            )
            hint = f"see the run: keel show {description.id}"
            if refusal_type == RefusalType.NOT_AUTHORIZED.value:
                held = (await reviewer_roles(session, self.configured_reviewers)).get(
                    decision.reviewer
                )
                hint = (
                    f"{decision.reviewer} holds role {', '.join(held)}"
                    if held
                    else f"{decision.reviewer!r} is not a known reviewer (keel reviewers list)"
                )
        raise DecisionRefused(refusal_type, message, hint)
