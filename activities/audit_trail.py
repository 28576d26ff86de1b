"""Writing and reading the audit trail (``audit_events``, append-only, hash-chained).

Each event has a key derived from the workflow's own history (workflow id + step), so an activity
that retries or a workflow that replays writes the row once. ``write_audit_event`` is the one
writer: every row it appends is chained to the previous row of its workflow
(``infra/audit_chain.py``), and the application's database role may only INSERT here, never
UPDATE or DELETE.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from contracts.audit import AuditEventInput
from infra.audit_chain import GENESIS_HASH, ChainedFields, payload_digest, payload_json
from infra.tables import AuditEvent

# Takes the workflow's chain head (creating it for a first event) and reads it, in one
# statement. ON CONFLICT DO UPDATE locks the head row and returns its newest committed version,
# even one committed after this statement's snapshot, so concurrent writers of one workflow queue
# here and each sees the head its predecessor left. The lock is held until commit.
# clock_timestamp() is read after the lock: occurred_at never goes backwards along a chain.
_TAKE_HEAD = text(
    """
    WITH head AS (
        INSERT INTO audit_chain_heads AS h (workflow_id, last_seq, last_hash)
        VALUES (:workflow_id, 0, :genesis)
        ON CONFLICT (workflow_id) DO UPDATE SET last_seq = h.last_seq
        RETURNING h.last_seq, h.last_hash
    )
    SELECT head.last_seq, head.last_hash, clock_timestamp() AS now,
           EXISTS (SELECT 1 FROM audit_events WHERE event_key = :event_key) AS recorded
    FROM head
    """
)
# Appends the row and moves the head to it. A row already recorded under the same key (a retry
# that raced its first attempt) inserts nothing, and then the head does not move either.
_APPEND = text(
    """
    WITH appended AS (
        INSERT INTO audit_events (event_key, workflow_id, run_id, tenant, event_type, actor,
                                  payload, occurred_at, seq, prev_hash, payload_sha256, row_hash)
        VALUES (:event_key, :workflow_id, :run_id, :tenant, :event_type, :actor,
                CAST(:payload AS jsonb), :occurred_at, :seq, :prev_hash, :payload_sha256,
                :row_hash)
        ON CONFLICT (event_key) DO NOTHING
        RETURNING seq, row_hash, occurred_at
    )
    UPDATE audit_chain_heads AS h
    SET last_seq = appended.seq, last_hash = appended.row_hash, updated_at = appended.occurred_at
    FROM appended WHERE h.workflow_id = :workflow_id
    """
)


async def write_audit_event(session: AsyncSession, event: AuditEventInput) -> None:
    """Append ``event`` to its workflow's chain in the caller's transaction (once per key)."""
    stored_payload = payload_json(event.payload)
    taking = {
        "workflow_id": event.workflow_id,
        "genesis": GENESIS_HASH,
        "event_key": event.event_key,
    }
    head = (await session.execute(_TAKE_HEAD, taking)).one()
    if head.recorded:
        return
    fields = ChainedFields(
        workflow_id=event.workflow_id,
        seq=head.last_seq + 1,
        event_key=event.event_key,
        run_id=event.run_id,
        tenant=event.tenant,
        event_type=event.event_type,
        actor=event.actor,
        occurred_at=head.now,
        payload_sha256=payload_digest(stored_payload),
        prev_hash=head.last_hash,
    )
    await session.execute(
        _APPEND, {**vars(fields), "payload": stored_payload, "row_hash": fields.row_hash()}
    )


async def read_audit_trail(session: AsyncSession, workflow_id: str) -> list[AuditEvent]:
    result = await session.execute(
        select(AuditEvent).where(AuditEvent.workflow_id == workflow_id).order_by(AuditEvent.seq)
    )
    return list(result.scalars())


class AuditActivities:
    """Appending to the audit trail, with the worker's database sessions."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @activity.defn(name="record_audit_event")
    async def record_audit_event(self, event: AuditEventInput) -> None:
        async with self._sessions.begin() as session:
            await write_audit_event(session, event)
