"""ChatSessionWorkflow: one durable conversation; each turn is a workflow Update.

The caller sends a turn with update-with-start (the first turn starts the workflow) and waits
for the answer. The update id is the client's idempotency key: Temporal deduplicates a retried
update within a run, and ``prepare_turn`` answers a turn it has already answered from Postgres
(across runs and worker restarts), so the model is never asked twice.

The conversation lives in Postgres (``messages``). The workflow holds only counters; it folds
the oldest turns into a summary when the context would overflow, continues-as-new when the server
suggests it, and completes when idle (the next turn starts a new run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import FAIL_TURN, FINISH_TURN, PREPARE_TURN, STORE_SUMMARY
    from contracts.llm import (
        AnswerRecords,
        LlmAnswer,
        LlmParameters,
        LlmRequest,
        TurnToStore,
        Usage,
    )
    from contracts.sessions import (
        MAX_TURN_CHARS,
        ChatSessionInput,
        ChatSessionOutput,
        FailTurnInput,
        FoldPlan,
        PrepareTurnInput,
        StoredAnswer,
        StoreSummaryInput,
        TurnInput,
        TurnOutput,
        summarization_prompt,
        turn_answer,
        turn_request,
        turn_stream_key,
    )
    from workflows.activity_calls import LOCAL_RECORD, call_local
    from workflows.llm_calls import ask_llm, audit_downgrade

# Turns since this patch have their answer stored (and stream ended) by the LLM call itself,
# in its ledger row's transaction; ``finish_turn`` runs only for an answer no call stored.
TURN_STORED_BY_THE_CALL = "turn-stored-by-the-call"
# Turns since this patch have their call planned by ``prepare_turn`` (one local activity before
# the call instead of two) when no fold is due.
TURN_PLANNED_WITH_PREPARE = "turn-planned-with-prepare"

__all__ = [
    "ChatSessionInput",
    "ChatSessionOutput",
    "ChatSessionWorkflow",
    "TurnInput",
    "TurnOutput",
]


def _output(session_id: str, turn_id: str, stored: StoredAnswer, **fields: object) -> TurnOutput:
    return TurnOutput.model_validate(
        {
            "session_id": session_id,
            "turn_id": turn_id,
            "text": stored.text,
            "model": stored.model,
            "message_seq": stored.message_seq,
            "usage": Usage(input_tokens=stored.input_tokens, output_tokens=stored.output_tokens),
            "cost_usd": stored.cost_usd,
            "tool_calls": stored.tool_calls,
            **fields,
        }
    )


def _turn_parameters(params: TurnInput, answer_tokens: int) -> LlmParameters:
    """The call's parameters: the turn's shape (tools, response format...) with its length and
    temperature. A turn recorded before ``parameters`` existed carries None: the same request
    as before, so its replay schedules the same call."""
    shape = params.parameters.model_dump() if params.parameters is not None else {}
    return LlmParameters.model_validate(
        {**shape, "max_tokens": answer_tokens, "temperature": params.temperature}
    )


@workflow.defn
class ChatSessionWorkflow:
    @workflow.init
    def __init__(self, params: ChatSessionInput) -> None:
        # The first turn arrives with the start (update-with-start) and may run before `run`.
        self._params = params
        # Turns of one session run one at a time, in the order they arrive.
        self._turn_lock = asyncio.Lock()
        self._turns_started = 0

    @workflow.run
    async def run(self, params: ChatSessionInput) -> ChatSessionOutput:
        idle = timedelta(seconds=params.idle_timeout_seconds)
        if params.single_turn:
            await self._wait_for(lambda: self._turns_started > 0, idle)
        else:
            await self._serve_turns_until_idle(params, idle)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ChatSessionOutput(
            session_id=params.session_id, turns=params.turns_before + self._turns_started
        )

    async def _serve_turns_until_idle(self, params: ChatSessionInput, idle: timedelta) -> None:
        """Turns arrive as Updates; this loop only decides when the run ends: continue-as-new
        when due (handlers drained first), or return once no turn came for ``idle``."""
        while True:
            arrived = await self._wait_for(
                partial(self._turn_or_continue_as_new_since, self._turns_started), idle
            )
            if not arrived and workflow.all_handlers_finished():
                return  # idle: the history is in Postgres; the next turn starts a new run
            if self._continue_as_new_due():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    params.model_copy(
                        update={"turns_before": params.turns_before + self._turns_started}
                    )
                )

    @staticmethod
    async def _wait_for(condition: Callable[[], bool], timeout: timedelta) -> bool:
        """False when ``timeout`` passed first."""
        try:
            await workflow.wait_condition(condition, timeout=timeout, timeout_summary="idle")
        except TimeoutError:
            return False
        return True

    def _turn_or_continue_as_new_since(self, turns_seen: int) -> bool:
        return self._turns_started != turns_seen or self._continue_as_new_due()

    def _continue_as_new_due(self) -> bool:
        return (
            workflow.info().is_continue_as_new_suggested()
            or self._turns_started >= self._params.max_turns_per_run
        )

    @workflow.update
    async def turn(self, params: TurnInput) -> TurnOutput:
        turn_id = workflow.current_update_info().id  # type: ignore[union-attr]
        self._turns_started += 1
        async with self._turn_lock:
            return await self._answer(turn_id, params)

    @turn.validator
    def _validate_turn(self, params: TurnInput) -> None:
        if not params.content.strip() and not params.turn_messages:
            raise ValueError("a turn needs a non-empty message")
        if len(params.content) > MAX_TURN_CHARS:
            raise ValueError(f"a turn's message is limited to {MAX_TURN_CHARS} characters")

    async def _answer(self, turn_id: str, params: TurnInput) -> TurnOutput:
        session = self._params
        stream_key = turn_stream_key(session.session_id, turn_id) if params.stream else None
        answer_tokens = params.max_tokens or session.answer_tokens
        route = params.route if params.route or params.models else session.route
        models = params.models if params.route or params.models else session.models
        shape = LlmRequest(
            messages=[],
            route=route,
            models=models,
            parameters=_turn_parameters(params, answer_tokens),
            tenant=session.tenant,
            purpose="chat",
            stream_key=stream_key,
            priority_key=params.priority_key,
        )
        plan_with_prepare = workflow.patched(TURN_PLANNED_WITH_PREPARE)
        context = await call_local(
            PREPARE_TURN,
            PrepareTurnInput(
                session_id=session.session_id,
                tenant=session.tenant,
                workflow_id=workflow.info().workflow_id,
                turn_id=turn_id,
                content=params.content,
                seed_messages=params.seed_messages,
                system_prompt=session.system_prompt,
                route=route,
                models=models,
                answer_tokens=answer_tokens,
                stream_key=stream_key,
                turn_messages=params.turn_messages,
                parameters=params.parameters,
                plan_for=shape if plan_with_prepare else None,
            ),
            **LOCAL_RECORD,
            summary=f"turn {turn_id} · prepare",
        )
        if context.answered is not None:
            return _output(session.session_id, turn_id, context.answered, replayed=True)
        try:
            summary = context.summary
            if context.fold is not None:
                summary = await self._fold(context.fold, params.priority_key)
            records = None
            if workflow.patched(TURN_STORED_BY_THE_CALL):
                turn = TurnToStore(
                    session_id=session.session_id, turn_id=turn_id, stream_key=stream_key
                )
                records = AnswerRecords(turn=turn)
            request = turn_request(shape, context.system_prompt, summary, context.recent)
            if context.plan is not None:
                await audit_downgrade(request, context.plan)
            answer = await ask_llm(request, context.plan, records=records)
        except FailureError as error:
            if stream_key is not None:
                await call_local(
                    FAIL_TURN,
                    FailTurnInput(
                        stream_key=stream_key,
                        message=str(error),
                        error_type=getattr(error, "type", None) or type(error).__name__,
                    ),
                    **LOCAL_RECORD,
                    summary=f"turn {turn_id} · failed",
                )
            raise
        stored = answer.stored or await self._store_answer(turn_id, stream_key, answer)
        return _output(
            session.session_id,
            turn_id,
            stored,
            summarized=context.fold is not None,
            context_tokens=context.context_tokens,
            budget_tokens=context.budget_tokens,
            attempts=answer.attempts,
            fallback_used=answer.fallback_used,
            finish_reason=answer.finish_reason,
        )

    async def _store_answer(
        self, turn_id: str, stream_key: str | None, answer: LlmAnswer
    ) -> StoredAnswer:
        """Store an answer no call stored (a fallback response, or a turn from before the
        call stored its answer) and end its stream."""
        turn = TurnToStore(
            session_id=self._params.session_id, turn_id=turn_id, stream_key=stream_key
        )
        return await call_local(
            FINISH_TURN,
            turn_answer(turn, answer),
            **LOCAL_RECORD,
            summary=f"turn {turn_id} · store {answer.model} answer",
        )

    async def _fold(self, plan: FoldPlan, priority_key: int | None) -> str:
        """Fold the oldest turns into the running summary, with a cheap model."""
        summary = await ask_llm(
            LlmRequest(
                messages=summarization_prompt(plan),
                route=plan.summary_route,
                parameters=LlmParameters(max_tokens=plan.summary_max_tokens, temperature=0),
                tenant=self._params.tenant,
                purpose="session.summarize",
                priority_key=priority_key,
            )
        )
        await call_local(
            STORE_SUMMARY,
            StoreSummaryInput(
                session_id=self._params.session_id,
                summary=summary.text,
                through_seq=plan.through_seq,
            ),
            **LOCAL_RECORD,
            summary=f"store summary through message {plan.through_seq}",
        )
        return summary.text
