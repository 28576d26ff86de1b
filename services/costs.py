"""Spend from the ledger, grouped by model, tenant, workflow, day or route.

One row per group, totals that are the sum of the rows (the same numbers, added up). Every
attempt is a ledger row, so a retried call counts each attempt it was billed for (a stream cut
midway is billed for the tokens that arrived), a cached answer counts as a call that cost $0,
and a streamed call is metered from the usage its stream reported, like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from activities.batch.provider_batches import PROVIDER_BATCH_RUN
from activities.llm.pricing import price_usd
from contracts.llm import LedgerOutcome, Usage, provider_for_model
from infra.tables import LlmCall

Sessions = async_sessionmaker[AsyncSession]

# Attempts refused before reaching a provider: nothing billed.
REFUSED = tuple(
    outcome.value
    for outcome in (
        LedgerOutcome.SHORT_CIRCUITED,
        LedgerOutcome.BUDGET_REFUSED,
        LedgerOutcome.THROTTLED,
        LedgerOutcome.PROMPT_TOO_LARGE,
    )
)
FAILED = (LedgerOutcome.ERROR.value, LedgerOutcome.INTERRUPTED.value)


class CostGrouping(StrEnum):
    MODEL = "model"
    TENANT = "tenant"
    WORKFLOW = "workflow"
    DAY = "day"
    ROUTE = "route"


@dataclass
class CostRow:
    key: str
    attempts: int = 0
    ok: int = 0
    cached: int = 0
    failed: int = 0
    refused: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    # Attempts that used tokens of a model the price table does not know (cost unknown).
    unpriced: int = 0

    def add(self, other: CostRow) -> None:
        for item in fields(self):
            if item.name != "key":
                setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))


@dataclass
class BatchSaving:
    """What the provider batch lines in the window cost, against the live price of the same
    tokens (lines of models the price table does not know are left out of both)."""

    lines: int
    batch_cost_usd: Decimal
    live_cost_usd: Decimal

    @property
    def saved_usd(self) -> Decimal:
        return self.live_cost_usd - self.batch_cost_usd


@dataclass
class CostReport:
    grouping: CostGrouping
    since: datetime
    until: datetime | None
    tenant: str | None
    rows: list[CostRow]
    batch_saving: BatchSaving | None = None

    @property
    def total(self) -> CostRow:
        total = CostRow("total")
        for row in self.rows:
            total.add(row)
        return total


def _group_key(grouping: CostGrouping) -> ColumnElement[str] | InstrumentedAttribute[str]:
    if grouping == CostGrouping.MODEL:
        return LlmCall.model
    if grouping == CostGrouping.TENANT:
        return LlmCall.tenant
    if grouping == CostGrouping.WORKFLOW:
        return LlmCall.workflow_id
    if grouping == CostGrouping.ROUTE:
        return func.coalesce(LlmCall.route, "(explicit models)")
    return func.to_char(cast(func.timezone("UTC", LlmCall.created_at), Date), "YYYY-MM-DD")


def start_of_month(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def cost_report(
    sessions: Sessions,
    grouping: CostGrouping,
    since: datetime,
    until: datetime | None = None,
    tenant: str | None = None,
) -> CostReport:
    key = _group_key(grouping).label("key")
    outcome = LlmCall.outcome
    statement = (
        select(
            key,
            func.count().label("attempts"),
            func.count().filter(outcome == LedgerOutcome.OK.value).label("ok"),
            func.count().filter(outcome == LedgerOutcome.CACHED.value).label("cached"),
            func.count().filter(outcome.in_(FAILED)).label("failed"),
            func.count().filter(outcome.in_(REFUSED)).label("refused"),
            func.count().filter(outcome == LedgerOutcome.IN_FLIGHT.value).label("in_flight"),
            func.coalesce(func.sum(LlmCall.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(LlmCall.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(LlmCall.cost_usd), 0).label("cost_usd"),
            func.count()
            .filter(
                LlmCall.cost_usd.is_(None),
                (LlmCall.input_tokens + LlmCall.output_tokens) > 0,
            )
            .label("unpriced"),
        )
        .where(LlmCall.created_at >= since)
        .group_by(key)
        .order_by(func.coalesce(func.sum(LlmCall.cost_usd), 0).desc(), key)
    )
    if until is not None:
        statement = statement.where(LlmCall.created_at < until)
    if tenant is not None:
        statement = statement.where(LlmCall.tenant == tenant)
    async with sessions() as session:
        result = await session.execute(statement)
        rows = [CostRow(**{**row._mapping, "key": str(row.key)}) for row in result]
        saving = await batch_saving(session, since, until, tenant)
    return CostReport(grouping, since, until, tenant, rows, saving)


async def batch_saving(
    session: AsyncSession,
    since: datetime,
    until: datetime | None = None,
    tenant: str | None = None,
    workflow_id: str | None = None,
) -> BatchSaving | None:
    """Provider batch lines (ledger rows of run ``provider-batch``) priced at live prices too."""
    statement = (
        select(
            LlmCall.provider,
            LlmCall.model,
            func.count().label("lines"),
            func.sum(LlmCall.input_tokens).label("input_tokens"),
            func.sum(LlmCall.output_tokens).label("output_tokens"),
            func.sum(LlmCall.cached_tokens).label("cached_tokens"),
            func.sum(LlmCall.cost_usd).label("cost_usd"),
        )
        .where(
            LlmCall.run_id == PROVIDER_BATCH_RUN,
            LlmCall.outcome == LedgerOutcome.OK.value,
            LlmCall.cost_usd.is_not(None),
            LlmCall.created_at >= since,
        )
        .group_by(LlmCall.provider, LlmCall.model)
    )
    if until is not None:
        statement = statement.where(LlmCall.created_at < until)
    if tenant is not None:
        statement = statement.where(LlmCall.tenant == tenant)
    if workflow_id is not None:
        statement = statement.where(LlmCall.workflow_id == workflow_id)
    lines, batch, live = 0, Decimal(0), Decimal(0)
    for row in await session.execute(statement):
        _, name = provider_for_model(row.model)
        usage = Usage(
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cached_tokens=row.cached_tokens,
        )
        live_price = price_usd(row.provider, name, usage)
        if live_price is None:
            continue
        lines += row.lines
        batch += Decimal(row.cost_usd)
        live += live_price
    return BatchSaving(lines, batch, live) if lines else None
