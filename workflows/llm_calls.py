"""How every workflow calls an LLM: plan the route, try each model under its retry policy, fall
back down the chain, and let the caller's fallback policy decide when the chain is exhausted.
When the tenant's budget cannot cover a call, the caller's budget policy decides: downgrade to
the route's cheaper ``downgrade_to``, pause (durable timers) until the budget has room, or
refuse with ``LlmBudgetExceeded`` naming the budget.

Runs inside workflow code, so it only schedules activities and makes decisions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import COMPLETE_CHAT, PLAN_LLM_ROUTE, RECORD_AUDIT_EVENT
    from contracts.audit import AuditEventInput
    from contracts.llm import (
        CHAIN_STOPPERS,
        NON_RETRYABLE_ERROR_TYPES,
        AnswerRecords,
        AttemptInput,
        CallPolicy,
        ErrorClass,
        FallbackPolicy,
        LlmAnswer,
        LlmRequest,
        RoutePlan,
        error_class_from_type,
    )
    from contracts.traffic import BudgetPolicy
    from workflows.activity_calls import (
        LOCAL_RECORD,
        ROUTE_PLAN,
        ActivityOptions,
        call,
        call_local,
    )


class LlmChainExhausted(ApplicationError):
    pass


class LlmBudgetExceeded(ApplicationError):
    """The tenant's budget cannot cover the call and the budget policy could not help. Its
    message names the budget and the command that raises it; its details hold the budget."""


@dataclass
class _BudgetRefusal:
    message: str
    budget: dict[str, Any] | None = None


async def audit(event_type: str, tenant: str, payload: dict[str, Any], actor: str = "keel") -> None:
    """Write an audit row from workflow code; the key is replay-stable, so it is written once."""
    info = workflow.info()
    await call_local(
        RECORD_AUDIT_EVENT,
        AuditEventInput(
            event_key=f"{info.workflow_id}/{info.run_id}/{workflow.uuid4()}",
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            tenant=tenant,
            event_type=event_type,
            actor=actor,
            payload=payload,
        ),
        **LOCAL_RECORD,
        summary=f"audit · {event_type}",
    )


# Calls scheduled since this patch retry rate limits until their deadline (see retry_policy).
RATE_LIMITS_BOUNDED_BY_DEADLINE = "rate-limits-bounded-by-deadline"


def retry_policy(policy: CallPolicy, bounded_by_deadline: bool = True) -> RetryPolicy:
    """The retry policy of one model's call.

    Temporal counts every attempt alike, but a 429 is "come back after Retry-After", not a
    failure: the attempt count is unlimited, schedule-to-close bounds the call, and the
    activity itself stops retrying once ``policy.maximum_attempts`` attempts failed for other
    reasons, or when a Retry-After ends past the deadline (activities/llm/retries.py).
    ``bounded_by_deadline=False``: the policy of calls scheduled before that change."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=policy.initial_interval_seconds),
        backoff_coefficient=policy.backoff_coefficient,
        maximum_interval=timedelta(seconds=policy.maximum_interval_seconds),
        maximum_attempts=0 if bounded_by_deadline else policy.maximum_attempts,
        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
    )


def llm_call_options(plan: RoutePlan, bounded_by_deadline: bool = True) -> ActivityOptions:
    """The options of one model's call (``complete_chat``): the route's task queue, and its call
    policy's timeouts and retries."""
    return ActivityOptions(
        task_queue=plan.task_queue,
        start_to_close_timeout=plan.policy.start_to_close,
        heartbeat_timeout=plan.policy.heartbeat,
        schedule_to_close_timeout=plan.policy.schedule_to_close,
        retry_policy=retry_policy(plan.policy, bounded_by_deadline),
    )


def failure_class(error: ActivityError) -> ErrorClass:
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return error_class_from_type(cause.type)
    if isinstance(cause, TimeoutError):
        return ErrorClass.TIMEOUT
    return ErrorClass.UNKNOWN


async def _plan(request: LlmRequest, note_downgrade: bool = True) -> RoutePlan:
    plan = await call_local(
        PLAN_LLM_ROUTE,
        request,
        **ROUTE_PLAN,
        summary=f"route {request.route or 'explicit'} · {request.purpose}",
    )
    if note_downgrade:
        await audit_downgrade(request, plan)
    return plan


