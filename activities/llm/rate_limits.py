"""Rate limits per provider (requests/min and tokens/min), shared by every worker process.

One GCRA limiter ("generic cell rate algorithm": a token bucket kept as a single timestamp) per
scope and unit in ``rate_limit_buckets``. Taking a slot is one atomic statement that moves the
bucket's theoretical arrival time (TAT) forward by the call's cost and returns how long the
caller must wait before it conforms; the clock is Postgres's, so workers on different hosts
agree. Callers queue FIFO into the future instead of polling, so a burst costs one statement per
call, never a thundering herd. A slot further away than the caller may wait is not taken: the
attempt is retried later by Temporal (and the route may fall back to another provider).

Every call is charged in full. A call bigger than the bucket (its burst) conforms once the
part above the burst has been earned at the rate: it waits that long even from a full bucket.
A call that would have to wait longer than it may, even then, can never be admitted: it is
refused at once (``ChargeTooLargeError``) instead of being retried until its deadline.

Why not Temporal's task-queue rate limit (``max_task_queue_activities_per_second``)? It is
enforced by the server for all workers of a queue, but it counts activities, not tokens, and is
per queue, not per provider: interactive and batch calls share a provider's quota from two
queues. See ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.llm import Usage
from infra.settings import KeelSettings

REQUESTS = "requests"
TOKENS = "tokens"

# Take a slot if it conforms within :max_wait seconds; RETURNING says how long to wait for it.
_ACQUIRE = text(
    """
    INSERT INTO rate_limit_buckets AS b (scope, unit, tat, updated_at)
    VALUES (:scope, :unit, clock_timestamp() + make_interval(secs => :interval),
            clock_timestamp())
    ON CONFLICT (scope, unit) DO UPDATE
       SET tat = GREATEST(b.tat, clock_timestamp()) + make_interval(secs => :interval),
           updated_at = clock_timestamp()
     WHERE GREATEST(b.tat, clock_timestamp()) + make_interval(secs => :interval)
           <= clock_timestamp() + make_interval(secs => :horizon)
    RETURNING GREATEST(0, EXTRACT(EPOCH FROM b.tat - clock_timestamp()) - :tolerance)
              AS wait_seconds
    """
)
# When a slot was refused: how long until it would conform, for the retry's delay.
_NEXT_SLOT = text(
    """
    SELECT GREATEST(0, EXTRACT(EPOCH FROM GREATEST(tat, clock_timestamp())
                                      + make_interval(secs => :interval)
                                      - clock_timestamp()) - :tolerance) AS wait_seconds
      FROM rate_limit_buckets WHERE scope = :scope AND unit = :unit
    """
)
# Give back what a call was charged beyond what it used (tokens are charged at worst case).
_REFUND = text(
    """
    UPDATE rate_limit_buckets
       SET tat = GREATEST(tat - make_interval(secs => :interval), clock_timestamp()),
           updated_at = clock_timestamp()
     WHERE scope = :scope AND unit = :unit
    """
)


@dataclass(frozen=True)
class Charge:
    """What one call costs one limiter."""

    scope: str
    unit: str
    amount: float
    per_minute: float
    burst_seconds: float

    @property
    def interval_seconds(self) -> float:
        """The call's whole cost in seconds of the rate (never capped at the burst: a call
        bigger than the bucket waits for the rest, so large calls are not under-counted)."""
        return self.amount * 60.0 / self.per_minute

    @property
    def capacity(self) -> float:
        """What a full bucket holds, in the charge's unit."""
        return self.per_minute * self.burst_seconds / 60.0

    def fits(self, max_wait_seconds: float) -> bool:
        """Whether a full bucket admits the call within ``max_wait_seconds``."""
        return self.interval_seconds <= self.burst_seconds + max_wait_seconds

    def parameters(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "unit": self.unit,
            "interval": self.interval_seconds,
            "tolerance": self.burst_seconds,
        }


