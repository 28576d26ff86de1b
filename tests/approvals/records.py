"""Reading what the gates wrote, for assertions; and waiting for it without fixed sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import select

from activities.approvals import add_reviewer
from infra.database import session_factory
from infra.tables import Approval, AuditEvent

T = TypeVar("T")


async def seed_reviewers(**roles: str) -> None:
    """``seed_reviewers(alice="editor", lena="lead")``: one role each, as `keel reviewers add`."""
    async with session_factory().begin() as session:
        for name, role in roles.items():
            await add_reviewer(session, name, role, added_by="test")


async def audit_rows(workflow_id: str) -> list[AuditEvent]:
    async with session_factory()() as session:
        result = await session.execute(
            select(AuditEvent).where(AuditEvent.workflow_id == workflow_id).order_by(AuditEvent.id)
        )
        return list(result.scalars())


async def gate_events(workflow_id: str) -> list[str]:
    return [
        r.event_type for r in await audit_rows(workflow_id) if r.event_type.startswith("approval.")
    ]


async def gate_row(workflow_id: str, gate: str = "publish") -> Approval | None:
    async with session_factory()() as session:
        result = await session.execute(
            select(Approval).where(Approval.workflow_id == workflow_id, Approval.gate == gate)
        )
        return result.scalar_one_or_none()


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 20.0
) -> T:
    """Poll ``probe`` until ``accept`` says yes; a generous bound, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still not there after {timeout}s: {value!r}")
        await asyncio.sleep(0.05)


async def pending_gate(workflow_id: str, gate: str = "publish") -> Approval:
    row = await eventually(
        lambda: gate_row(workflow_id, gate), lambda r: r is not None and r.status == "pending"
    )
    assert row is not None
    return row
