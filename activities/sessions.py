"""Chat-session activities: the conversation lives in Postgres, the workflow only orchestrates.

- ``prepare_turn`` stores the question (once per turn id), answers a retried turn from what is
  stored, and builds the context: system prompt, running summary, and as many recent messages as
  the model's token budget allows; when the budget is exceeded it plans a fold of the oldest turns.
- ``store_summary`` records a fold: the new summary, and the folded messages marked summarized.
- ``finish_turn`` stores the answer and ends the turn's token stream with the stored text.
- ``fail_turn`` ends the stream with the error.

All run as local activities (fast, same worker) and are idempotent: unique keys on
(session, turn, role), "only if not already" updates, one terminal event per stream.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import lru_cache
from typing import Any

import structlog
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.llm import (
    ChatMessage,
    ImagePart,
    LlmRequest,
    RoutePlan,
    ToolCall,
    provider_for_model,
)
from contracts.sessions import (
    FailTurnInput,
    FinishTurnInput,
    FoldPlan,
    PrepareTurnInput,
    StoredAnswer,
    StoreSummaryInput,
    TurnContext,
    build_context,
    summary_message,
    turn_request,
)
from infra.prompt_tokens import message_tokens as counted_message_tokens
from infra.prompt_tokens import tool_tokens
from infra.settings import KeelSettings
from infra.tables import ChatSession, Message
from infra.token_streams import (
    NewStreamEvent,
    StreamEventType,
    append_events,
    has_terminal_event,
    prune_streams,
)

log = structlog.get_logger(__name__)

# Old stream rows are deleted by about one turn in twenty (each deletes up to 1000 rows).
PRUNE_ONE_TURN_IN = 0.05


# --- Token budgets ---------------------------------------------------------------------------

# What summarization_prompt adds around the folded turns and the previous summary (its
# instructions, headings, role prefixes, two messages' overhead): about 75 tokens by keel's
# count, with room to spare (tests/security/test_input_limits.py measures it).
FOLD_INSTRUCTION_TOKENS = 96


def message_tokens(message: ChatMessage) -> int:
    """Prompt tokens a message costs: its text, tool calls and images plus the per-message
    overhead chat formats add (the same count keel's simulator bills, and a slight
    overestimate for real tokenizers)."""
    return counted_message_tokens(message)


@lru_cache(maxsize=256)
def _price_table_window(provider: str, model: str) -> int | None:
    try:
        calculation = calc_price(
            PriceUsage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider
        )
    except LookupError:
        return None
    return calculation.model.context_window


def context_window(model: str, settings: KeelSettings) -> int:
    """The model's context window: settings override, else genai-prices, else the default."""
    if model in settings.model_context_windows:
        return settings.model_context_windows[model]
    provider, name = provider_for_model(model)
    return _price_table_window(provider, name) or settings.default_context_window


def chain_models(route: str | None, models: list[str] | None, settings: KeelSettings) -> list[str]:
    if models:
        return list(models)
    return list(settings.routes.get(route or settings.default_route, []))


def context_budget(
    route: str | None, models: list[str] | None, answer_tokens: int, settings: KeelSettings
) -> int:
    """Tokens the history may take: the smallest window in the fallback chain (any model in it
    may end up answering) minus the answer's reserve, capped by settings.

    Also capped by keel's prompt limit (KEEL_MAX_PROMPT_TOKENS, which the LLM activity
    enforces on every call), with room for the fold: a fold's prompt is at most the previous
    context (<= budget) plus the last answer plus its instructions, since the new question is
    always kept verbatim. So neither a turn nor its fold is ever refused as too large."""
    chain = chain_models(route, models, settings)
    window = min(
        (context_window(m, settings) for m in chain), default=settings.default_context_window
    )
    budget = min(
        window - answer_tokens,
        settings.max_prompt_tokens - answer_tokens - FOLD_INSTRUCTION_TOKENS,
    )
    if settings.session_context_tokens is not None:
        budget = min(budget, settings.session_context_tokens)
    return max(budget, 64)


