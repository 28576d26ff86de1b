"""One LLM attempt with every guarantee, written once for two drivers.

* The **interactive driver** (``complete_chat``, activities/llm/activities.py) makes one attempt
  per activity; Temporal schedules the retries this module decides (``to_application_error``).
* The **page driver** (activities/batch/pages.py) makes many items' attempts inside one activity
  and applies the same decisions in-process: it sleeps the same backoff or Retry-After, bounded by
  the same deadline, and admits attempts in groups so each guarantee costs one statement per
  group instead of one transaction per call.

What lives here, shared: the attempt and its ledger row (one per attempt: ``in_flight`` before
the provider sees the request, completed after), the admission of a group of attempts in one
transaction (the tenant's budget reservation, the shared rate limits, the breaker), the provider
call with its timeouts and error classes, the usage and cost of a failed attempt, and the retry
decision. The drivers differ only in how many attempts they carry and who sleeps between them.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from opentelemetry.trace import Span
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.exceptions import ApplicationError

from activities.llm import circuit_breaker, rate_limits, retries
from activities.llm.budgets import (
    BudgetExceededError,
    blocking_budget,
    budget_states,
    estimated_usage,
    lock_budgets,
)
from activities.llm.errors import ClassifiedError, classify
from activities.llm.ledger import (
    IN_FLIGHT,
    SPEND_SHARDS,
    AttemptRecord,
)
from activities.llm.output_checks import check_output
from activities.llm.pricing import price_usd
from activities.llm.providers import (
    Completion,
    OnDelta,
    OnToolDelta,
    Provider,
    estimate_tokens,
    ignore_tool_delta,
)
from contracts.llm import (
    AttemptInput,
    BudgetState,
    CallClass,
    CallPolicy,
    ErrorClass,
    LedgerOutcome,
    LlmRequest,
    Usage,
)
from infra import metrics
from infra.input_limits import InputTooLarge, check_prompt_tokens
from infra.prompt_tokens import prompt_texts
from infra.settings import KeelSettings
from infra.tracing import end_llm_call_span


class ProviderSource(Protocol):
    """Where a driver gets a provider by name (the worker's configured clients)."""

    def get(self, name: str) -> Provider: ...


# --- Settings the attempt reads ------------------------------------------------------------------


def breaker_config(settings: KeelSettings) -> circuit_breaker.BreakerConfig:
    return circuit_breaker.BreakerConfig(
        failure_threshold=settings.breaker_failure_threshold,
        window_seconds=settings.breaker_window_seconds,
        cooldown_seconds=settings.breaker_cooldown_seconds,
        probe_timeout_seconds=settings.interactive_policy.start_to_close_seconds,
    )


def call_policy(request: LlmRequest, settings: KeelSettings) -> CallPolicy:
    if request.call_class == CallClass.BATCH:
        return settings.batch_policy
    return settings.interactive_policy


def rate_limit_max_wait(request: LlmRequest, settings: KeelSettings) -> float:
    """Waiting in the activity is cheap, but not past half the attempt's time limit."""
    policy = call_policy(request, settings)
    return min(settings.rate_limit_max_wait_seconds, policy.start_to_close_seconds / 2)


def rate_limit_charges(
    estimated: Usage, provider: str, model_name: str, settings: KeelSettings
) -> list[rate_limits.Charge]:
    if not settings.rate_limits:
        return []
    return rate_limits.charges_for(provider, model_name, estimated, settings)


def prompt_too_large(request: LlmRequest, settings: KeelSettings) -> ClassifiedError | None:
    try:
        check_prompt_tokens(
            prompt_texts(request.messages, request.parameters),
            settings.max_prompt_tokens,
            "the prompt",
        )
    except InputTooLarge as error:
        return ClassifiedError(ErrorClass.PROMPT_TOO_LARGE, str(error))
    return None


# --- The attempt ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptKey:
    """An attempt's identity in the ledger. The interactive driver's is its activity's; a page
    names each item's call ``<page activity id>/<line>`` and counts its attempts itself."""

    workflow_id: str
    run_id: str | None
    activity_id: str
    attempt: int


@dataclass
class Attempt:
    """One attempt: who is calling, what arrived so far, and how to write its row."""

    key: AttemptKey
    call: AttemptInput
    model_name: str
    prompt_hash: str
    started: float = field(default_factory=time.perf_counter)
    completion: Completion = field(default_factory=Completion)
    span: Span | None = None
    # Set aside against the tenant's budgets while the call runs (None: no budget applies).
    reserved_usd: Decimal | None = None
    # The shared rate limits this call was charged to (tokens at worst case, refunded after).
    charges: list[rate_limits.Charge] = field(default_factory=list)
    _estimated: Usage | None = field(default=None, repr=False)

    @property
    def estimated_usage(self) -> Usage:
        """The most the attempt can use (counted once: its budget reservation and its
        rate-limit charge both start from it)."""
        if self._estimated is None:
            self._estimated = estimated_usage(self.call.request)
        return self._estimated

    @property
    def latency_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def rate_limit_waited(self, seconds: float) -> None:
        """The attempt waited ``seconds`` for its rate-limit slot (either driver, after its
        wait): counted per limiter scope, and its latency starts now (it is the provider's,
        not the queue's)."""
        for scope in sorted({charge.scope for charge in self.charges}):
            metrics.RATE_LIMIT_WAIT.labels(scope).observe(seconds)
        self.started = time.perf_counter()

    def ledger_row(
        self,
        outcome: str,
        usage: Usage,
        cost_usd: Decimal | None = None,
        failure: ClassifiedError | None = None,
    ) -> AttemptRecord:
        key, call = self.key, self.call
        return AttemptRecord(
            workflow_id=key.workflow_id,
            run_id=key.run_id,
            activity_id=key.activity_id,
            attempt=key.attempt,
            tenant=call.request.tenant,
            route=call.route,
            provider=call.provider,
            model=call.model,
            prompt_hash=self.prompt_hash,
            usage=usage,
            cost_usd=cost_usd,
            latency_ms=self.latency_ms,
            first_token_ms=self.completion.first_token_ms,
            streamed=True,
            outcome=outcome,
            error_class=failure.error_class.value if failure else None,
            error_message=failure.message if failure else None,
            reserved_usd=self.reserved_usd,
            finished_at=datetime.now(UTC),
        )

    def observe(
        self,
        outcome: str,
        usage: Usage,
        cost_usd: Decimal | None = None,
        failure: ClassifiedError | None = None,
        timed: bool = True,
    ) -> None:
        """Count the finished attempt in the worker's metrics and on its trace span (the first
        attempt on a model the chain fell back to counts the fallback)."""
        call, first_token_ms = self.call, self.completion.first_token_ms
        if call.fallback_from and self.key.attempt == 1:
            metrics.LLM_FALLBACKS.labels(call.fallback_from, call.model).inc()
        metrics.record_llm_attempt(
            metrics.AttemptMetrics(
                provider=call.provider,
                model=call.model,
                tenant=call.request.tenant,
                outcome=outcome,
                attempt=self.key.attempt,
                error_class=failure.error_class.value if failure else None,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_tokens=usage.cached_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=cost_usd,
                duration_seconds=(time.perf_counter() - self.started) if timed else None,
                first_token_seconds=first_token_ms / 1000 if first_token_ms is not None else None,
                route=call.route,
                chain=call.chain,
                call_class=call.request.call_class.value,
            )
        )
        if self.span is not None:
            end_llm_call_span(
                self.span,
                {
                    "keel.outcome": outcome,
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                    "keel.usage.cached_tokens": usage.cached_tokens,
                    "keel.cost_usd": float(cost_usd) if cost_usd is not None else None,
                    "keel.reserved_usd": float(self.reserved_usd)
                    if self.reserved_usd is not None
                    else None,
                    "keel.error_class": failure.error_class.value if failure else None,
                    "gen_ai.response.finish_reasons": [self.completion.finish_reason]
                    if self.completion.finish_reason
                    else None,
                },
                failure.message if failure else None,
            )


# --- After the attempt ---------------------------------------------------------------------------

# An attempt that finished: how much it used, and its failure (None: answered).
Finished = tuple[Attempt, Usage, ClassifiedError | None]
# A breaker that changed state: (provider, model, new state).
BreakerChange = tuple[str, str, str]


async def settle(
    session: AsyncSession, finished: list[Finished], config: circuit_breaker.BreakerConfig
) -> list[BreakerChange]:
    """What finished attempts leave behind besides their ledger rows, in the caller's transaction
    and in admission's lock order (limiter rows before breaker rows: no lock cycle): the tokens
    they were charged and did not use go back to the rate limits, and each model's breaker hears
    how its calls went (one success per model, every failure). Both drivers call it; the
    breakers that changed state go to ``observe_breakers`` once the transaction commits."""
    for attempt, usage, _ in finished:
        await rate_limits.refund_unused(session, attempt.charges, usage)
    answered = {(a.call.provider, a.call.model) for a, _, failure in finished if failure is None}
    for provider, model in sorted(answered):
        await circuit_breaker.record_success(session, provider, model)
    changed: list[BreakerChange] = []
    for attempt, _, failure in finished:
        if failure is None:
            continue
        call = attempt.call
        state = await circuit_breaker.record_failure(
            session, call.provider, call.model, failure.error_class, config
        )
        if state is not None:
            changed.append((call.provider, call.model, state))
    return changed


def observe_breakers(changed: list[BreakerChange]) -> None:
    for provider, model, state in changed:
        metrics.record_breaker_state(provider, model, state)


# --- Usage and cost ------------------------------------------------------------------------------


def estimated_usage_of(request: LlmRequest, completion: Completion) -> Usage:
    """Billed tokens for a call whose usage report never arrived (the stream broke first)."""
    prompt = "".join(m.counted_text() for m in request.messages)
    return Usage(
        input_tokens=estimate_tokens(prompt),
        output_tokens=estimate_tokens(completion.output_text),
    )


def answered_usage(request: LlmRequest, completion: Completion) -> Usage:
    """The tokens a successful attempt is billed for."""
    if completion.usage_reported:
        return completion.usage
    return estimated_usage_of(request, completion)


def failed_usage(request: LlmRequest, completion: Completion) -> Usage:
    """What a failed attempt is billed for: what the provider reported, or generated text."""
    if completion.usage_reported:
        return completion.usage
    if completion.output_text:
        return estimated_usage_of(request, completion)
    return Usage()  # nothing generated, nothing billed


def failed_cost(provider: str, model_name: str, usage: Usage) -> Decimal | None:
    return price_usd(provider, model_name, usage) if usage.output_tokens else None


# --- The provider call ---------------------------------------------------------------------------


async def call_provider(
    providers: ProviderSource,
    attempt: Attempt,
    policy: CallPolicy,
    on_delta: OnDelta,
    on_tool_delta: OnToolDelta = ignore_tool_delta,
    *,
    streamed: bool = True,
) -> ClassifiedError | None:
    """Stream the attempt's answer into ``attempt.completion``; None on success, else the
    failure, classified (every provider failure is, none escapes raw). The per-read timeout is
    the heartbeat interval: no byte for that long means the stream stalled. An answer that does
    not match the requested JSON schema or tool parameters is a failure too (billed like any
    failed attempt, then retried).

    ``streamed=False`` (a batch page: nobody watches an item's tokens): a provider that can
    answers in one response, bounded by the attempt's start-to-close (no bytes arrive until
    the answer is whole); the page's own heartbeat keeps the worker's liveness signal."""
    call = attempt.call
    try:
        provider = providers.get(call.provider)
        whole = not streamed and provider.whole_answers
        async with asyncio.timeout(policy.start_to_close_seconds):
            await provider.complete(
                attempt.model_name,
                call.request.messages,
                call.request.parameters,
                policy.start_to_close_seconds if whole else policy.heartbeat_seconds,
                on_delta,
                attempt.completion,
                on_tool_delta,
                streamed=not whole,
            )
    except LookupError as error:
        return ClassifiedError(ErrorClass.AUTHENTICATION, str(error))
    except Exception as error:
        return classify(error, stream_started=attempt.completion.first_token_ms is not None)
    return check_output(call.request.parameters, attempt.completion)


# --- Retries -------------------------------------------------------------------------------------


def retry_decision(
    failure: ClassifiedError,
    prior: retries.PriorAttempts,
    policy: CallPolicy,
    now: datetime,
    deadline: datetime | None,
) -> retries.RetryDecision:
    return retries.decide(failure.error_class, failure.retry_after, prior, policy, now, deadline)


def failure_message(failure: ClassifiedError, model: str, decision: retries.RetryDecision) -> str:
    message = f"{model}: {failure.error_class.value}: {failure.message}"
    if failure.retryable and not decision.retry:
        message += f" (not retried: {decision.reason})"
    return message


def to_application_error(
    failure: ClassifiedError, model: str, decision: retries.RetryDecision
) -> ApplicationError:
    """The failure as Temporal sees it: whether it is retried, and after how long, is decided
    by ``retries.decide`` (Temporal's own attempt count is unlimited; the deadline bounds it)."""
    return ApplicationError(
        failure_message(failure, model, decision),
        {"error_class": failure.error_class.value, "status_code": failure.status_code},
        type=failure.error_class.error_type,
        non_retryable=not decision.retry,
        next_retry_delay=decision.delay,
    )


def after_failure(prior: retries.PriorAttempts, failure: ClassifiedError) -> retries.PriorAttempts:
    """The attempts a page's item has behind it after one more failed (what the interactive
    driver reads back from the ledger on its next attempt)."""
    return retries.PriorAttempts(
        attempts=prior.attempts + 1,
        rate_limited=prior.rate_limited + (failure.error_class == ErrorClass.RATE_LIMITED),
        last_error_class=failure.error_class,
    )


# --- Admission: budget, rate limits, breaker and the in-flight rows, one transaction -------------


@dataclass
class Refusal:
    """Why an attempt was refused before its provider saw it (its ledger row says so too)."""

    failure: ClassifiedError
    outcome: str
    # The budget that refused it (a budget refusal is the caller's policy's to handle).
    budget: BudgetState | None = None


@dataclass
class Admission:
    # Seconds to wait for the shared rate limit's slot before calling (admitted attempts).
    wait_seconds: float = 0.0
    refusal: Refusal | None = None


# Breaker states a page keeps for a few seconds: (provider, model) -> state.
BreakerView = dict[tuple[str, str], circuit_breaker.BreakerState]


async def admit(
    session: AsyncSession,
    attempts: list[Attempt],
    settings: KeelSettings,
    config: circuit_breaker.BreakerConfig,
    breakers: BreakerView | None = None,
    on_budget_lock: Callable[[], None] | None = None,
) -> list[Admission]:
    """Admit ``attempts`` (one tenant) in the caller's transaction, in order, and write a ledger
    row for each: ``in_flight`` with its reservation for those admitted (committed with the
    transaction, before any provider sees a request), the refusal for the others.

    1. **Budget**: the tenant's budget rows are locked once and read once; attempts are admitted
       while the sum of their worst-case costs fits, each reserving its own (the next check of
       any worker sees the reservations once this transaction commits).
    2. **Rate limits**: the admitted attempts' charges are taken together, all or nothing; a
       group that finds no slot in time is throttled (its Retry-After is the next slot).
    3. **Breaker**: a closed breaker in ``breakers`` (a page's view, a few seconds old) admits
       without a statement; otherwise the shared row is asked, and may grant one probe.
    """
    results = [Admission() for _ in attempts]
    pending = list(range(len(attempts)))
    if not attempts:
        return results
    tenant = attempts[0].call.request.tenant
    pending = await _reserve(session, attempts, results, pending, tenant, settings)
    pending = await _take_rate_limits(session, attempts, results, pending, settings)
    for index in list(pending):
        attempt = attempts[index]
        state = (breakers or {}).get((attempt.call.provider, attempt.call.model))
        if state is not None and state.state == "closed":
            continue
        try:
            await circuit_breaker.admit(session, attempt.call.provider, attempt.call.model, config)
        except circuit_breaker.CircuitOpenError as error:
            results[index].refusal = Refusal(
                ClassifiedError(ErrorClass.CIRCUIT_OPEN, str(error)),
                LedgerOutcome.SHORT_CIRCUITED.value,
            )
            pending.remove(index)
    refused_rows, started_rows = [], []
    for index, attempt in enumerate(attempts):
        refusal = results[index].refusal
        if refusal is not None:
            attempt.reserved_usd = None
            refused_rows.append(attempt.ledger_row(refusal.outcome, Usage(), None, refusal.failure))
        else:
            started_rows.append(attempt.ledger_row(IN_FLIGHT, Usage()))
    await write_started(session, started_rows)
    await write_completed(session, refused_rows)
    return results


async def _reserve(
    session: AsyncSession,
    attempts: list[Attempt],
    results: list[Admission],
    pending: list[int],
    tenant: str,
    settings: KeelSettings,
) -> list[int]:
    if not await lock_budgets(session, tenant):
        return pending
    # A fresh statement after the lock: it sees every reservation committed before it.
    states = await budget_states(session, tenant, settings)
    admitted: list[int] = []
    taken = Decimal(0)
    for index in pending:
        attempt = attempts[index]
        call = attempt.call
        worst_case = price_usd(call.provider, attempt.model_name, attempt.estimated_usage)
        needed = worst_case if worst_case is not None else Decimal(0)
        view = [
            state.model_copy(update={"reserved_usd": state.reserved_usd + taken})
            for state in states
        ]
        blocking = blocking_budget(view, worst_case)
        if blocking is not None:
            error = BudgetExceededError(blocking, worst_case, call.model)
            metrics.BUDGET_REFUSALS.labels(blocking.tenant, blocking.period).inc()
            results[index].refusal = Refusal(
                ClassifiedError(ErrorClass.BUDGET_EXCEEDED, str(error)),
                LedgerOutcome.BUDGET_REFUSED.value,
                blocking,
            )
            continue
        taken += needed
        attempt.reserved_usd = needed
        admitted.append(index)
    return admitted


async def _take_rate_limits(
    session: AsyncSession,
    attempts: list[Attempt],
    results: list[Admission],
    pending: list[int],
    settings: KeelSettings,
) -> list[int]:
    """Charge the admitted attempts to the shared limits, each in full. The group's charges are
    taken together (one statement per limiter); a group that does not fit as a whole is taken
    one attempt at a time, in order, so the first ones go and the rest are throttled. An
    attempt no bucket could ever admit is refused on its own, not retried."""
    if not settings.rate_limits or not pending:
        return pending
    max_wait = rate_limit_max_wait(attempts[pending[0]].call.request, settings)
    fitting: list[int] = []
    for index in pending:
        attempt = attempts[index]
        attempt.charges = rate_limit_charges(
            attempt.estimated_usage, attempt.call.provider, attempt.model_name, settings
        )
        too_large = next((c for c in attempt.charges if not c.fits(max_wait)), None)
        if too_large is None:
            fitting.append(index)
            continue
        attempt.charges = []
        results[index].refusal = Refusal(
            ClassifiedError(
                ErrorClass.BAD_REQUEST, str(rate_limits.ChargeTooLargeError(too_large, max_wait))
            ),
            LedgerOutcome.THROTTLED.value,
        )
    if not fitting:
        return []
    try:
        wait = await rate_limits.acquire(
            session, _combined(attempts[index].charges for index in fitting), max_wait
        )
    except (rate_limits.RateLimitedError, rate_limits.ChargeTooLargeError) as error:
        if len(fitting) == 1 and isinstance(error, rate_limits.RateLimitedError):
            _throttle(attempts, results, fitting, error)
            return []
        return await _take_one_by_one(session, attempts, results, fitting, max_wait)
    for index in fitting:
        results[index].wait_seconds = wait
    return fitting


async def _take_one_by_one(
    session: AsyncSession,
    attempts: list[Attempt],
    results: list[Admission],
    pending: list[int],
    max_wait: float,
) -> list[int]:
    """The group's attempts charged in order until one finds no slot; it and the rest wait
    for theirs (FIFO: a later attempt never overtakes an earlier one)."""
    for position, index in enumerate(pending):
        try:
            results[index].wait_seconds = await rate_limits.acquire(
                session, attempts[index].charges, max_wait
            )
        except rate_limits.RateLimitedError as error:
            _throttle(attempts, results, pending[position:], error)
            return pending[:position]
    return pending


def _throttle(
    attempts: list[Attempt],
    results: list[Admission],
    indexes: list[int],
    error: rate_limits.RateLimitedError,
) -> None:
    metrics.RATE_LIMIT_DEFERRED.labels(error.charge.scope, error.charge.unit).inc()
    for index in indexes:
        attempts[index].charges = []
        results[index].refusal = Refusal(
            ClassifiedError(
                ErrorClass.RATE_LIMITED,
                str(error),
                retry_after=timedelta(seconds=max(error.retry_in_seconds, 0.1)),
            ),
            LedgerOutcome.THROTTLED.value,
        )


def _combined(charge_lists: Any) -> list[rate_limits.Charge]:
    """Many calls' charges as one per limiter (a group takes its slots in one statement)."""
    totals: dict[tuple[str, str], rate_limits.Charge] = {}
    for charges in charge_lists:
        for charge in charges:
            key = (charge.scope, charge.unit)
            seen = totals.get(key)
            totals[key] = (
                charge
                if seen is None
                else rate_limits.Charge(
                    charge.scope,
                    charge.unit,
                    seen.amount + charge.amount,
                    charge.per_minute,
                    charge.burst_seconds,
                )
            )
    return sorted(totals.values(), key=lambda c: (c.scope, c.unit))


# --- Ledger rows in bulk -------------------------------------------------------------------------

_COLUMNS = (
    "workflow_id text, run_id text, activity_id text, attempt int, tenant text, route text, "
    "provider text, model text, prompt_hash text, input_tokens int, output_tokens int, "
    "cached_tokens int, reasoning_tokens int, cost_usd numeric, latency_ms int, "
    "first_token_ms int, streamed boolean, outcome text, error_class text, error_message text, "
    "reserved_usd numeric, created_at timestamptz"
)
_NAMES = ", ".join(column.split()[0] for column in _COLUMNS.split(", "))
_KEY = {"workflow_id", "run_id", "activity_id", "attempt"}
# In-flight rows take the database's now(): their age bounds their budget reservation.
_STARTED_NAMES = _NAMES.removesuffix(", created_at")
_UPDATES = ", ".join(f"{name} = EXCLUDED.{name}" for name in _NAMES.split(", ") if name not in _KEY)

_WRITE_STARTED = text(
    f"""
    INSERT INTO llm_calls ({_STARTED_NAMES})
    SELECT {_STARTED_NAMES} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({_COLUMNS})
    ON CONFLICT (workflow_id, run_id, activity_id, attempt) DO NOTHING
    """
)

# Complete in-flight rows (or insert rows that never were in flight) and meter their cost into
# the tenant's spend of the day in the same statement, as ledger.record_attempt does for one: a
# row that already left in_flight is not touched again, so a replayed flush counts nothing twice.
_WRITE_COMPLETED = text(
    f"""
    WITH completed AS (
        INSERT INTO llm_calls AS c ({_NAMES})
        SELECT {_NAMES} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({_COLUMNS})
        ON CONFLICT (workflow_id, run_id, activity_id, attempt) DO UPDATE
           SET {_UPDATES}
         WHERE c.outcome = 'in_flight'
        RETURNING c.tenant, c.cost_usd, c.created_at
    )
    INSERT INTO tenant_daily_spend AS s (tenant, day, shard, spent_usd, calls)
    SELECT tenant, (timezone('UTC', created_at))::date, :shard, SUM(cost_usd), COUNT(*)
      FROM completed WHERE cost_usd > 0
     GROUP BY tenant, (timezone('UTC', created_at))::date
    ON CONFLICT (tenant, day, shard) DO UPDATE
       SET spent_usd = s.spent_usd + EXCLUDED.spent_usd, calls = s.calls + EXCLUDED.calls,
           updated_at = now()
    """
)


def _row(record: AttemptRecord) -> dict[str, object]:
    usage = record.usage
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
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": str(record.cost_usd) if record.cost_usd is not None else None,
        "latency_ms": record.latency_ms,
        "first_token_ms": record.first_token_ms,
        "streamed": record.streamed,
        "outcome": record.outcome,
        "error_class": record.error_class,
        "error_message": record.error_message,
        "reserved_usd": str(record.reserved_usd) if record.reserved_usd is not None else None,
        # created_at is when the attempt finished, as for rows written one at a time.
        "created_at": (record.finished_at or datetime.now(UTC)).isoformat(),
    }


async def write_started(session: AsyncSession, records: list[AttemptRecord]) -> None:
    """Many ``in_flight`` rows in one statement."""
    if records:
        await session.execute(_WRITE_STARTED, {"rows": json.dumps([_row(r) for r in records])})


async def write_completed(
    session: AsyncSession, records: list[AttemptRecord], shard_key: str = ""
) -> None:
    """Complete many rows in one statement, metering their cost (one spend shard per write:
    concurrent writers of one tenant spread over the shards by ``shard_key``)."""
    if records:
        shard = zlib.crc32(
            (shard_key or f"{records[0].workflow_id}/{records[0].activity_id}").encode()
        )
        await session.execute(
            _WRITE_COMPLETED,
            {"rows": json.dumps([_row(r) for r in records]), "shard": shard % SPEND_SHARDS},
        )