async def audit_downgrade(request: LlmRequest, plan: RoutePlan) -> None:
    """Audit the route's downgrade, if the plan has one (a plan made elsewhere than
    ``plan_route``, as ``prepare_turn``'s, is audited by its caller with this)."""
    if plan.downgraded_from is None:
        return
    await audit(
        "llm.route_downgraded",
        request.tenant,
        {
            "purpose": request.purpose,
            "from_route": plan.downgraded_from,
            "to_route": plan.route,
            "reason": plan.downgrade_reason,
        },
    )


async def plan_route(request: LlmRequest) -> RoutePlan:
    """The plan ``ask_llm`` makes for ``request`` (chain, breakers, budgets, policies)."""
    return await _plan(request)


# What the answering call writes with its answer, given the models that failed before it.
RecordsOf = Callable[[list[tuple[str, str]]], AnswerRecords]


async def ask_llm(
    request: LlmRequest,
    plan: RoutePlan | None = None,
    records: AnswerRecords | RecordsOf | None = None,
) -> LlmAnswer:
    """Answer ``request`` with the first model in its route that succeeds.

    ``plan``: a recent ``plan_route`` of a request of the same shape, for callers making many
    such calls (a batch plans once per page instead of once per item: the planning local
    activity would otherwise hold the workflow task open for every item). Breakers and budget
    reservations are still enforced per call by the call activity.

    ``records``: what the model that answers writes with its answer, in its ledger row's
    transaction, the same for every model or by the models that failed before it
    (``answer.records_written`` says it did; not when the answer is the fallback policy's,
    which the caller records itself)."""
    plan = plan or await _plan(request)
    failed: list[tuple[str, str]] = []
    routes_tried = {plan.route, plan.downgraded_from}
    while True:
        if plan.budget_refusal is not None:
            # The planner already sees the budget cannot cover the call: no attempt is made.
            outcome: LlmAnswer | _BudgetRefusal | None = _BudgetRefusal(
                plan.budget_refusal,
                plan.budget_blocking.model_dump(mode="json") if plan.budget_blocking else None,
            )
        else:
            outcome = await _try_chain(request, plan, failed, records)
        if isinstance(outcome, LlmAnswer):
            return outcome
        if outcome is None:
            break
        request, plan = await _after_budget_refusal(request, plan, outcome, routes_tried)

    summary = "; ".join(f"{model}: {cause}" for model, cause in failed)
    await audit(
        "llm.chain_exhausted",
        request.tenant,
        {"purpose": request.purpose, "failures": failed, "policy": plan.fallback_policy.value},
    )
    if plan.fallback_policy == FallbackPolicy.FAIL or plan.fallback_response is None:
        raise LlmChainExhausted(
            f"every model in route {plan.route or 'explicit'} failed ({summary}); "
            "check `keel audit` for each attempt, or set a fallback policy",
            failed,
            type="LlmChainExhausted",
            non_retryable=True,
        )
    return LlmAnswer(
        text=plan.fallback_response,
        model="fallback",
        provider="keel",
        fallback_used=True,
        failed_models=failed,
    )


async def _try_chain(
    request: LlmRequest,
    plan: RoutePlan,
    failed: list[tuple[str, str]],
    records: AnswerRecords | RecordsOf | None = None,
) -> LlmAnswer | _BudgetRefusal | None:
    """Each model of the plan in turn: the answer, a budget refusal, or None (exhausted)."""
    for position, candidate in enumerate(plan.candidates):
        if position > 0:
            await audit(
                "llm.fallback",
                request.tenant,
                {
                    "purpose": request.purpose,
                    "from_model": failed[-1][0],
                    "cause": failed[-1][1],
                    "to_model": candidate.model,
                },
            )
        if candidate.unsupported is not None:
            # Replay-safe without a patch: plans recorded before this field existed carry None,
            # so their histories take the same path as before.
            failed.append((candidate.model, ErrorClass.UNSUPPORTED.value))
            await audit(
                "llm.model_skipped",
                request.tenant,
                {
                    "purpose": request.purpose,
                    "model": candidate.model,
                    "reason": candidate.unsupported,
                },
            )
            continue
        if candidate.breaker_open:
            failed.append((candidate.model, ErrorClass.CIRCUIT_OPEN.value))
            continue
        try:
            answer = await call(
                COMPLETE_CHAT,
                AttemptInput(
                    request=request,
                    model=candidate.model,
                    provider=candidate.provider,
                    route=plan.route,
                    chain=plan.chain,
                    fallback_from=failed[-1][0] if position > 0 else None,
                    records=_records_for(records, failed),
                ),
                **llm_call_options(plan, workflow.patched(RATE_LIMITS_BOUNDED_BY_DEADLINE)),
                summary=f"{candidate.model} · {request.purpose}",
                # Unset inherits the workflow's priority; a turn may ask for its own.
                priority=Priority(priority_key=request.priority_key)
                if request.priority_key
                else Priority.default,
            )
        except ActivityError as error:
            error_class = failure_class(error)
            failed.append((candidate.model, error_class.value))
            workflow.logger.warning(
                "LLM call failed on %s (%s)", candidate.model, error_class.value
            )
            if error_class == ErrorClass.BUDGET_EXCEEDED:
                # Another model of the chain would spend the same budget: the policy decides.
                return _refusal_of(error)
            if error_class in CHAIN_STOPPERS:
                break
            continue
        answer.failed_models = failed
        return answer
    return None