def plan_fold(
    fixed_tokens: int,
    messages: list[tuple[int, ChatMessage]],
    budget: int,
    settings: KeelSettings,
) -> tuple[list[tuple[int, ChatMessage]], list[tuple[int, ChatMessage]]]:
    """Split (seq, message) pairs, oldest first, into (to fold, to keep).

    Nothing is folded while everything fits. Otherwise the newest messages are kept up to
    ``keep_ratio`` of the budget (always at least the new question), and the kept part starts at
    a user message so a question is never separated from its answer's context, nor a tool call
    from its result: a turn that hands back tool results keeps its whole exchange, from the
    user message that led to the calls.
    """
    total = fixed_tokens + sum(message_tokens(m) for _, m in messages)
    if total <= budget or len(messages) < 2:
        return [], messages
    keep_target = int(budget * settings.session_keep_recent_ratio)
    # Always kept: the new question, or the exchange of tool calls this turn continues.
    must_keep = len(messages) - 1
    while must_keep > 0 and messages[must_keep][1].role != "user":
        must_keep -= 1
    cut = must_keep
    kept_tokens = sum(message_tokens(m) for _, m in messages[cut:])
    while cut > 0 and kept_tokens + message_tokens(messages[cut - 1][1]) <= keep_target:
        cut -= 1
        kept_tokens += message_tokens(messages[cut][1])
    while cut < must_keep and messages[cut][1].role != "user":
        cut += 1
    return messages[:cut], messages[cut:]


# --- Activities ------------------------------------------------------------------------------


async def _ensure_session(db: AsyncSession, params: PrepareTurnInput) -> ChatSession:
    """The session's row, created on its first turn, locked for this turn (one round trip)."""
    system_prompt = params.system_prompt or next(
        (m.content for m in params.seed_messages if m.role == "system"), None
    )
    values = insert(ChatSession).values(
        id=params.session_id,
        tenant=params.tenant,
        workflow_id=params.workflow_id,
        model_route=params.route,
        models=params.models,
        system_prompt=system_prompt,
    )
    statement = values.on_conflict_do_update(
        index_elements=["id"], set_={"updated_at": func.now()}
    ).returning(ChatSession)
    session = (await db.scalars(statement)).one()
    if session.tenant != params.tenant:
        raise ApplicationError(
            f"session {params.session_id} belongs to another tenant",
            type="SessionTenantMismatch",
            non_retryable=True,
        )
    return session


async def _turn_messages(db: AsyncSession, session_id: str, turn_id: str) -> dict[str, Message]:
    """This turn's stored messages by role (question, answer), if any."""
    result = await db.scalars(
        select(Message).where(Message.session_id == session_id, Message.turn_id == turn_id)
    )
    return {message.role: message for message in result}


def _stored_answer(message: Message) -> StoredAnswer:
    return StoredAnswer(
        text=message.content or "",
        model=message.model,
        message_seq=message.seq,
        input_tokens=message.input_tokens,
        output_tokens=message.tokens,
        cost_usd=message.cost_usd,
        tool_calls=[ToolCall.model_validate(call) for call in message.tool_calls or []],
    )


def chat_message(message: Message) -> ChatMessage:
    """A stored message as the model sees it again."""
    return ChatMessage(
        role=message.role,
        content=message.content or "",
        tool_calls=[ToolCall.model_validate(call) for call in message.tool_calls or []],
        tool_call_id=message.tool_call_id,
        images=[ImagePart.model_validate(image) for image in message.images or []],
    )


def _json_list(items: list[ToolCall] | list[ImagePart]) -> list[Any] | None:
    return [item.model_dump(exclude_none=True) for item in items] or None


def _done_event(
    answer: StoredAnswer, turn_id: str, finish_reason: str | None = None
) -> NewStreamEvent:
    """The stream's last event: the stored answer, and why it ended (None: a retried turn
    answered from Postgres, which stores no finish reason; it reads as "stop")."""
    return NewStreamEvent(
        type=StreamEventType.DONE,
        data={
            "turn_id": turn_id,
            "text": answer.text,
            "model": answer.model,
            "message_seq": answer.message_seq,
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "cost_usd": str(answer.cost_usd) if answer.cost_usd is not None else None,
            "tool_calls": [call.model_dump() for call in answer.tool_calls],
            "finish_reason": finish_reason,
        },
    )


async def _insert_messages(
    db: AsyncSession, session_id: str, messages: list[tuple[str, ChatMessage]], first_seq: int
) -> None:
    await db.execute(
        insert(Message)
        .values(
            [
                {
                    "session_id": session_id,
                    "seq": first_seq + offset,
                    "turn_id": turn_id,
                    "role": message.role,
                    "content": message.content,
                    "tool_calls": _json_list(message.tool_calls),
                    "tool_call_id": message.tool_call_id,
                    "images": _json_list(message.images),
                    "tokens": message_tokens(message),
                }
                for offset, (turn_id, message) in enumerate(messages)
            ]
        )
        .on_conflict_do_nothing(index_elements=["session_id", "turn_id", "role"])
    )


