"""Spend limits per tenant: set, remove and read them, each change an audit row.

Every change is recorded under the pseudo workflow id ``budget/TENANT``, so ``keel audit
budget/acme`` answers who raised acme's budget, when, and from what. Enforced before every LLM
call by activities/llm/budgets.py.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.audit_trail import write_audit_event
from activities.llm.budgets import budget_states, remove_budget, set_budget
from contracts.audit import AuditEventInput
from contracts.llm import BudgetState
from infra.settings import KeelSettings
from infra.tables import Budget

Sessions = async_sessionmaker[AsyncSession]


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


def budget_audit_id(tenant: str) -> str:
    return f"budget/{tenant}"


async def _record_change(
    sessions: Sessions, tenant: str, event_type: str, actor: str, payload: dict[str, object]
) -> None:
    async with sessions.begin() as session:
        await write_audit_event(
            session,
            AuditEventInput(
                event_key=f"{budget_audit_id(tenant)}/{uuid.uuid4()}",
                workflow_id=budget_audit_id(tenant),
                tenant=tenant,
                event_type=event_type,
                actor=actor,
                payload=payload,
            ),
        )


async def change_budget(
    sessions: Sessions, tenant: str, period: str, limit_usd: Decimal, actor: str
) -> Decimal | None:
    """Set a budget (audited); returns the limit it replaced, if any."""
    async with sessions.begin() as session:
        previous = await session.scalar(
            select(Budget.limit_usd).where(Budget.tenant == tenant, Budget.period == period)
        )
        await set_budget(session, tenant, period, limit_usd)
    await _record_change(
        sessions,
        tenant,
        "budget.set",
        actor,
        {
            "period": period,
            "limit_usd": str(limit_usd),
            "previous_usd": str(previous) if previous is not None else None,
        },
    )
    return previous


async def current_budgets(
    sessions: Sessions, settings: KeelSettings, tenant: str | None = None
) -> list[BudgetState]:
    """Each budget (one tenant's, or all) with its spend this period and what is in flight."""
    async with sessions() as session:
        return await budget_states(session, tenant, settings)


async def remove_tenant_budget(sessions: Sessions, tenant: str, period: str, actor: str) -> bool:
    """Remove a budget (audited); False when there was none."""
    async with sessions.begin() as session:
        removed = await remove_budget(session, tenant, period)
    if removed:
        await _record_change(sessions, tenant, "budget.removed", actor, {"period": period})
    return removed
