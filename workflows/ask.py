"""AskWorkflow: one question, answered durably by the first healthy model in a route."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from functools import partial

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.audit import AuditEventInput
    from contracts.llm import (
        AnswerRecords,
        ChatMessage,
        FallbackPolicy,
        LlmAnswer,
        LlmParameters,
        LlmRequest,
    )
    from contracts.traffic import BudgetPolicy
    from workflows.llm_calls import ask_llm, audit, plan_route

# Asks since this patch plan their route while the start is audited, and the model that answers
# audits the completion with its ledger row: one local activity fewer on each side of the call.
ASK_AUDITS_WITH_THE_CALL = "ask-audits-with-the-call"


class AskInput(BaseModel):
    prompt: str = Field(min_length=1)
    system: str | None = None
    route: str | None = None
    models: list[str] | None = None
    max_tokens: int = Field(default=512, ge=1, le=200_000)
    temperature: float | None = None
    tenant: str = "default"
    fallback_policy: FallbackPolicy | None = None
    fallback_response: str | None = None
    use_cache: bool = False
    # What to do when the tenant's budget cannot cover the call (None: settings decide).
    budget_policy: BudgetPolicy | None = None


class AskOutput(BaseModel):
    answer: LlmAnswer
    cost_usd: Decimal | None = None
    # The first model did not answer: a later one did, or the fallback policy's response
    # (``answer.fallback_used`` says which). Every attempt is in the ledger (`keel audit`).
    fallback_used: bool = False


@workflow.defn
class AskWorkflow:
    @workflow.run
    async def run(self, params: AskInput) -> AskOutput:
        messages = [ChatMessage(role="system", content=params.system)] if params.system else []
        messages.append(ChatMessage(role="user", content=params.prompt))
        request = LlmRequest(
            messages=messages,
            route=params.route,
            models=params.models,
            parameters=LlmParameters(max_tokens=params.max_tokens, temperature=params.temperature),
            tenant=params.tenant,
            fallback_policy=params.fallback_policy,
            fallback_response=params.fallback_response,
            use_cache=params.use_cache,
            purpose="ask",
            budget_policy=params.budget_policy,
        )
        started = {"route": params.route, "models": params.models}
        if workflow.patched(ASK_AUDITS_WITH_THE_CALL):
            _, plan = await asyncio.gather(
                audit("ask.started", params.tenant, started), plan_route(request)
            )
            answer = await ask_llm(
                request, plan, records=partial(_completion_records, params.tenant)
            )
        else:
            await audit("ask.started", params.tenant, started)
            answer = await ask_llm(request)
        # Not a workflow command change: the same local activity, its payload says more, so
        # running executions replay as before.
        fell_back = answer.fallback_used or bool(answer.failed_models)
        if not answer.records_written:
            await audit(
                "ask.completed",
                params.tenant,
                {
                    "model": answer.model,
                    **_completion(answer.fallback_used, answer.failed_models),
                    "output_tokens": answer.usage.output_tokens,
                },
            )
        return AskOutput(answer=answer, cost_usd=answer.cost_usd, fallback_used=fell_back)


def _completion_records(tenant: str, failed: list[tuple[str, str]]) -> AnswerRecords:
    """The ``ask.completed`` audit row the answering model writes (it adds ``model`` and
    ``output_tokens``): the row this workflow writes itself for a fallback response."""
    info = workflow.info()
    return AnswerRecords(
        audit=AuditEventInput(
            event_key=f"{info.workflow_id}/{info.run_id}/{workflow.uuid4()}",
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            tenant=tenant,
            event_type="ask.completed",
            payload=_completion(False, failed),
        )
    )


def _completion(fallback_response: bool, failed: list[tuple[str, str]]) -> dict[str, object]:
    return {
        "fallback_used": fallback_response or bool(failed),
        "fallback_response": fallback_response,
        "failed_models": failed,
    }