async def store_turn_answer(db: AsyncSession, params: FinishTurnInput) -> StoredAnswer:
    """Store a turn's answer (once per turn: a second store returns the first) and end its
    stream with the stored text, in the caller's transaction. Used by ``finish_turn`` and by
    the LLM call itself, which stores its answer with its ledger row (``AnswerRecords``)."""
    next_seq = (
        select(func.coalesce(func.max(Message.seq), 0) + 1)
        .where(Message.session_id == params.session_id)
        .scalar_subquery()
    )
    inserted = await db.scalars(
        insert(Message)
        .values(
            session_id=params.session_id,
            seq=next_seq,
            turn_id=params.turn_id,
            role="assistant",
            content=params.text,
            tool_calls=_json_list(params.tool_calls),
            tokens=params.usage.output_tokens
            or message_tokens(
                ChatMessage(role="assistant", content=params.text, tool_calls=params.tool_calls)
            ),
            model=params.model,
            input_tokens=params.usage.input_tokens,
            cost_usd=params.cost_usd,
        )
        .on_conflict_do_nothing(index_elements=["session_id", "turn_id", "role"])
        .returning(Message)
    )
    message = inserted.one_or_none()
    if message is None:  # a retried finish: the answer stored the first time stands
        message = (await _turn_messages(db, params.session_id, params.turn_id))["assistant"]
    stored = _stored_answer(message)
    # In the same transaction as the message: the stream's final text is the stored text.
    if params.stream_key and not await has_terminal_event(db, params.stream_key):
        done = _done_event(stored, params.turn_id, params.finish_reason)
        await append_events(db, params.stream_key, [done])
    return stored


async def prune_streams_now_and_then(
    sessions: async_sessionmaker[AsyncSession], settings: KeelSettings
) -> None:
    """Delete old stream rows after about one turn in twenty (after the turn's commit: off the
    stream's path)."""
    if random.random() < PRUNE_ONE_TURN_IN:
        async with sessions.begin() as db:
            await prune_streams(db, timedelta(hours=settings.stream_retention_hours))


# Plans a call in the caller's transaction (activities.llm.activities.route_plan; given to
# SessionActivities by the registry, since the LLM activities import this module).
RoutePlanner = Callable[[AsyncSession, LlmRequest, KeelSettings, str], Awaitable[RoutePlan]]


