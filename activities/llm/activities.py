"""The LLM activities: plan a route (local activity) and make one model's attempt (activity).

Every attempt, success or failure, writes exactly one ledger row; errors leave here classified,
as ApplicationErrors whose type names the class and whose retryability Temporal obeys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from opentelemetry.trace import Span
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.llm import circuit_breaker, response_cache, retries
from activities.llm.answer_records import write_answer_records
from activities.llm.budgets import (
    BudgetExceededError,
    blocking_budget,
    budget_states,
    estimate_cost,
)
from activities.llm.capabilities import unsupported_reason
from activities.llm.errors import ClassifiedError
from activities.llm.ledger import (
    earlier_attempts,
    mark_interrupted,
    record_attempt,
)
from activities.llm.pipeline import (
    Attempt,
    AttemptKey,
    Refusal,
    admit,
    answered_usage,
    breaker_config,
    call_policy,
    call_provider,
    failed_cost,
    failed_usage,
    observe_breakers,
    prompt_too_large,
    retry_decision,
    settle,
    to_application_error,
)
from activities.llm.pricing import price_usd
from activities.llm.providers import ProviderClients, ToolCallDelta, provider_for_model
from activities.llm.routing import (
    RouteChoice,
    UnknownRouteError,
    budget_is_low,
    choose_route,
    route_policy,
)
from activities.llm.streaming import open_attempt_stream
from activities.sessions import prune_streams_now_and_then
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
from infra.settings import KeelSettings
from infra.tracing import llm_call_span

log = structlog.get_logger(__name__)


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
    first = next((c for c in candidates if not c.breaker_open and not c.unsupported), None)
    if not budgets or first is None:
        return None
    _, model_name = provider_for_model(first.model)
    estimate = estimate_cost(first.provider, model_name, request)
    blocking = blocking_budget(budgets, estimate)
    return BudgetExceededError(blocking, estimate, first.model) if blocking else None


async def _candidates(
    session: AsyncSession,
    models: list[str],
    config: circuit_breaker.BreakerConfig,
    request: LlmRequest,
    settings: KeelSettings,
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
                unsupported=unsupported_reason(model, request, settings),
            )
        )
    return candidates


async def route_plan(
    session: AsyncSession, request: LlmRequest, settings: KeelSettings, traffic_key: str
) -> RoutePlan:
    """The plan of ``request``: its chain with each model's breaker state, budgets, policies.

    The route may be swapped for a cheaper one (its ``downgrade_to``): for a task class sent
    there, while the tenant's budget is low, or, under the downgrade policy, when the budget
    cannot cover the call; and a canary may take the call (see activities/llm/routing.py).
    Shared by the planning activity and the batch page (which plans once per request shape)."""
    policy = budget_policy_of(request, settings)
    config = breaker_config(settings)
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
        raise ApplicationError(str(error), type="UnknownRoute", non_retryable=True) from error
    candidates = await _candidates(session, choice.models, config, request, settings)
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
        choice = RouteChoice(choice.route, choice.models, choice.chain, named, "budget_exhausted")
        candidates = await _candidates(session, choice.models, config, request, settings)
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


@dataclass(frozen=True)
class _RetryBudget:
    """What decides whether this attempt's failure is retried (activities/llm/retries.py)."""

    policy: CallPolicy
    prior: retries.PriorAttempts
    deadline: datetime | None


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
    """The failure as Temporal sees it, retried (or not) as the pipeline's retry rules say."""
    decision = retry_decision(
        failure, budget.prior, budget.policy, datetime.now(UTC), budget.deadline
    )
    return to_application_error(failure, model, decision)


def _refusal_error(refusal: Refusal, model: str, retry: _RetryBudget) -> Exception:
    failure = refusal.failure
    if failure.error_class == ErrorClass.CIRCUIT_OPEN:
        return ApplicationError(
            failure.message, type=ErrorClass.CIRCUIT_OPEN.error_type, non_retryable=True
        )
    if refusal.budget is None:
        return _to_application_error(failure, model, retry)
    # The caller's budget policy decides what happens next (workflows/llm_calls.py); the
    # message names the budget and the command that raises it.
    return ApplicationError(
        failure.message,
        refusal.budget.model_dump(mode="json"),
        type=ErrorClass.BUDGET_EXCEEDED.error_type,
        non_retryable=True,
    )


async def _wait_for_rate_limit(attempt: Attempt, wait_seconds: float) -> None:
    """Sleep until the call's slot comes up, heartbeating so the wait is not taken for a hang."""
    deadline = time.monotonic() + wait_seconds
    while (left := deadline - time.monotonic()) > 0:
        activity.heartbeat()
        await asyncio.sleep(min(left, 1.0))
    attempt.rate_limit_waited(wait_seconds)


