"""AskWorkflow: one question, answered durably by the first healthy model in a route."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.llm import (
        ChatMessage,
        FallbackPolicy,
        LlmAnswer,
        LlmParameters,
        LlmRequest,
    )
    from contracts.traffic import BudgetPolicy
    from workflows.llm_calls import ask_llm, audit


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
        await audit("ask.started", params.tenant, {"route": params.route, "models": params.models})
        messages = [ChatMessage(role="system", content=params.system)] if params.system else []
        messages.append(ChatMessage(role="user", content=params.prompt))
        answer = await ask_llm(
            LlmRequest(
                messages=messages,
                route=params.route,
                models=params.models,
                parameters=LlmParameters(
                    max_tokens=params.max_tokens, temperature=params.temperature
                ),
                tenant=params.tenant,
                fallback_policy=params.fallback_policy,
                fallback_response=params.fallback_response,
                use_cache=params.use_cache,
                purpose="ask",
                budget_policy=params.budget_policy,
            )
        )
        # Not a workflow command change: the same local activity, its payload says more, so
        # running executions replay as before.
        fell_back = answer.fallback_used or bool(answer.failed_models)
        await audit(
            "ask.completed",
            params.tenant,
            {
                "model": answer.model,
                "fallback_used": fell_back,
                "fallback_response": answer.fallback_used,
                "failed_models": answer.failed_models,
                "output_tokens": answer.usage.output_tokens,
            },
        )
        return AskOutput(answer=answer, cost_usd=answer.cost_usd, fallback_used=fell_back)