class SessionActivities:
    """The chat-session activities with what they depend on: the worker's settings (context
    budgets, summary route, stream retention), its database sessions, and the route planner
    ``prepare_turn`` plans the turn's call with when asked (None: it never plans)."""

    def __init__(
        self,
        settings: KeelSettings,
        sessions: async_sessionmaker[AsyncSession],
        planner: RoutePlanner | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._planner = planner

    def all(self) -> list[Callable[..., Any]]:
        return [self.prepare_turn, self.store_summary, self.finish_turn, self.fail_turn]

    @activity.defn(name="prepare_turn")
    async def prepare_turn(self, params: PrepareTurnInput) -> TurnContext:
        async with self._sessions.begin() as db:
            session = await _ensure_session(db, params)
            stored = await _turn_messages(db, params.session_id, params.turn_id)
            asked = params.new_messages()[-1]
            question = stored.get(asked.role)
            if question is not None and chat_message(question) != asked:
                raise ApplicationError(
                    f"turn id {params.turn_id} was already used for a different message; "
                    "use a new idempotency key for a new turn",
                    type="IdempotencyKeyReused",
                    non_retryable=True,
                )
            if "assistant" in stored:
                # A retried turn: the first answer stands, the model is not asked again. Its stream
                # already ended with `done`, unless pruned since; then it ends again, identically.
                answer = _stored_answer(stored["assistant"])
                if params.stream_key and not await has_terminal_event(db, params.stream_key):
                    await append_events(
                        db, params.stream_key, [_done_event(answer, params.turn_id)]
                    )
                return TurnContext(answered=answer)

            rows = await db.scalars(
                select(Message)
                .where(
                    Message.session_id == params.session_id,
                    Message.seq > session.summarized_through_seq,
                )
                .order_by(Message.seq)
            )
            history = [(m.seq, chat_message(m)) for m in rows]
            if question is None:
                # Everything at or below the summary's cursor is older than the unsummarized rows.
                seq = history[-1][0] + 1 if history else session.summarized_through_seq + 1
                new: list[tuple[str, ChatMessage]] = []
                if seq == 1:
                    new += [
                        (f"{params.turn_id}#seed{index}", seed)
                        for index, seed in enumerate(params.seed_messages)
                        if seed.role != "system"  # a system message became the system prompt
                    ]
                # The last new message is keyed by the turn id itself (how a retry finds it).
                added = params.new_messages()
                new += [(f"{params.turn_id}#{index}", m) for index, m in enumerate(added[:-1])]
                new.append((params.turn_id, added[-1]))
                await _insert_messages(db, params.session_id, new, seq)
                history += [(seq + offset, message) for offset, (_, message) in enumerate(new)]
            context = self._context(params, session, history)
            if params.plan_for is not None and context.fold is None:
                context.plan = await self._plan(db, params.plan_for, context)
        return context

    async def _plan(
        self, db: AsyncSession, shape: LlmRequest, context: TurnContext
    ) -> RoutePlan | None:
        """The turn's call planned now, in the turn's transaction: one local activity before the
        call instead of two. None (the workflow plans as before, reporting the error in the
        turn's stream) without a planner, or when the route cannot be planned."""
        if self._planner is None:
            return None
        info = activity.info()
        # Per call, stable across retries, as plan_llm_route's: the canary split is by call.
        traffic_key = f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
        request = turn_request(shape, context.system_prompt, context.summary, context.recent)
        try:
            return await self._planner(db, request, self._settings, traffic_key)
        except ApplicationError:
            return None

    def _context(
        self, params: PrepareTurnInput, session: ChatSession, history: list[tuple[int, ChatMessage]]
    ) -> TurnContext:
        """What the turn's call sends: as many recent messages as the budget holds, and the
        fold of the older ones when they do not fit."""
        settings = self._settings
        budget = context_budget(params.route, params.models, params.answer_tokens, settings)
        if params.parameters is not None:  # tool definitions go with every call of the turn
            budget = max(budget - tool_tokens(params.parameters), 64)
        fixed = sum(
            message_tokens(m) for m in build_context(session.system_prompt, session.summary, [])
        )
        to_fold, recent = plan_fold(fixed, history, budget, settings)
        fold = None
        if to_fold:
            fold = FoldPlan(
                previous_summary=session.summary,
                messages=[m for _, m in to_fold],
                through_seq=to_fold[-1][0],
                summary_route=settings.session_summary_route,
                summary_max_tokens=max(32, int(budget * settings.session_summary_ratio)),
            )
        return TurnContext(
            system_prompt=session.system_prompt,
            summary=session.summary,
            recent=[m for _, m in recent],
            fold=fold,
            budget_tokens=budget,
            context_tokens=fixed + sum(message_tokens(m) for _, m in recent),
        )

    @activity.defn(name="store_summary")
    async def store_summary(self, params: StoreSummaryInput) -> None:
        tokens = message_tokens(summary_message(params.summary))
        async with self._sessions.begin() as db:
            await db.execute(
                update(ChatSession)
                .where(
                    ChatSession.id == params.session_id,
                    ChatSession.summarized_through_seq < params.through_seq,
                )
                .values(
                    summary=params.summary,
                    summary_tokens=tokens,
                    summarized_through_seq=params.through_seq,
                )
            )
            await db.execute(
                update(Message)
                .where(
                    Message.session_id == params.session_id,
                    Message.seq <= params.through_seq,
                    Message.summarized.is_(False),
                )
                .values(summarized=True)
            )

    @activity.defn(name="finish_turn")
    async def finish_turn(self, params: FinishTurnInput) -> StoredAnswer:
        async with self._sessions.begin() as db:
            stored = await store_turn_answer(db, params)
        await prune_streams_now_and_then(self._sessions, self._settings)
        return stored

    @activity.defn(name="fail_turn")
    async def fail_turn(self, params: FailTurnInput) -> None:
        async with self._sessions.begin() as db:
            if not await has_terminal_event(db, params.stream_key):
                await append_events(
                    db,
                    params.stream_key,
                    [
                        NewStreamEvent(
                            type=StreamEventType.ERROR,
                            data={"message": params.message, "type": params.error_type},
                        )
                    ],
                )
