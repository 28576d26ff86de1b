"""The LLM activities: plan a route (local activity) and make one model's attempt (activity).

Every attempt, success or failure, writes exactly one ledger row; errors leave here classified,
as ApplicationErrors whose type names the class and whose retryability Temporal obeys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from opentelemetry.trace import Span
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.llm import circuit_breaker, rate_limits, response_cache, retries
from activities.llm.budgets import (
    BudgetExceededError,
    Estimate,
    blocking_budget,
    budget_states,
    estimate_cost,
    estimated_usage,
    reserve,
)
from activities.llm.errors import ClassifiedError, classify
from activities.llm.ledger import (
    IN_FLIGHT,
    AttemptRecord,
    earlier_attempts,
    mark_interrupted,
    record_attempt,
    record_attempt_started,
)
from activities.llm.pricing import price_usd
from activities.llm.providers import (
    Completion,
    ProviderClients,
    estimate_tokens,
    provider_for_model,
)
from activities.llm.routing import (
    RouteChoice,
    UnknownRouteError,
    budget_is_low,
    choose_route,
    route_policy,
)
from activities.llm.streaming import open_attempt_stream
from contracts.llm import (
    AttemptInput,
    BudgetState,
    CallClass,
    CallPolicy,
    ErrorClass,
    LlmAnswer,
    LlmRequest,
    ModelCandidate,
    RoutePlan,
    Usage,
)
from contracts.traffic import BudgetPolicy
from infra import metrics
from infra.input_limits import InputTooLarge, check_prompt_tokens
from infra.settings import KeelSettings
from infra.tracing import end_llm_call_span, llm_call_span

log = structlog.get_logger(__name__)


def breaker_config(settings: KeelSettings) -> circuit_breaker.BreakerConfig:
    return circuit_breaker.BreakerConfig(
        failure_threshold=settings.breaker_failure_threshold,
        window_seconds=settings.breaker_window_seconds,
        cooldown_seconds=settings.breaker_cooldown_seconds,
        probe_timeout_seconds=settings.interactive_policy.start_to_close_seconds,
    )


def budget_policy_of(request: LlmRequest, settings: KeelSettings) -> BudgetPolicy:
    if request.budget_policy is not None:
        return request.budget_policy
    if request.call_class == CallClass.BATCH:
        return settings.batch_budget_policy
    return settings.interactive_budget_policy


def _budget_refusal(
    budgets: list[BudgetState], candidates: list[ModelCandidate], request: LlmRequest
) -> BudgetExceededError | None:
    """Why the budget cannot cover the first model the chain would really call, if it can't."""
    first = next((c for c in candidates if not c.breaker_open), None)
    if not budgets or first is None:
        return None
    _, model_name = provider_for_model(first.model)
    estimate = estimate_cost(first.provider, model_name, request)
    blocking = blocking_budget(budgets, estimate)
    return BudgetExceededError(blocking, estimate, first.model) if blocking else None


async def _candidates(
    session: AsyncSession, models: list[str], config: circuit_breaker.BreakerConfig
) -> list[ModelCandidate]:
    candidates: list[ModelCandidate] = []
    for model in models:
        provider, _ = provider_for_model(model)
        state = await circuit_breaker.read_state(session, provider, model, config)
        candidates.append(
            ModelCandidate(
                model=model,
                provider=provider,
                breaker_open=state.state == "open" and (state.retry_in_seconds or 0) > 0,
                breaker_retry_in_seconds=state.retry_in_seconds,
            )
        )
    return candidates