class ChargeTooLargeError(Exception):
    """A call the limiter can never admit: more than a full bucket plus what the rate earns
    while the call may wait. Not retryable (another model's limit may take it)."""

    def __init__(self, charge: Charge, max_wait_seconds: float) -> None:
        most = charge.capacity + charge.per_minute * max_wait_seconds / 60.0
        super().__init__(
            f"rate limit {charge.scope} ({charge.per_minute:g} {charge.unit}/min, a bucket of "
            f"{charge.capacity:g}): this call needs {charge.amount:g} {charge.unit}, more than "
            f"the {most:g} it can ever get within its {max_wait_seconds:g}s wait; raise the "
            "limit's burst_seconds or lower the request's max_tokens"
        )
        self.charge = charge


class RateLimitedError(Exception):
    def __init__(self, charge: Charge, retry_in_seconds: float) -> None:
        super().__init__(
            f"rate limit {charge.scope} ({charge.per_minute:g} {charge.unit}/min, shared by all "
            f"workers): next slot in {retry_in_seconds:.1f}s"
        )
        self.charge = charge
        self.retry_in_seconds = retry_in_seconds


def charges_for(
    provider: str, model_name: str, estimated: Usage, settings: KeelSettings
) -> list[Charge]:
    """The limiters a call passes: its provider's and its provider:model's, if configured."""
    charges: list[Charge] = []
    for scope in (provider, f"{provider}:{model_name}"):
        limit = settings.rate_limits.get(scope)
        if limit is None:
            continue
        if limit.requests_per_minute is not None:
            charges.append(
                Charge(scope, REQUESTS, 1, limit.requests_per_minute, limit.burst_seconds)
            )
        if limit.tokens_per_minute is not None:
            tokens = estimated.input_tokens + estimated.output_tokens
            charges.append(
                Charge(scope, TOKENS, tokens, limit.tokens_per_minute, limit.burst_seconds)
            )
    # One order everywhere, so two callers taking the same buckets never deadlock.
    return sorted(charges, key=lambda c: (c.scope, c.unit))


async def acquire(session: AsyncSession, charges: list[Charge], max_wait_seconds: float) -> float:
    """Take a slot in every limiter; returns the seconds to wait before calling the provider.

    All or nothing: the slots are taken under a savepoint that is rolled back when one limiter
    has no slot within ``max_wait_seconds`` (RateLimitedError says when it will). A charge that
    no bucket could admit within ``max_wait_seconds`` raises ChargeTooLargeError, taking
    nothing."""
    if not charges:
        return 0.0
    for charge in charges:
        if not charge.fits(max_wait_seconds):
            raise ChargeTooLargeError(charge, max_wait_seconds)
    wait = 0.0
    savepoint = await session.begin_nested()
    for charge in charges:
        # Conforming within max_wait means a TAT no further than tolerance + max_wait away.
        horizon = charge.burst_seconds + max_wait_seconds
        parameters = {**charge.parameters(), "horizon": horizon}
        row = (await session.execute(_ACQUIRE, parameters)).first()
        if row is None:
            next_slot = (await session.execute(_NEXT_SLOT, charge.parameters())).first()
            await savepoint.rollback()
            raise RateLimitedError(charge, float(next_slot.wait_seconds) if next_slot else 1.0)
        wait = max(wait, float(row.wait_seconds))
    await savepoint.commit()
    return wait


async def refund_unused(session: AsyncSession, charges: list[Charge], used: Usage) -> None:
    """Return the tokens a call was charged (worst case) but did not use."""
    for charge in charges:
        if charge.unit != TOKENS:
            continue
        unused = charge.amount - (used.input_tokens + used.output_tokens)
        if unused > 0:
            refund = Charge(
                charge.scope, charge.unit, unused, charge.per_minute, charge.burst_seconds
            )
            await session.execute(_REFUND, refund.parameters())
