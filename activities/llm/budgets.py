"""Budgets per tenant and period, enforced before each call, atomically, in Postgres.

Before an attempt calls its provider, ``reserve`` locks the tenant's budget rows (``SELECT … FOR
UPDATE``: concurrent checks of one tenant queue up, other tenants never wait), reads what the
tenant has spent (``tenant_daily_spend``, kept by the statement that completes each ledger row)
plus what calls in flight have reserved (their ``llm_calls`` rows, outcome ``in_flight``), and
refuses the call when its worst-case estimate does not fit. The caller then writes its in-flight
row carrying the reservation in the same transaction, so the next check sees it. The estimate
is the worst case (the prompt's tokens counted generously plus ``max_tokens`` of output), so
concurrent calls cannot overshoot a budget by more than the amount by which their estimates were
short — in practice nothing.

The reservation ends when the row is completed (its real cost is metered in the same statement)
or, for an attempt whose worker died, when it is older than the longest an attempt may run.

Provider batches (``keel batch start --via provider``) reserve too: a chunk at its provider holds
its worst case (``provider_batch_chunks.worst_case_usd``) from the transaction that checked it and
marked it ``submitting`` until the one that collects its results (and meters their cost) ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from activities.llm.pricing import price_usd
from contracts.llm import BudgetState, LlmRequest, Usage
from infra.prompt_tokens import prompt_tokens
from infra.settings import KeelSettings
from infra.tables import Budget

PERIODS = ("day", "month")


# The tenant's budgets with their spend in the current UTC period and the reservations of its
# calls in flight. now() is the transaction's start, so every check in one transaction agrees.
_STATUS = """
SELECT b.tenant, b.period, b.limit_usd,
       COALESCE((SELECT SUM(s.spent_usd) FROM tenant_daily_spend s
                  WHERE s.tenant = b.tenant
                    AND s.day >= CASE WHEN b.period = 'day'
                                      THEN (now() AT TIME ZONE 'UTC')::date
                                      ELSE date_trunc('month', now() AT TIME ZONE 'UTC')::date
                                 END), 0) AS spent_usd,
       COALESCE((SELECT SUM(c.reserved_usd) FROM llm_calls c
                  WHERE c.tenant = b.tenant AND c.outcome = 'in_flight'
                    AND c.created_at > now() - make_interval(secs => :reservation_ttl)), 0)
       + COALESCE((SELECT SUM(p.worst_case_usd) FROM provider_batch_chunks p
                     JOIN batches t ON t.id = p.batch_id
                    WHERE t.tenant = b.tenant AND p.status IN ('submitting', 'submitted')
                      AND p.submit_started_at > now() - make_interval(
                          hours => :provider_reservation_hours)), 0)
           AS reserved_usd
  FROM budgets b
