"""Reading what keel wrote, for assertions: the ledger, the audit trail, the breakers."""

from __future__ import annotations

from sqlalchemy import select

from infra.database import session_factory
from infra.tables import AuditEvent, CircuitBreaker, LlmCall


async def ledger_rows(workflow_id: str) -> list[LlmCall]:
    async with session_factory()() as session:
        result = await session.execute(
            select(LlmCall).where(LlmCall.workflow_id == workflow_id).order_by(LlmCall.id)
        )
        return list(result.scalars())


async def audit_events(workflow_id: str) -> list[AuditEvent]:
    async with session_factory()() as session:
        result = await session.execute(
            select(AuditEvent).where(AuditEvent.workflow_id == workflow_id).order_by(AuditEvent.id)
        )
        return list(result.scalars())


async def breaker(provider: str, model: str) -> CircuitBreaker | None:
    async with session_factory()() as session:
        return await session.get(CircuitBreaker, (provider, model))
