"""How every workflow calls an LLM: plan the route, try each model under its retry policy, fall
back down the chain, and let the caller's fallback policy decide when the chain is exhausted.

Runs inside workflow code, so it only schedules activities and makes decisions; no I/O.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.audit_event import AuditEventInput
    from activities.llm.models import (
        NON_RETRYABLE_ERROR_TYPES,
        AttemptInput,
        CallPolicy,
        ErrorClass,
        FallbackPolicy,
        LlmAnswer,
        LlmRequest,
        RoutePlan,
        error_class_from_type,
    )

# Activities are named, not imported: workflow modules (and the CLI that starts them) stay free of
# the provider SDKs and database drivers the activities need.
PLAN_LLM_ROUTE = "plan_llm_route"
COMPLETE_CHAT = "complete_chat"
RECORD_AUDIT_EVENT = "record_audit_event"

LOCAL_ACTIVITY_TIMEOUT = timedelta(seconds=10)
LOCAL_ACTIVITY_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=2))
# A content-policy refusal is about the prompt, not the model: other models are not asked.
CHAIN_STOPPERS = frozenset({ErrorClass.CONTENT_POLICY})


class LlmChainExhausted(ApplicationError):
    pass


async def audit(event_type: str, tenant: str, payload: dict[str, Any], actor: str = "keel") -> None:
    """Write an audit row from workflow code; the key is replay-stable, so it is written once."""
    info = workflow.info()
    await workflow.execute_local_activity(
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
        start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT,
        retry_policy=LOCAL_ACTIVITY_RETRY,
    )


def retry_policy(policy: CallPolicy) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=policy.initial_interval_seconds),
        backoff_coefficient=policy.backoff_coefficient,
        maximum_interval=timedelta(seconds=policy.maximum_interval_seconds),
        maximum_attempts=policy.maximum_attempts,
        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
    )


def failure_class(error: ActivityError) -> ErrorClass:
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return error_class_from_type(cause.type)
    if isinstance(cause, TimeoutError):
        return ErrorClass.TIMEOUT
    return ErrorClass.UNKNOWN


async def ask_llm(request: LlmRequest) -> LlmAnswer:
    """Answer ``request`` with the first model in its route that succeeds."""
    plan = await workflow.execute_local_activity(
        PLAN_LLM_ROUTE,
        request,
        result_type=RoutePlan,
        start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT,
        retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["UnknownRoute"]),
    )
    failed: list[tuple[str, str]] = []
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
        if candidate.breaker_open:
            failed.append((candidate.model, ErrorClass.CIRCUIT_OPEN.value))
            continue
        try:
            answer = await workflow.execute_activity(
                COMPLETE_CHAT,
                AttemptInput(
                    request=request,
                    model=candidate.model,
                    provider=candidate.provider,
                    route=plan.route,
                ),
                task_queue=plan.task_queue,
                start_to_close_timeout=plan.policy.start_to_close,
                heartbeat_timeout=plan.policy.heartbeat,
                schedule_to_close_timeout=plan.policy.schedule_to_close,
                retry_policy=retry_policy(plan.policy),
                summary=f"{request.purpose}: {candidate.model}",
                result_type=LlmAnswer,
            )
        except ActivityError as error:
            error_class = failure_class(error)
            failed.append((candidate.model, error_class.value))
            workflow.logger.warning(
                "LLM call failed on %s (%s)", candidate.model, error_class.value
            )
            if error_class in CHAIN_STOPPERS:
                break
            continue
        answer.failed_models = failed
        return answer

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
