"""Approval gates in Postgres: the ``approvals`` row of each gate, its audit trail, and the
reviewers who may decide.

Activities here are called by ``workflows/approval_gate.py`` (as local activities: each is one
short transaction). Every write is idempotent: audit rows by their workflow-derived key, the
gate row by (workflow id, gate) and the run that opened it. The plain ``async def`` helpers are
shared with the CLI (``keel approvals``, ``keel reviewers``), which reads the same tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.audit_trail import AuditEventInput, write_audit_event
from contracts.approvals import (
    GateEvent,
    GateStatus,
    OpenGateInput,
    RefreshInput,
    Roster,
    RosterRequest,
)
from infra.settings import KeelSettings
from infra.tables import Approval, Reviewer

# Reviewer changes are audited under this pseudo workflow id: `keel audit keel/reviewers`.
REVIEWERS_AUDIT_ID = "keel/reviewers"
# Columns a gate event may change on its row; anything else in `changes` is a programming error.
_CHANGEABLE = frozenset(
    {"status", "final", "decided_by", "decision_reason", "escalation_level", "required_role"}
)
_FINISHED = frozenset(status.value for status in GateStatus if status != GateStatus.PENDING)
HUMAN_DECISIONS = (GateStatus.APPROVED.value, GateStatus.EDITED.value, GateStatus.REJECTED.value)


# --- Reviewers -----------------------------------------------------------------------------


async def reviewer_roles(
    session: AsyncSession, configured: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """Every reviewer with every role: the reviewers table plus the configured fallback."""
    roles: dict[str, set[str]] = {
        name: set(names) for name, names in (configured or {}).items() if names
    }
    for reviewer in (await session.execute(select(Reviewer))).scalars():
        roles.setdefault(reviewer.name, set()).add(reviewer.role)
    return {name: sorted(held) for name, held in sorted(roles.items())}


async def roster_for(
    session: AsyncSession, roles: Sequence[str], configured: dict[str, list[str]] | None = None
) -> Roster:
    """Reviewers holding at least one of ``roles`` (only those roles kept: the workflow holds
    what it needs to authorize, not the whole directory)."""
    wanted = set(roles)
    everyone = await reviewer_roles(session, configured)
    return Roster(
        reviewers={
            name: [role for role in held if role in wanted]
            for name, held in everyone.items()
            if wanted.intersection(held)
        }
    )


async def add_reviewer(session: AsyncSession, name: str, role: str, added_by: str) -> bool:
    """Grant ``role`` to ``name``; False when they already held it. Audited."""
    inserted = await session.execute(
        insert(Reviewer)
        .values(name=name, role=role, added_by=added_by)
        .on_conflict_do_nothing(index_elements=["name", "role"])
        .returning(Reviewer.name)
    )
    if inserted.first() is None:
        return False
    await _audit_reviewer_change(session, "reviewer.added", name, [role], added_by)
    return True


async def remove_reviewer(
    session: AsyncSession, name: str, role: str | None, removed_by: str
) -> list[str]:
    """Withdraw ``role`` (or every role) from ``name``; returns the roles removed. Audited."""
    statement = delete(Reviewer).where(Reviewer.name == name)
    if role is not None:
        statement = statement.where(Reviewer.role == role)
    removed = [row.role for row in await session.execute(statement.returning(Reviewer.role))]
    if removed:
        await _audit_reviewer_change(session, "reviewer.removed", name, removed, removed_by)
    return removed


async def _audit_reviewer_change(
    session: AsyncSession, event_type: str, name: str, roles: list[str], actor: str
) -> None:
    await write_audit_event(
        session,
        AuditEventInput(
            event_key=f"{REVIEWERS_AUDIT_ID}/{uuid.uuid4()}",
            workflow_id=REVIEWERS_AUDIT_ID,
            event_type=event_type,
            actor=actor,
            payload={"reviewer": name, "roles": roles},
        ),
    )


# --- Gate rows -----------------------------------------------------------------------------


async def write_gate_event(session: AsyncSession, event: GateEvent) -> None:
    """Audit one gate event and apply its changes to the gate's row, in the caller's
    transaction. A finished status stamps ``decided_at``."""
    await write_audit_event(
        session,
        AuditEventInput(
            event_key=event.event_key,
            workflow_id=event.workflow_id,
            run_id=event.run_id,
            tenant=event.tenant,
            event_type=event.event_type,
            actor=event.actor,
            payload={"gate": event.gate, **event.payload},
        ),
    )
    if not event.changes:
        return
    unknown = set(event.changes) - _CHANGEABLE
    if unknown:
        raise ValueError(f"gate events cannot change {sorted(unknown)}")
    values: dict[str, Any] = dict(event.changes)
    if values.get("status") in _FINISHED:
        values["decided_at"] = func.now()
    await session.execute(
        update(Approval)
        .where(
            Approval.workflow_id == event.workflow_id,
            Approval.gate == event.gate,
            Approval.run_id == event.run_id,
        )
        .values(**values)
    )


async def pending_gates(session: AsyncSession, tenant: str | None = None) -> list[Approval]:
    """The review queue: open gates, oldest first."""
    statement = select(Approval).where(Approval.status == GateStatus.PENDING.value)
    if tenant is not None:
        statement = statement.where(Approval.tenant == tenant)
    return list((await session.execute(statement.order_by(Approval.requested_at))).scalars())


async def gates_of(session: AsyncSession, workflow_id: str) -> list[Approval]:
    statement = select(Approval).where(Approval.workflow_id == workflow_id).order_by(Approval.id)
    return list((await session.execute(statement)).scalars())


async def decided_by_humans(
    session: AsyncSession,
    changed_only: bool,
    tenant: str | None = None,
    workflow_id: str | None = None,
) -> list[Approval]:
    """Gates a person decided, in decision order: the (draft, final) pairs for evaluation."""
    statement = select(Approval).where(Approval.status.in_(HUMAN_DECISIONS))
    if changed_only:
        statement = statement.where(Approval.status == GateStatus.EDITED.value)
    if tenant is not None:
        statement = statement.where(Approval.tenant == tenant)
    if workflow_id is not None:
        statement = statement.where(Approval.workflow_id == workflow_id)
    return list((await session.execute(statement.order_by(Approval.decided_at))).scalars())


def reviewed_pair(gate: Approval) -> dict[str, object]:
    """One line of the (draft, final) export: `keel approvals export` and the console alike."""
    return {
        "workflow_id": gate.workflow_id,
        "gate": gate.gate,
        "tenant": gate.tenant,
        "subject": gate.subject,
        "decision": gate.status,
        "draft": gate.draft,
        "final": gate.final,
        "changed": gate.final is not None and gate.final != gate.draft,
        "reason_requested": gate.reason_requested,
        "reviewers": gate.decided_by,
        "reviewer_note": gate.decision_reason,
        "decided_at": gate.decided_at.isoformat() if gate.decided_at else None,
    }


# --- Activities ----------------------------------------------------------------------------


class ApprovalActivities:
    """The approval-gate activities, with the worker's settings (the reviewers it configures)
    and database sessions."""

    def __init__(self, settings: KeelSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessions = sessions

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.load_reviewer_roster,
            self.open_approval_gate,
            self.record_gate_event,
            self.refresh_gate,
        ]

    @activity.defn(name="load_reviewer_roster")
    async def load_reviewer_roster(self, request: RosterRequest) -> Roster:
        async with self._sessions() as session:
            return await roster_for(session, request.roles, self._settings.reviewers)

    @activity.defn(name="open_approval_gate")
    async def open_approval_gate(self, request: OpenGateInput) -> None:
        """Write the gate's row (pending) and its ``approval.requested`` event, atomically.

        A retry finds the row of its own run and leaves it alone; a new run under the same
        workflow id starts the gate afresh (the earlier run's trail stays in ``audit_events``).
        """
        event = request.event
        row: dict[str, Any] = {
            "workflow_id": event.workflow_id,
            "run_id": event.run_id,
            "gate": event.gate,
            "tenant": event.tenant,
            "status": GateStatus.PENDING.value,
            "subject": request.subject[:300] or None,
            "reason_requested": request.reason,
            "required_role": request.required_role,
            "escalation_level": 0,
            "approvals_required": request.approvals_required,
            "draft": request.draft,
            "final": None,
            "decided_by": [],
            "decision_reason": None,
            "deadline_at": request.deadline_at,
            "decided_at": None,
        }
        statement = insert(Approval).values(**row)
        statement = statement.on_conflict_do_update(
            index_elements=["workflow_id", "gate"],
            set_={**{k: statement.excluded[k] for k in row}, "requested_at": func.now()},
            where=Approval.run_id.is_distinct_from(statement.excluded.run_id),
        )
        async with self._sessions.begin() as session:
            await session.execute(statement)
            await write_gate_event(session, event.model_copy(update={"changes": {}}))

    @activity.defn(name="record_gate_event")
    async def record_gate_event(self, event: GateEvent) -> None:
        async with self._sessions.begin() as session:
            await write_gate_event(session, event)

    @activity.defn(name="refresh_gate")
    async def refresh_gate(self, request: RefreshInput) -> Roster:
        """A reminder or an escalation: record it and read the roster again."""
        async with self._sessions.begin() as session:
            await write_gate_event(session, request.event)
            return await roster_for(session, request.roles, self._settings.reviewers)
