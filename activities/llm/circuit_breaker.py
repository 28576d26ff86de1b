"""Circuit breakers per provider + model, kept in Postgres so every worker process shares them.

closed → open after ``threshold`` failures within ``window``; open → half_open once ``cooldown``
has passed, when exactly one caller wins the right to probe; half_open → closed on the probe's
success, or back to open on its failure. While open, calls fail fast without touching the provider.
Only failures that say the model is unwell count (5xx, overloaded, timeouts, broken connections);
429s have Retry-After, and 4xx are the caller's fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.llm import CircuitState, ErrorClass

COUNTED_FAILURES = frozenset(
    {
        ErrorClass.SERVER_ERROR,
        ErrorClass.OVERLOADED,
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION,
        ErrorClass.STREAM_INTERRUPTED,
    }
)


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int
    window_seconds: float
    cooldown_seconds: float
    # A probe that has not reported back by then lets another caller probe.
    probe_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class BreakerState:
    state: str
    failures: int
    opened_at: datetime | None
    retry_in_seconds: float | None


class CircuitOpenError(Exception):
    def __init__(self, provider: str, model: str, retry_in_seconds: float | None) -> None:
        wait = f"; next probe in {retry_in_seconds:.1f}s" if retry_in_seconds is not None else ""
        super().__init__(f"circuit open for {provider}/{model}{wait}")
        self.retry_in_seconds = retry_in_seconds


_READ = text(
    """
    SELECT state, failures, opened_at,
           CASE WHEN state = 'open'
                THEN GREATEST(0, EXTRACT(EPOCH FROM opened_at - now()) + :cooldown)
           END AS retry_in
      FROM circuit_breakers WHERE provider = :provider AND model = :model
    """
)

_CLAIM_PROBE = text(
    """
    UPDATE circuit_breakers
       SET state = 'half_open', probe_started_at = now(), updated_at = now()
     WHERE provider = :provider AND model = :model
       AND ((state = 'open' AND opened_at <= now() - make_interval(secs => :cooldown))
         OR (state = 'half_open'
             AND probe_started_at <= now() - make_interval(secs => :probe_timeout)))
    RETURNING state
    """
)

_SUCCESS = text(
    """
    UPDATE circuit_breakers
       SET state = 'closed', failures = 0, opened_at = NULL, probe_started_at = NULL,
           window_started_at = now(), updated_at = now()
     WHERE provider = :provider AND model = :model AND (state <> 'closed' OR failures > 0)
    """
)

# One statement, so concurrent failures from many workers count exactly.
_FAILURE = text(
    """
    INSERT INTO circuit_breakers AS b
           (provider, model, state, failures, window_started_at, opened_at, last_error_class,
            updated_at)
    VALUES (:provider, :model, CASE WHEN :threshold <= 1 THEN 'open' ELSE 'closed' END, 1, now(),
            CASE WHEN :threshold <= 1 THEN now() END, :error_class, now())
    ON CONFLICT (provider, model) DO UPDATE SET
        failures = CASE WHEN b.window_started_at < now() - make_interval(secs => :window)
                        THEN 1 ELSE b.failures + 1 END,
        window_started_at = CASE WHEN b.window_started_at < now() - make_interval(secs => :window)
                                 THEN now() ELSE b.window_started_at END,
        state = CASE
            WHEN b.state = 'half_open' THEN 'open'
            WHEN b.state = 'open' THEN 'open'
            WHEN (CASE WHEN b.window_started_at < now() - make_interval(secs => :window)
                       THEN 1 ELSE b.failures + 1 END) >= :threshold THEN 'open'
            ELSE 'closed' END,
        opened_at = CASE
            WHEN b.state = 'half_open' THEN now()
            WHEN b.state = 'open' THEN b.opened_at
            WHEN (CASE WHEN b.window_started_at < now() - make_interval(secs => :window)
                       THEN 1 ELSE b.failures + 1 END) >= :threshold THEN now()
            ELSE NULL END,
        probe_started_at = NULL,
        last_error_class = :error_class,
        updated_at = now()
    RETURNING state
    """
)


async def read_state(
    session: AsyncSession, provider: str, model: str, config: BreakerConfig
) -> BreakerState:
    row = (
        await session.execute(
            _READ,
            {"provider": provider, "model": model, "cooldown": config.cooldown_seconds},
        )
    ).first()
    if row is None:
        return BreakerState(CircuitState.CLOSED, 0, None, None)
    retry_in = float(row.retry_in) if row.retry_in is not None else None
    return BreakerState(row.state, row.failures, row.opened_at, retry_in)


async def admit(session: AsyncSession, provider: str, model: str, config: BreakerConfig) -> None:
    """Let the call through, or raise CircuitOpenError without touching the provider."""
    current = await read_state(session, provider, model, config)
    if current.state == CircuitState.CLOSED:
        return
    claimed = (
        await session.execute(
            _CLAIM_PROBE,
            {
                "provider": provider,
                "model": model,
                "cooldown": config.cooldown_seconds,
                "probe_timeout": config.probe_timeout_seconds,
            },
        )
    ).first()
    if claimed is None:
        raise CircuitOpenError(provider, model, current.retry_in_seconds)


async def record_success(session: AsyncSession, provider: str, model: str) -> None:
    await session.execute(_SUCCESS, {"provider": provider, "model": model})


async def record_failure(
    session: AsyncSession,
    provider: str,
    model: str,
    error_class: ErrorClass,
    config: BreakerConfig,
) -> str | None:
    """Count a failure that says the model is unwell; returns the breaker's new state."""
    if error_class not in COUNTED_FAILURES:
        return None
    row = (
        await session.execute(
            _FAILURE,
            {
                "provider": provider,
                "model": model,
                "threshold": config.failure_threshold,
                "window": config.window_seconds,
                "error_class": error_class.value,
            },
        )
    ).first()
    return str(row.state) if row else None
