"""The LLM call ledger: exactly one ``llm_calls`` row per attempt that really happened.

The row is written before the provider is called (outcome ``in_flight``) and completed after, so
an attempt whose worker dies mid-call still has its row; the next attempt of the same activity
marks it ``interrupted``. Without that, a SIGKILLed worker's calls would vanish from the ledger
while the provider still billed them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Date,
    Executable,
    Integer,
    Table,
    bindparam,
    cast,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.llm import LedgerOutcome, Usage
from infra.tables import LlmCall, TenantDailySpend

# Activity ids restart in every workflow run, so the run is part of an attempt's identity.
LEDGER_KEY = ["workflow_id", "run_id", "activity_id", "attempt"]
IN_FLIGHT = LedgerOutcome.IN_FLIGHT.value
INTERRUPTED = LedgerOutcome.INTERRUPTED.value


@dataclass(frozen=True)
class AttemptRecord:
    workflow_id: str
    run_id: str | None
    activity_id: str
    attempt: int
    tenant: str
    route: str | None
    provider: str
    model: str
    prompt_hash: str
    usage: Usage
    cost_usd: Decimal | None
    latency_ms: int
    first_token_ms: int | None
    streamed: bool
    outcome: str
    error_class: str | None = None
    error_message: str | None = None
    # Set aside by the budget check while the attempt runs (see activities/llm/budgets.py).
    reserved_usd: Decimal | None = None
    # When the attempt ended, for rows written later in bulk (a batch page's flush); rows
    # written one at a time take the database's now().
    finished_at: datetime | None = None


def _values(record: AttemptRecord) -> dict[str, object]:
    return {
        "workflow_id": record.workflow_id,
        "run_id": record.run_id,
        "activity_id": record.activity_id,
        "attempt": record.attempt,
        "tenant": record.tenant,
        "route": record.route,
        "provider": record.provider,
        "model": record.model,
        "prompt_hash": record.prompt_hash,
        "input_tokens": record.usage.input_tokens,
        "output_tokens": record.usage.output_tokens,
        "cached_tokens": record.usage.cached_tokens,
        "reasoning_tokens": record.usage.reasoning_tokens,
        "cost_usd": record.cost_usd,
        "latency_ms": record.latency_ms,
        "first_token_ms": record.first_token_ms,
        "streamed": record.streamed,
        "outcome": record.outcome,
        "error_class": record.error_class,
        "error_message": record.error_message,
        "reserved_usd": record.reserved_usd,
    }


def _core_table(table: object) -> Table:
    """A mapped class's Core table (typed: ``__table__`` is any FromClause to mypy)."""
    if not isinstance(table, Table):
        raise TypeError(f"not a table: {table!r}")
    return table


# Concurrent completions of one tenant spread over this many rows per day (see TenantDailySpend).
SPEND_SHARDS = 16


def spend_shard(record: AttemptRecord) -> int:
    return zlib.crc32(f"{record.workflow_id}/{record.activity_id}".encode()) % SPEND_SHARDS


async def mark_interrupted(
    session: AsyncSession, workflow_id: str, run_id: str | None, activity_id: str, attempt: int
) -> None:
    """Earlier attempts of the activity still in flight ended without their worker knowing
    (Temporal's timeout, a dead worker): mark them ``interrupted``, releasing their budget
    reservations. ``attempt`` is the attempt that found them."""
    await session.execute(
        update(LlmCall)
        .where(
            LlmCall.workflow_id == workflow_id,
            LlmCall.run_id == run_id,
            LlmCall.activity_id == activity_id,
            LlmCall.attempt < attempt,
            LlmCall.outcome == IN_FLIGHT,
        )
        .values(
            outcome=INTERRUPTED,
            error_message=f"the worker stopped during this attempt; attempt {attempt} took over",
        )
    )


async def record_attempt(session: AsyncSession, record: AttemptRecord) -> None:
    """Complete the attempt's in-flight row (or insert it, for attempts that never called the
    provider); a replay of a finished attempt is a no-op, so a retried write never
    double-counts tokens or cost.

    The same statement adds the cost to the tenant's spend of the day: the row leaves
    ``in_flight`` (releasing its budget reservation) and its cost is metered in one step, so a
    budget check never sees both or neither, and the spend is counted exactly once."""
    values = _values(record)
    await session.execute(
        _completion_statement(tuple(values)), {**values, "shard": spend_shard(record)}
    )


@lru_cache(maxsize=4)
def _completion_statement(columns: tuple[str, ...]) -> Executable:
    """``record_attempt``'s statement for these value columns (``_values``' keys, the same for
    every record), built once with a parameter per value: building it per call (its upsert's
    ``excluded`` columns, the spend CTE) cost more CPU than running it."""
    values: dict[str, Any] = {name: bindparam(name) for name in columns}
    # Core tables, not the ORM classes: with parameters, an ORM insert runs as a bulk insert.
    calls = _core_table(LlmCall.__table__)
    spends = _core_table(TenantDailySpend.__table__)
    statement = insert(calls).values(**values)
    completed = (
        statement.on_conflict_do_update(
            index_elements=LEDGER_KEY,
            set_={
                **{name: statement.excluded[name] for name in values if name not in LEDGER_KEY},
                # created_at is when the attempt finished, as for rows inserted whole.
                "created_at": func.now(),
            },
            where=calls.c.outcome == IN_FLIGHT,
        )
        .returning(calls.c.tenant, calls.c.cost_usd, calls.c.created_at)
        .cte("completed")
    )
    spend = insert(spends).from_select(
        ["tenant", "day", "shard", "spent_usd", "calls"],
        select(
            completed.c.tenant,
            cast(func.timezone("UTC", completed.c.created_at), Date),
            bindparam("shard", type_=Integer),
            completed.c.cost_usd,
            literal(1),
        ).where(completed.c.cost_usd > 0),
    )
    return spend.on_conflict_do_update(
        index_elements=["tenant", "day", "shard"],
        set_={
            "spent_usd": spends.c.spent_usd + spend.excluded.spent_usd,
            "calls": spends.c.calls + spend.excluded.calls,
            "updated_at": func.now(),
        },
    )


async def earlier_attempts(
    session: AsyncSession, workflow_id: str, run_id: str | None, activity_id: str, attempt: int
) -> list[tuple[int, str, str | None]]:
    """``(attempt, outcome, error_class)`` of the activity's attempts before ``attempt``: how
    many were rate limits and how many errors (activities/llm/retries.py)."""
    result = await session.execute(
        select(LlmCall.attempt, LlmCall.outcome, LlmCall.error_class)
        .where(
            LlmCall.workflow_id == workflow_id,
            LlmCall.run_id == run_id,
            LlmCall.activity_id == activity_id,
            LlmCall.attempt < attempt,
        )
        .order_by(LlmCall.attempt)
    )
    return [(row.attempt, row.outcome, row.error_class) for row in result]