class _ProgressHeartbeat:
    """Heartbeats on streamed progress, at most every ``HEARTBEAT_EVERY_SECONDS``: a stream
    delivers a chunk every few milliseconds, and the liveness signal needs one a second at most
    (the SDK sends one to the server per throttle interval anyway); the call per chunk cost
    about a millisecond per answer of 64 chunks."""

    HEARTBEAT_EVERY_SECONDS = 0.2

    def __init__(self) -> None:
        self._last = float("-inf")

    def progress(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.HEARTBEAT_EVERY_SECONDS:
            self._last = now
            activity.heartbeat()


async def _complete_chat(
    call: AttemptInput,
    span: Span,
    settings: KeelSettings,
    sessions: async_sessionmaker[AsyncSession],
    providers: ProviderClients,
) -> LlmAnswer:
    """The interactive driver of the call pipeline (activities/llm/pipeline.py): one attempt
    per activity, its retries scheduled by Temporal as the pipeline decides."""
    info = activity.info()
    request, model, provider_name = call.request, call.model, call.provider
    _, model_name = provider_for_model(model)
    config = breaker_config(settings)
    key = AttemptKey(info.workflow_id or "", info.workflow_run_id, info.activity_id, info.attempt)
    attempt = Attempt(key, call, model_name, request.prompt_hash(model), span=span)
    retry = await _retry_budget(call, settings, sessions)
    if retries.error_budget_spent(retry.prior, retry.policy, retry.deadline):
        raise await _error_budget_spent(retry, model, sessions)
    too_large = prompt_too_large(request, settings)
    if too_large is not None:
        # The last line of defence (every entry point checks first): nothing is reserved or
        # sent, one ledger row says why, and no retry or other model can change the answer.
        async with sessions.begin() as session:
            await record_attempt(
                session, attempt.ledger_row("prompt_too_large", Usage(), None, too_large)
            )
        attempt.observe("prompt_too_large", Usage(), None, too_large, timed=False)
        raise _to_application_error(too_large, model, retry)
    async with sessions.begin() as session:
        if response_cache.cacheable(request):
            hit = await response_cache.lookup(session, attempt.prompt_hash)
            if hit is not None:
                usage = Usage(input_tokens=hit.input_tokens, output_tokens=hit.output_tokens)
                await record_attempt(session, attempt.ledger_row("cached", usage, Decimal(0)))
                attempt.observe("cached", usage, Decimal(0), timed=False)
                cached = LlmAnswer(
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
                return await write_answer_records(session, call, cached)
        if key.attempt > 1:  # the first attempt has no earlier one to close
            # Rows an earlier attempt's dead worker left in flight end now (see ledger.py).
            await mark_interrupted(
                session, key.workflow_id, key.run_id, key.activity_id, key.attempt
            )
        # Budget, rate limits, breaker and the in-flight row, in one transaction: the
        # reservation is visible to the next check the moment the budget lock is released.
        (admission,) = await admit(session, [attempt], settings, config)
    if admission.refusal is not None:  # raised after the commit, so the ledger keeps it
        refusal = admission.refusal
        attempt.observe(refusal.outcome, Usage(), None, refusal.failure, timed=False)
        raise _refusal_error(refusal, model, retry)
    if admission.wait_seconds > 0:
        await _wait_for_rate_limit(attempt, admission.wait_seconds)

    stream = open_attempt_stream(request.stream_key, model)

    beat = _ProgressHeartbeat()

    async def on_delta(delta: str) -> None:
        # Progress is the liveness signal: a stream that stalls stops heartbeating and the
        # heartbeat timeout, not the much longer start-to-close, ends the attempt.
        beat.progress()
        stream.delta(delta)

    async def on_tool_delta(delta: ToolCallDelta) -> None:
        beat.progress()
        stream.tool_delta(delta.index, delta.id, delta.name, delta.arguments)

    async with stream:
        failure = await call_provider(providers, attempt, retry.policy, on_delta, on_tool_delta)
    if failure is not None:
        await _record_failure(attempt, failure, config, sessions)
        raise _to_application_error(failure, model, retry)

    completion = attempt.completion
    usage = answered_usage(request, completion)
    cost = price_usd(provider_name, model_name, usage)
    answer = LlmAnswer(
        text=completion.text,
        model=model,
        provider=provider_name,
        tool_calls=completion.tool_calls,
        usage=usage,
        cost_usd=cost,
        finish_reason=completion.finish_reason,
        attempts=info.attempt,
        latency_ms=attempt.latency_ms,
    )
    async with sessions.begin() as session:
        await record_attempt(session, attempt.ledger_row("ok", usage, cost))
        await settle(session, [(attempt, usage, None)], config)
        if response_cache.cacheable(request):
            await response_cache.store(
                session,
                attempt.prompt_hash,
                provider_name,
                model,
                completion.text,
                completion.finish_reason,
                usage.input_tokens,
                usage.output_tokens,
            )
        # The turn's answer and `done` event commit with the ledger row (answer_records.py).
        answer = await write_answer_records(session, call, answer)
    if call.records is not None and call.records.turn is not None:
        await prune_streams_now_and_then(sessions, settings)
    attempt.observe("ok", usage, cost)
    log.info(
        "llm.call_succeeded",
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=str(cost) if cost is not None else None,
        latency_ms=attempt.latency_ms,
    )
    return answer


async def _record_failure(
    attempt: Attempt,
    failure: ClassifiedError,
    config: circuit_breaker.BreakerConfig,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    call = attempt.call
    usage = failed_usage(call.request, attempt.completion)
    cost = failed_cost(call.provider, attempt.model_name, usage)
    async with sessions.begin() as session:
        await record_attempt(session, attempt.ledger_row("error", usage, cost, failure))
        changed = await settle(session, [(attempt, usage, failure)], config)
    attempt.observe("error", usage, cost, failure)
    observe_breakers(changed)
    log.warning(
        "llm.call_failed",
        model=call.model,
        error_class=failure.error_class.value,
        status_code=failure.status_code,
        retryable=failure.retryable,
        retry_after_s=failure.retry_after.total_seconds() if failure.retry_after else None,
        breaker=changed[0][2] if changed else None,
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
        workflow skips an open breaker without spending an activity round trip on it."""
        info = activity.info()
        # Per call, stable across retries and replays: the canary split is by call.
        traffic_key = f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
        async with self._sessions.begin() as session:
            return await route_plan(session, request, self._settings, traffic_key)

    @activity.defn(name="complete_chat")
    async def complete_chat(self, call: AttemptInput) -> LlmAnswer:
        info = activity.info()
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
