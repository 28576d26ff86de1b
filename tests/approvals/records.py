"""Reading what the gates wrote, for assertions; and waiting for it without fixed sleeps."""

from __future__ import annotations

from sqlalchemy import select

from activities.approvals import add_reviewer
from infra.database import session_factory
from infra.tables import Approval
from tests.helpers import audit_events, eventually


async def seed_reviewers(**roles: str) -> None:
    """``seed_reviewers(alice="editor", lena="lead")``: one role each, as `keel reviewers add`."""
    async with session_factory().begin() as session:
        for name, role in roles.items():
            await add_reviewer(session, name, role, added_by="test")


async def gate_events(workflow_id: str) -> list[str]:
    return [
        r.event_type
        for r in await audit_events(workflow_id)
        if r.event_type.startswith("approval.")
    ]


async def gate_row(workflow_id: str, gate: str = "publish") -> Approval | None:
    async with session_factory()() as session:
        result = await session.execute(
            select(Approval).where(Approval.workflow_id == workflow_id, Approval.gate == gate)
        )
        return result.scalar_one_or_none()


async def pending_gate(workflow_id: str, gate: str = "publish") -> Approval:
    row = await eventually(
        lambda: gate_row(workflow_id, gate), lambda r: r is not None and r.status == "pending"
    )
    assert row is not None
    return row