@dataclass
class _Attempt:
    """One attempt in flight: who is calling, what arrived so far, and how to write its row."""

    call: AttemptInput
    prompt_hash: str
    started: float
    completion: Completion
    span: Span | None = None
    # Set aside against the tenant's budgets while the call runs (None: no budget applies).
    reserved_usd: Decimal | None = None
    # The shared rate limits this call was charged to (tokens at worst case, refunded after).
    charges: list[rate_limits.Charge] = field(default_factory=list)

    @property
    def latency_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def observe(
        self,
        outcome: str,
        usage: Usage,
        cost_usd: Decimal | None = None,
        failure: ClassifiedError | None = None,
        timed: bool = True,
    ) -> None:
        """Count the finished attempt in the worker's metrics and on its trace span."""
        call, first_token_ms = self.call, self.completion.first_token_ms
        metrics.record_llm_attempt(
            metrics.AttemptMetrics(
                provider=call.provider,
                model=call.model,
                tenant=call.request.tenant,
                outcome=outcome,
                attempt=activity.info().attempt,
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

    def ledger_row(
        self,
        outcome: str,
        usage: Usage,
        cost_usd: Decimal | None = None,
        failure: ClassifiedError | None = None,
    ) -> AttemptRecord:
        info = activity.info()
        return AttemptRecord(
            workflow_id=info.workflow_id or "",
            run_id=info.workflow_run_id,
            activity_id=info.activity_id,
            attempt=info.attempt,
            tenant=self.call.request.tenant,
            route=self.call.route,
            provider=self.call.provider,
            model=self.call.model,
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
        )


@dataclass(frozen=True)
class _RetryBudget:
    """What decides whether this attempt's failure is retried (activities/llm/retries.py)."""

    policy: CallPolicy
    prior: retries.PriorAttempts
    deadline: datetime | None


def call_policy(request: LlmRequest, settings: KeelSettings) -> CallPolicy:
    if request.call_class == CallClass.BATCH:
        return settings.batch_policy
    return settings.interactive_policy


async def _retry_budget(
    call: AttemptInput, settings: KeelSettings, sessions: async_sessionmaker[AsyncSession]
) -> _RetryBudget:
    info = activity.info()
    prior = retries.PriorAttempts()
    if info.attempt > 1:  # the first attempt has nothing to read
        async with sessions() as session:
            rows = await earlier_attempts(
                session,
                info.workflow_id or "",
                info.workflow_run_id,
                info.activity_id,
                info.attempt,
            )
        prior = retries.PriorAttempts.from_ledger(info.attempt, rows)
    return _RetryBudget(
        call_policy(call.request, settings),
        prior,
        retries.call_deadline(info.scheduled_time, info.schedule_to_close_timeout),
    )


async def _error_budget_spent(
    retry: _RetryBudget, model: str, sessions: async_sessionmaker[AsyncSession]
) -> ApplicationError:
    """The previous attempt timed out (or its worker died) as the last the error budget allowed,
    and Temporal, bounded only by the deadline, started this one anyway: close the earlier
    attempts' rows and end the model's turn without asking it again."""
    info = activity.info()
    async with sessions.begin() as session:
        await mark_interrupted(
            session, info.workflow_id or "", info.workflow_run_id, info.activity_id, info.attempt
        )
    last = retry.prior.last_error_class or ErrorClass.TIMEOUT
    return ApplicationError(
        f"{model}: {last.value}: {retry.prior.errors(retry.deadline is None)} failed attempts, "
        "the most the policy allows",
        {"error_class": last.value, "status_code": None},
        type=last.error_type,
        non_retryable=True,
    )


def _to_application_error(
    failure: ClassifiedError, model: str, budget: _RetryBudget
) -> ApplicationError:
    """The failure as Temporal sees it: whether it is retried, and after how long, is decided
    here (Temporal's own attempt count is unlimited; the deadline bounds it)."""
    decision = retries.decide(
        failure.error_class,
        failure.retry_after,
        budget.prior,
        budget.policy,
        datetime.now(UTC),
        budget.deadline,
    )
    message = f"{model}: {failure.error_class.value}: {failure.message}"
    if failure.retryable and not decision.retry:
        message += f" (not retried: {decision.reason})"
    return ApplicationError(
        message,
        {"error_class": failure.error_class.value, "status_code": failure.status_code},
        type=failure.error_class.error_type,
        non_retryable=not decision.retry,
        next_retry_delay=decision.delay,
    )


def _refusal_error(
    failure: ClassifiedError, model: str, budget: BudgetState | None, retry: _RetryBudget
) -> Exception:
    if budget is None:
        return _to_application_error(failure, model, retry)
    # The caller's budget policy decides what happens next (workflows/llm_calls.py); the
    # message names the budget and the command that raises it.
    return ApplicationError(
        failure.message,
        budget.model_dump(mode="json"),
        type=ErrorClass.BUDGET_EXCEEDED.error_type,
        non_retryable=True,
    )


async def _reserve_budget(
    session: AsyncSession, attempt: _Attempt, model_name: str, settings: KeelSettings
) -> Decimal | None:
    """Check the tenant's budgets (raises BudgetExceededError); returns the amount to reserve
    on the in-flight row, or None when the tenant has no budget."""
    call = attempt.call
    estimate = Estimate(lambda: estimate_cost(call.provider, model_name, call.request))
    states = await reserve(session, call.request.tenant, estimate, call.model, settings)
    if not states:
        return None
    return estimate.value if estimate.value is not None else Decimal(0)


def _rate_limit_charges(
    request: LlmRequest, provider: str, model_name: str, settings: KeelSettings
) -> list[rate_limits.Charge]:
    if not settings.rate_limits:
        return []
    return rate_limits.charges_for(provider, model_name, estimated_usage(request), settings)


def _rate_limit_max_wait(request: LlmRequest, settings: KeelSettings) -> float:
    """Waiting in the activity is cheap, but not past half the attempt's time limit."""
    policy = call_policy(request, settings)
    return min(settings.rate_limit_max_wait_seconds, policy.start_to_close_seconds / 2)


async def _wait_for_rate_limit(wait_seconds: float, charges: list[rate_limits.Charge]) -> None:
    """Sleep until the call's slot comes up, heartbeating so the wait is not taken for a hang."""
    deadline = time.monotonic() + wait_seconds
    while (left := deadline - time.monotonic()) > 0:
        activity.heartbeat()
        await asyncio.sleep(min(left, 1.0))
    for scope in {charge.scope for charge in charges}:
        metrics.RATE_LIMIT_WAIT.labels(scope).observe(wait_seconds)


async def _complete_chat(
    call: AttemptInput,
    span: Span,
    settings: KeelSettings,
    sessions: async_sessionmaker[AsyncSession],
    providers: ProviderClients,
) -> LlmAnswer:
    info = activity.info()
    request, model, provider_name = call.request, call.model, call.provider
    _, model_name = provider_for_model(model)
    prompt_hash = request.prompt_hash(model)
    config = breaker_config(settings)
    attempt = _Attempt(call, prompt_hash, time.perf_counter(), Completion(), span)
    retry = await _retry_budget(call, settings, sessions)
    if retries.error_budget_spent(retry.prior, retry.policy, retry.deadline):
        raise await _error_budget_spent(retry, model, sessions)
    too_large = _prompt_too_large(request, settings)
    if too_large is not None:
        # The last line of defence (every entry point checks first): nothing is reserved or
        # sent, one ledger row says why, and no retry or other model can change the answer.
        async with sessions.begin() as session:
            await record_attempt(
                session, attempt.ledger_row("prompt_too_large", Usage(), None, too_large)
            )
        attempt.observe("prompt_too_large", Usage(), None, too_large, timed=False)
        raise _to_application_error(too_large, model, retry)
    wait_seconds = 0.0
    async with sessions.begin() as session:
        if response_cache.cacheable(request):
            hit = await response_cache.lookup(session, prompt_hash)
            if hit is not None:
                usage = Usage(input_tokens=hit.input_tokens, output_tokens=hit.output_tokens)
                await record_attempt(session, attempt.ledger_row("cached", usage, Decimal(0)))
                attempt.observe("cached", usage, Decimal(0), timed=False)
                return LlmAnswer(
                    text=hit.text,
                    model=model,
                    provider=provider_name,
                    usage=usage,
                    cost_usd=None if price_usd(provider_name, model_name, usage) is None else 0,
                    finish_reason=hit.finish_reason,
                    cached=True,
                    attempts=info.attempt,
                    latency_ms=attempt.latency_ms,
                )
        # Budget, rate limits and breaker, in one transaction with the in-flight row: the
        # reservation is visible to the next check the moment the budget lock is released.
        refused: ClassifiedError | None = None
        refused_outcome, refused_budget = "", None
        try:
            attempt.reserved_usd = await _reserve_budget(session, attempt, model_name, settings)
            attempt.charges = _rate_limit_charges(request, provider_name, model_name, settings)
            wait_seconds = await rate_limits.acquire(
                session, attempt.charges, _rate_limit_max_wait(request, settings)
            )
            await circuit_breaker.admit(session, provider_name, model, config)
        except BudgetExceededError as error:
            refused = ClassifiedError(ErrorClass.BUDGET_EXCEEDED, str(error))
            refused_outcome, refused_budget = "budget_refused", error.blocking
            metrics.BUDGET_REFUSALS.labels(error.blocking.tenant, error.blocking.period).inc()
        except rate_limits.RateLimitedError as error:
            refused = ClassifiedError(
                ErrorClass.RATE_LIMITED,
                str(error),
                retry_after=timedelta(seconds=max(error.retry_in_seconds, 0.1)),
            )
            refused_outcome = "throttled"
            metrics.RATE_LIMIT_DEFERRED.labels(error.charge.scope, error.charge.unit).inc()
        except circuit_breaker.CircuitOpenError as error:
            refused = ClassifiedError(ErrorClass.CIRCUIT_OPEN, str(error))
            refused_outcome = "short_circuited"
        if refused is not None:
            attempt.reserved_usd = None
            await record_attempt(
                session, attempt.ledger_row(refused_outcome, Usage(), None, refused)
            )
        else:  # committed before the provider sees the request (see ledger.py)
            await record_attempt_started(session, attempt.ledger_row(IN_FLIGHT, Usage()))
    if refused is not None:  # raised after the commit, so the ledger keeps the refusal
        attempt.observe(refused_outcome, Usage(), None, refused, timed=False)
        if refused.error_class == ErrorClass.CIRCUIT_OPEN:
            raise ApplicationError(
                refused.message, type=ErrorClass.CIRCUIT_OPEN.error_type, non_retryable=True
            )
        raise _refusal_error(refused, model, refused_budget, retry)
    if wait_seconds > 0:
        await _wait_for_rate_limit(wait_seconds, attempt.charges)
        attempt.started = time.perf_counter()  # latency is the provider's, not the queue's

    stream = open_attempt_stream(request.stream_key, model)

    async def on_delta(delta: str) -> None:
        # Progress is the liveness signal: a stream that stalls stops heartbeating and the
        # heartbeat timeout, not the much longer start-to-close, ends the attempt.
        activity.heartbeat()
        stream.delta(delta)

    policy = retry.policy
    try:
        provider = providers.get(provider_name)
        async with stream, asyncio.timeout(policy.start_to_close_seconds):
            await provider.complete(
                model_name,
                request.messages,
                request.parameters,
                # Per-read timeout: no byte for a heartbeat interval means the stream stalled.
                policy.heartbeat_seconds,
                on_delta,
                attempt.completion,
            )
    except LookupError as error:
        failure = ClassifiedError(ErrorClass.AUTHENTICATION, str(error))
        await _record_failure(attempt, failure, config, sessions)
        raise _to_application_error(failure, model, retry) from error
    except Exception as error:  # every provider failure is classified, none escapes raw
        failure = classify(error, stream_started=attempt.completion.first_token_ms is not None)
        await _record_failure(attempt, failure, config, sessions)
        raise _to_application_error(failure, model, retry) from error

    completion = attempt.completion
    usage = completion.usage if completion.usage_reported else _estimated_usage(request, completion)
    cost = price_usd(provider_name, model_name, usage)
    async with sessions.begin() as session:
        await record_attempt(session, attempt.ledger_row("ok", usage, cost))
        # Limiter rows before breaker rows, as in the admission transaction: no lock cycle.
        await rate_limits.refund_unused(session, attempt.charges, usage)
        await circuit_breaker.record_success(session, provider_name, model)
        if response_cache.cacheable(request):
            await response_cache.store(
                session,
                prompt_hash,
                provider_name,
                model,
                completion.text,
                completion.finish_reason,
                usage.input_tokens,
                usage.output_tokens,
            )
    attempt.observe("ok", usage, cost)
    log.info(
        "llm.call_succeeded",
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=str(cost) if cost is not None else None,
        latency_ms=attempt.latency_ms,
    )
    return LlmAnswer(
        text=completion.text,
        model=model,
        provider=provider_name,
        usage=usage,
        cost_usd=cost,
        finish_reason=completion.finish_reason,
        attempts=info.attempt,
        latency_ms=attempt.latency_ms,
    )


def _prompt_too_large(request: LlmRequest, settings: KeelSettings) -> ClassifiedError | None:
    try:
        check_prompt_tokens(
            [m.content for m in request.messages], settings.max_prompt_tokens, "the prompt"
        )
    except InputTooLarge as error:
        return ClassifiedError(ErrorClass.PROMPT_TOO_LARGE, str(error))
    return None


def _estimated_usage(request: LlmRequest, completion: Completion) -> Usage:
    """Billed tokens for a call whose usage report never arrived (the stream broke first)."""
    prompt = "".join(m.content for m in request.messages)
    return Usage(
        input_tokens=estimate_tokens(prompt),
        output_tokens=estimate_tokens(completion.text),
    )


async def _record_failure(
    attempt: _Attempt,
    failure: ClassifiedError,
    config: circuit_breaker.BreakerConfig,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    call, completion = attempt.call, attempt.completion
    if completion.usage_reported:
        usage = completion.usage
    elif completion.text:
        usage = _estimated_usage(call.request, completion)
    else:
        usage = Usage()  # nothing generated, nothing billed
    _, model_name = provider_for_model(call.model)
    cost = price_usd(call.provider, model_name, usage) if usage.output_tokens else None
    async with sessions.begin() as session:
        await record_attempt(session, attempt.ledger_row("error", usage, cost, failure))
        await rate_limits.refund_unused(session, attempt.charges, usage)
        new_state = await circuit_breaker.record_failure(
            session, call.provider, call.model, failure.error_class, config
        )
    attempt.observe("error", usage, cost, failure)
    if new_state is not None:
        metrics.record_breaker_state(call.provider, call.model, new_state)
    log.warning(
        "llm.call_failed",
        model=call.model,
        error_class=failure.error_class.value,
        status_code=failure.status_code,
        retryable=failure.retryable,
        retry_after_s=failure.retry_after.total_seconds() if failure.retry_after else None,
        breaker=new_state,
    )


# --- Activities ------------------------------------------------------------------------------


class LlmActivities:
    """The LLM activities with what they depend on: the worker's settings (routes, policies,
    budgets, breaker), its database sessions (ledger, budgets, limits, breaker, cache) and the
    provider clients its settings configure."""

    def __init__(
        self,
        settings: KeelSettings,
        sessions: async_sessionmaker[AsyncSession],
        providers: ProviderClients,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._providers = providers

    def all(self) -> list[Callable[..., Any]]:
        return [self.plan_llm_route, self.complete_chat]

    @activity.defn(name="plan_llm_route")
    async def plan_llm_route(self, request: LlmRequest) -> RoutePlan:
        """Turn a route into an ordered chain of models with the breaker state of each, so the
        workflow skips an open breaker without spending an activity round trip on it.

        The route may be swapped for a cheaper one (its ``downgrade_to``): for a task class sent
        there, while the tenant's budget is low, or, under the downgrade policy, when the budget
        cannot cover the call; and a canary may take the call (see activities/llm/routing.py)."""
        settings = self._settings
        info = activity.info()
        policy = budget_policy_of(request, settings)
        config = breaker_config(settings)
        # Per call, stable across retries and replays: the canary split is by call, not by workflow.
        traffic_key = f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
        async with self._sessions.begin() as session:
            budgets = await budget_states(session, request.tenant, settings)
            try:
                if request.models:
                    choice = RouteChoice(route="", models=list(request.models))
                else:
                    choice = choose_route(
                        request.route or settings.default_route,
                        request.purpose,
                        settings,
                        traffic_key,
                        budget_low=budget_is_low(budgets, settings) is not None,
                    )
            except UnknownRouteError as error:
                raise ApplicationError(
                    str(error), type="UnknownRoute", non_retryable=True
                ) from error
            candidates = await _candidates(session, choice.models, config)
            refusal = _budget_refusal(budgets, candidates, request)
            seen = {choice.route}
            # Out of budget under the downgrade policy: step down now, not after a refused call.
            while refusal and policy == BudgetPolicy.DOWNGRADE and choice.route:
                target = route_policy(choice.route, settings).downgrade_to
                if not target or target in seen:
                    break
                seen.add(target)
                named = choice.downgraded_from or choice.route
                choice = choose_route(target, request.purpose, settings, traffic_key)
                choice = RouteChoice(
                    choice.route, choice.models, choice.chain, named, "budget_exhausted"
                )
                candidates = await _candidates(session, choice.models, config)
                refusal = _budget_refusal(budgets, candidates, request)
        batch = request.call_class == CallClass.BATCH
        route = choice.route or None
        return RoutePlan(
            route=route,
            candidates=candidates,
            chain=choice.chain,
            downgraded_from=choice.downgraded_from,
            downgrade_reason=choice.downgrade_reason,
            downgrade_route=route_policy(route, settings).downgrade_to if route else None,
            budget_policy=policy,
            budgets=budgets,
            budget_refusal=str(refusal) if refusal else None,
            budget_blocking=refusal.blocking if refusal else None,
            pause_poll_seconds=settings.budget_pause_poll_seconds,
            pause_poll_max_seconds=settings.budget_pause_poll_max_seconds,
            pause_max_seconds=settings.budget_pause_max_seconds,
            policy=settings.batch_policy if batch else settings.interactive_policy,
            task_queue=settings.batch_task_queue if batch else settings.interactive_task_queue,
            fallback_policy=request.fallback_policy or settings.fallback_policy,
            fallback_response=request.fallback_response
            or (
                settings.safe_default_response
                if (request.fallback_policy or settings.fallback_policy) == "safe_default"
                else settings.fallback_response
            ),
        )

    @activity.defn(name="complete_chat")
    async def complete_chat(self, call: AttemptInput) -> LlmAnswer:
        info = activity.info()
        if call.fallback_from and info.attempt == 1:
            metrics.LLM_FALLBACKS.labels(call.fallback_from, call.model).inc()
        with llm_call_span(
            call.model,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.system": call.provider,
                "gen_ai.request.model": call.model,
                "gen_ai.request.max_tokens": call.request.parameters.max_tokens,
                "keel.attempt": info.attempt,
                "keel.tenant": call.request.tenant,
                "keel.route": call.route or "",
                "keel.purpose": call.request.purpose,
                "keel.workflow_id": info.workflow_id or "",
            },
        ) as span:
            return await _complete_chat(call, span, self._settings, self._sessions, self._providers)
