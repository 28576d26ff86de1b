"""Writing and reading the audit trail (``audit_events``, append-only).

Each event has a key derived from the workflow's own history (workflow id + step), so an activity
that retries or a workflow that replays writes the row once.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from activities.audit_event import AuditEventInput
from infra.database import session_factory
from infra.tables import AuditEvent


async def write_audit_event(session: AsyncSession, event: AuditEventInput) -> None:
    await session.execute(
        insert(AuditEvent)
        .values(
            event_key=event.event_key,
            workflow_id=event.workflow_id,
            run_id=event.run_id,
            tenant=event.tenant,
            event_type=event.event_type,
            actor=event.actor,
            payload=event.payload,
        )
        .on_conflict_do_nothing(index_elements=["event_key"])
    )


async def read_audit_trail(session: AsyncSession, workflow_id: str) -> list[AuditEvent]:
    result = await session.execute(
        select(AuditEvent).where(AuditEvent.workflow_id == workflow_id).order_by(AuditEvent.id)
    )
    return list(result.scalars())


@activity.defn(name="record_audit_event")
async def record_audit_event(event: AuditEventInput) -> None:
    async with session_factory().begin() as session:
        await write_audit_event(session, event)