def _records_for(
    records: AnswerRecords | RecordsOf | None, failed: list[tuple[str, str]]
) -> AnswerRecords | None:
    if records is None or isinstance(records, AnswerRecords):
        return records
    return records(list(failed))


def _refusal_of(error: ActivityError) -> _BudgetRefusal:
    cause = error.cause
    if not isinstance(cause, ApplicationError):
        return _BudgetRefusal(str(error))
    details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else None
    return _BudgetRefusal(cause.message, details)


async def _after_budget_refusal(
    request: LlmRequest, plan: RoutePlan, refusal: _BudgetRefusal, routes_tried: set[str | None]
) -> tuple[LlmRequest, RoutePlan]:
    """Apply the caller's budget policy: the request and plan to go on with, or raise."""
    where = {"purpose": request.purpose, "route": plan.route, "reason": refusal.message}
    if (
        plan.budget_policy == BudgetPolicy.DOWNGRADE
        and plan.downgrade_route is not None
        and plan.downgrade_route not in routes_tried
    ):
        routes_tried.add(plan.downgrade_route)
        await audit("llm.budget_downgraded", request.tenant, {**where, "to": plan.downgrade_route})
        request = request.model_copy(update={"route": plan.downgrade_route, "models": None})
        plan = await _plan(request)
        routes_tried.add(plan.route)
        return request, plan
    if plan.budget_policy == BudgetPolicy.PAUSE:
        # The blocking budget as data, so `keel show` can say which one holds the call.
        await audit("llm.budget_paused", request.tenant, {**where, "budget": refusal.budget})
        plan = await _wait_for_budget(request, plan, refusal)
        await audit("llm.budget_resumed", request.tenant, {"purpose": request.purpose})
        return request, plan
    await audit("llm.budget_refused", request.tenant, {**where, "policy": plan.budget_policy})
    raise LlmBudgetExceeded(
        refusal.message,
        refusal.budget,
        type=ErrorClass.BUDGET_EXCEEDED.error_type,
        non_retryable=True,
    )


async def _wait_for_budget(
    request: LlmRequest, plan: RoutePlan, refusal: _BudgetRefusal
) -> RoutePlan:
    """Re-plan on a backing-off timer until the budget can cover the call (someone raised it,
    or a new period began). Durable: a paused call holds no worker slot and survives restarts;
    the backoff keeps a day-long pause to a few hundred history events."""
    paused_at = workflow.now()
    delay = plan.pause_poll_seconds
    while True:
        waited = (workflow.now() - paused_at).total_seconds()
        if waited + delay > plan.pause_max_seconds:
            await audit("llm.budget_refused", request.tenant, {"reason": refusal.message})
            raise LlmBudgetExceeded(
                f"paused {waited:.0f}s waiting for budget, then gave up: {refusal.message}",
                refusal.budget,
                type=ErrorClass.BUDGET_EXCEEDED.error_type,
                non_retryable=True,
            )
        await workflow.sleep(timedelta(seconds=delay))
        plan = await _plan(request, note_downgrade=False)
        if plan.budget_refusal is None:
            return plan
        refusal = _BudgetRefusal(plan.budget_refusal, refusal.budget)
        delay = min(delay * 2, plan.pause_poll_max_seconds)