"""
# A provider batch ends within 24 hours (the providers' completion window) and is collected soon
# after; a chunk still "submitted" later than this belongs to a batch whose workflow is gone.
PROVIDER_RESERVATION_HOURS = 26
_STATUS_OF_TENANT = text(_STATUS + " WHERE b.tenant = :tenant ORDER BY b.period")
_STATUS_OF_ALL = text(_STATUS + " ORDER BY b.tenant, b.period")
# Rows locked in one order, so two checks of one tenant never deadlock.
_LOCK = text("SELECT period FROM budgets WHERE tenant = :tenant ORDER BY period FOR UPDATE")


def reservation_ttl_seconds(settings: KeelSettings) -> float:
    """After this long an in-flight row's reservation no longer counts: no attempt can still
    be running (each is cut at its start-to-close), so its worker died mid-call."""
    longest = max(
        settings.interactive_policy.start_to_close_seconds,
        settings.batch_policy.start_to_close_seconds,
    )
    return longest + settings.rate_limit_max_wait_seconds + 30


def estimated_usage(request: LlmRequest) -> Usage:
    """The most a call can be billed: the prompt counted generously (the simulator's rule, a
    little above real tokenizers) and every token of ``max_tokens`` generated."""
    return Usage(
        input_tokens=prompt_tokens(request.messages, request.parameters),
        output_tokens=request.parameters.max_tokens,
    )


def estimate_cost(provider: str, model_name: str, request: LlmRequest) -> Decimal | None:
    """Worst-case cost of one attempt; None for a model the price table does not know."""
    return price_usd(provider, model_name, estimated_usage(request))


class Estimate:
    """A worst-case cost computed on first use: tenants without a budget never pay for it."""

    def __init__(self, compute: Callable[[], Decimal | None]) -> None:
        self._compute = compute
        self._done = False
        self._value: Decimal | None = None

    @property
    def value(self) -> Decimal | None:
        if not self._done:
            self._value, self._done = self._compute(), True
        return self._value


class BudgetExceededError(Exception):
    """The call does not fit in a budget; the message names the budget and how to raise it."""

    def __init__(self, blocking: BudgetState, estimate: Decimal | None, model: str) -> None:
        needs = f"up to ${estimate:.6f}" if estimate is not None else "an unpriced amount"
        super().__init__(
            f"{blocking.describe()}; this call on {model} needs {needs}. "
            f"Raise it with: keel budget set {blocking.tenant} --usd <amount> "
            f"--period {blocking.period}"
        )
        self.blocking = blocking
        self.estimate = estimate


def _states(rows: object) -> list[BudgetState]:
    return [
        BudgetState(
            tenant=row.tenant,
            period=row.period,
            limit_usd=row.limit_usd,
            spent_usd=row.spent_usd,
            reserved_usd=row.reserved_usd,
        )
        for row in rows  # type: ignore[attr-defined]
    ]


async def budget_states(
    session: AsyncSession, tenant: str | None, settings: KeelSettings
) -> list[BudgetState]:
    """Every budget of ``tenant`` (all tenants: None) as it stands; reads, never locks."""
    parameters: dict[str, object] = {
        "reservation_ttl": reservation_ttl_seconds(settings),
        "provider_reservation_hours": PROVIDER_RESERVATION_HOURS,
    }
    if tenant is None:
        return _states(await session.execute(_STATUS_OF_ALL, parameters))
    parameters["tenant"] = tenant
    return _states(await session.execute(_STATUS_OF_TENANT, parameters))


def blocking_budget(states: list[BudgetState], estimate: Decimal | None) -> BudgetState | None:
    """The budget that cannot cover ``estimate`` (the tightest one), or None when all can.
    A call of unknown price is let through until a budget is spent."""
    needed = estimate if estimate is not None else Decimal(0)
    short = [s for s in states if s.left_usd <= 0 or s.left_usd < needed]
    return min(short, key=lambda s: s.left_usd) if short else None


async def lock_budgets(session: AsyncSession, tenant: str) -> bool:
    """Lock the tenant's budget rows until the transaction ends; False: it has none."""
    return bool((await session.execute(_LOCK, {"tenant": tenant})).all())


async def reserve(
    session: AsyncSession,
    tenant: str,
    estimate: Estimate,
    model: str,
    settings: KeelSettings,
) -> list[BudgetState]:
    """Check the call against every budget of its tenant, holding their rows until the
    caller's transaction ends (the caller writes the reservation before it commits).

    Returns the states seen (empty: the tenant has no budget, one indexed read spent);
    raises BudgetExceededError when a budget cannot cover the estimate."""
    if not await lock_budgets(session, tenant):
        return []
    # A fresh statement after the lock: it sees every reservation committed before it.
    states = await budget_states(session, tenant, settings)
    blocking = blocking_budget(states, estimate.value)
    if blocking is not None:
        raise BudgetExceededError(blocking, estimate.value, model)
    return states


async def set_budget(session: AsyncSession, tenant: str, period: str, limit_usd: Decimal) -> None:
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    statement = insert(Budget).values(tenant=tenant, period=period, limit_usd=limit_usd)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant", "period"],
            set_={"limit_usd": statement.excluded.limit_usd, "updated_at": text("now()")},
        )
    )


async def remove_budget(session: AsyncSession, tenant: str, period: str) -> bool:
    result = await session.execute(
        text("DELETE FROM budgets WHERE tenant = :tenant AND period = :period"),
        {"tenant": tenant, "period": period},
    )
    return bool(getattr(result, "rowcount", 0))
