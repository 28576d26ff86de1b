"""The LLM activities: plan a route (local activity) and make one model's attempt (activity).

Every attempt, success or failure, writes exactly one ledger row; errors leave here classified,
as ApplicationErrors whose type names the class and whose retryability Temporal obeys.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.llm import circuit_breaker, response_cache
from activities.llm.errors import ClassifiedError, classify
from activities.llm.ledger import (
    IN_FLIGHT,
    AttemptRecord,
    record_attempt,
    record_attempt_started,
)
from activities.llm.models import (
    AttemptInput,
    CallClass,
    ErrorClass,
    LlmAnswer,
    LlmRequest,
    ModelCandidate,
    RoutePlan,
    Usage,
)
from activities.llm.pricing import price_usd
from activities.llm.streaming import open_attempt_stream
from activities.llm.providers import (
    Completion,
    estimate_tokens,
    get_provider,
    provider_for_model,
)
from infra.database import session_factory
from infra.settings import KeelSettings, get_settings

log = structlog.get_logger(__name__)


def breaker_config(settings: KeelSettings) -> circuit_breaker.BreakerConfig:
    return circuit_breaker.BreakerConfig(
        failure_threshold=settings.breaker_failure_threshold,
        window_seconds=settings.breaker_window_seconds,
        cooldown_seconds=settings.breaker_cooldown_seconds,
        probe_timeout_seconds=settings.interactive_policy.start_to_close_seconds,
    )


class UnknownRouteError(ValueError):
    pass


def resolve_models(request: LlmRequest, settings: KeelSettings) -> tuple[str | None, list[str]]:
    if request.models:
        return None, list(request.models)
    route = request.route or settings.default_route
    models = settings.routes.get(route)
    if not models:
        known = ", ".join(sorted(settings.routes)) or "none"
        raise UnknownRouteError(
            f"unknown route {route!r}; configured routes: {known} (set KEEL_ROUTES to add one)"
        )
    return route, models


@activity.defn(name="plan_llm_route")
async def plan_llm_route(request: LlmRequest) -> RoutePlan:
    """Turn a route into an ordered chain of models with the breaker state of each, so the
    workflow skips an open breaker without spending an activity round trip on it."""
    settings = get_settings()
    try:
        route, models = resolve_models(request, settings)
    except UnknownRouteError as error:
        raise ApplicationError(str(error), type="UnknownRoute", non_retryable=True) from error
    config = breaker_config(settings)
    candidates: list[ModelCandidate] = []
    async with session_factory().begin() as session:
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
    batch = request.call_class == CallClass.BATCH
    return RoutePlan(
        route=route,
        candidates=candidates,
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


@dataclass
class _Attempt:
    """One attempt in flight: who is calling, what arrived so far, and how to write its row."""

    call: AttemptInput
    prompt_hash: str
    started: float
    completion: Completion

    @property
    def latency_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

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
        )


def _to_application_error(failure: ClassifiedError, model: str) -> ApplicationError:
    return ApplicationError(
        f"{model}: {failure.error_class.value}: {failure.message}",
        {"error_class": failure.error_class.value, "status_code": failure.status_code},
        type=failure.error_class.error_type,
        non_retryable=not failure.retryable,
        next_retry_delay=failure.retry_after,
    )


@activity.defn(name="complete_chat")
async def complete_chat(call: AttemptInput) -> LlmAnswer:
    info = activity.info()
    settings = get_settings()
    request, model, provider_name = call.request, call.model, call.provider
    _, model_name = provider_for_model(model)
    prompt_hash = request.prompt_hash(model)
    sessions = session_factory()
    config = breaker_config(settings)
    attempt = _Attempt(call, prompt_hash, time.perf_counter(), Completion())
    async with sessions.begin() as session:
        if response_cache.cacheable(request):
            hit = await response_cache.lookup(session, prompt_hash)
            if hit is not None:
                usage = Usage(input_tokens=hit.input_tokens, output_tokens=hit.output_tokens)
                await record_attempt(session, attempt.ledger_row("cached", usage, Decimal(0)))
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
        try:
            await circuit_breaker.admit(session, provider_name, model, config)
            refused = None
        except circuit_breaker.CircuitOpenError as error:
            refused = ClassifiedError(ErrorClass.CIRCUIT_OPEN, str(error))
            await record_attempt(
                session, attempt.ledger_row("short_circuited", Usage(), None, refused)
            )
        if refused is None:  # committed before the provider sees the request (see ledger.py)
            await record_attempt_started(session, attempt.ledger_row(IN_FLIGHT, Usage()))
    if refused is not None:  # raised after the commit, so the ledger keeps the refusal
        raise ApplicationError(
            refused.message, type=ErrorClass.CIRCUIT_OPEN.error_type, non_retryable=True
        )

    stream = open_attempt_stream(request.stream_key, model)

    async def on_delta(delta: str) -> None:
        # Progress is the liveness signal: a stream that stalls stops heartbeating and the
        # heartbeat timeout, not the much longer start-to-close, ends the attempt.
        activity.heartbeat()
        stream.delta(delta)

    policy = (
        settings.batch_policy
        if request.call_class == CallClass.BATCH
        else (settings.interactive_policy)
    )
    try:
        provider = get_provider(provider_name, settings)
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
        await _record_failure(attempt, failure, config)
        raise _to_application_error(failure, model) from error
    except Exception as error:  # every provider failure is classified, none escapes raw
        failure = classify(error, stream_started=attempt.completion.first_token_ms is not None)
        await _record_failure(attempt, failure, config)
        raise _to_application_error(failure, model) from error

    completion = attempt.completion
    usage = completion.usage if completion.usage_reported else _estimated_usage(request, completion)
    cost = price_usd(provider_name, model_name, usage)
    async with sessions.begin() as session:
        await record_attempt(session, attempt.ledger_row("ok", usage, cost))
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


def _estimated_usage(request: LlmRequest, completion: Completion) -> Usage:
    """Billed tokens for a call whose usage report never arrived (the stream broke first)."""
    prompt = "".join(m.content for m in request.messages)
    return Usage(
        input_tokens=estimate_tokens(prompt),
        output_tokens=estimate_tokens(completion.text),
    )


async def _record_failure(
    attempt: _Attempt, failure: ClassifiedError, config: circuit_breaker.BreakerConfig
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
    async with session_factory().begin() as session:
        await record_attempt(session, attempt.ledger_row("error", usage, cost, failure))
        new_state = await circuit_breaker.record_failure(
            session, call.provider, call.model, failure.error_class, config
        )
    log.warning(
        "llm.call_failed",
        model=call.model,
        error_class=failure.error_class.value,
        status_code=failure.status_code,
        retryable=failure.retryable,
        retry_after_s=failure.retry_after.total_seconds() if failure.retry_after else None,
        breaker=new_state,
    )
