"""The chat-session contract between the session workflow and its activities.

Plain pydantic models and pure functions, no I/O: the workflow imports this module in its sandbox.
"""

from __future__ import annotations

import re
from decimal import Decimal

from pydantic import BaseModel, Field

from contracts.llm import (
    MAX_OUTPUT_TOKENS,
    ChatMessage,
    LlmAnswer,
    LlmParameters,
    LlmRequest,
    RoutePlan,
    ToolCall,
    TurnToStore,
    Usage,
)

# Defined with the LLM answer, which carries it when the call stored the turn's answer.
from contracts.llm import StoredAnswer as StoredAnswer

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,149}$")
MAX_TURN_CHARS = 200_000


def session_workflow_id(session_id: str) -> str:
    return f"chat-{session_id}"


def turn_stream_key(session_id: str, turn_id: str) -> str:
    """The token stream of one turn (infra/token_streams.py)."""
    return f"turn/{session_id}/{turn_id}"


# --- The workflow's own input and outputs ----------------------------------------------------
# Defined here, outside the workflow module, so the sandbox does not rebuild these pydantic
# classes for every new session run (measured: tens of ms per run; see ARCHITECTURE.md).


class ChatSessionInput(BaseModel):
    session_id: str
    tenant: str = "default"
    route: str | None = None
    models: list[str] | None = None
    system_prompt: str | None = None
    answer_tokens: int = Field(default=1024, ge=1)
    idle_timeout_seconds: float = Field(default=1800, gt=0)
    max_turns_per_run: int = Field(default=500, ge=1)
    # A stateless request (an OpenAI call without a session id): complete after the first turn.
    single_turn: bool = False
    # Carried across continue-as-new.
    turns_before: int = 0


class TurnInput(BaseModel):
    content: str
    # Earlier messages the client sent with this turn; used only to seed a new session.
    seed_messages: list[ChatMessage] = Field(default_factory=list)
    # The turn's new messages when they are more than one user text: tool results (answering
    # the previous answer's tool calls), or a user message with images. ``content`` is then "".
    turn_messages: list[ChatMessage] = Field(default_factory=list)
    # What shapes this turn's answer besides its length and temperature: tools, tool choice,
    # response format, stop, top_p, seed. None: a plain text answer.
    parameters: LlmParameters | None = None
    route: str | None = None
    models: list[str] | None = None
    # Bounded as LlmParameters is: an unbounded value failed the turn's workflow task (the
    # session stuck retrying it) instead of refusing the turn.
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Publish tokens to the turn's stream while the answer is generated.
    stream: bool = True
    priority_key: int | None = Field(default=None, ge=1, le=5)


class TurnOutput(BaseModel):
    session_id: str
    turn_id: str
    text: str
    model: str | None
    message_seq: int
    usage: Usage = Field(default_factory=Usage)
    cost_usd: Decimal | None = None
    # True when a retried turn was answered from Postgres without calling a model.
    replayed: bool = False
    summarized: bool = False
    context_tokens: int = 0
    budget_tokens: int = 0
    attempts: int = 0
    fallback_used: bool = False
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatSessionOutput(BaseModel):
    session_id: str
    turns: int


# --- Activities' inputs and outputs -------------------------------------------------------------


class FoldPlan(BaseModel):
    """The oldest turns to fold into the running summary before this turn's call."""

    previous_summary: str | None
    messages: list[ChatMessage]
    through_seq: int
    summary_route: str
    summary_max_tokens: int


class PrepareTurnInput(BaseModel):
    session_id: str
    tenant: str
    workflow_id: str
    turn_id: str
    content: str
    # History a client sent along with its first turn (an OpenAI-style request): stored before
    # the turn when the session has no messages yet, ignored afterwards.
    seed_messages: list[ChatMessage] = Field(default_factory=list)
    system_prompt: str | None = None
    route: str | None = None
    models: list[str] | None = None
    answer_tokens: int
    stream_key: str | None = None
    # See TurnInput.turn_messages; when set, ``content`` is "".
    turn_messages: list[ChatMessage] = Field(default_factory=list)
    # The turn's tools and response format: tool definitions take context with every call.
    parameters: LlmParameters | None = None
    # The turn's call without its messages: when set (and no fold is due), the call the context
    # makes (``turn_request``) is planned in the same local activity (``TurnContext.plan``).
    plan_for: LlmRequest | None = None

    def new_messages(self) -> list[ChatMessage]:
        """What this turn adds to the conversation before the answer."""
        return self.turn_messages or [ChatMessage(role="user", content=self.content)]


class TurnContext(BaseModel):
    """What the next call needs, or the answer a retried turn already has."""

    answered: StoredAnswer | None = None
    system_prompt: str | None = None
    summary: str | None = None
    # Unsummarized messages that stay verbatim, oldest first, ending with this turn's question.
    recent: list[ChatMessage] = Field(default_factory=list)
    fold: FoldPlan | None = None
    budget_tokens: int = 0
    context_tokens: int = 0
    # The route plan of ``turn_request(plan_for, ...)``, when asked for and no fold is due.
    plan: RoutePlan | None = None


def turn_request(
    shape: LlmRequest, system_prompt: str | None, summary: str | None, recent: list[ChatMessage]
) -> LlmRequest:
    """The turn's call: its shape (route, parameters, tenant, stream) with the context's
    messages. The one construction both the workflow and ``prepare_turn``'s planning use."""
    return shape.model_copy(update={"messages": build_context(system_prompt, summary, recent)})


class StoreSummaryInput(BaseModel):
    session_id: str
    summary: str
    through_seq: int


class FinishTurnInput(BaseModel):
    session_id: str
    turn_id: str
    text: str
    model: str
    usage: Usage
    cost_usd: Decimal | None = None
    stream_key: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # Why the answer ended ("stop", "length", "tool_calls"...), for the stream's `done` event.
    finish_reason: str | None = None


def turn_answer(turn: TurnToStore, answer: LlmAnswer) -> FinishTurnInput:
    """What storing ``answer`` as ``turn``'s answer writes: the same whether the answering call
    stores it (``AnswerRecords.turn``) or ``finish_turn`` does (a fallback response)."""
    return FinishTurnInput(
        session_id=turn.session_id,
        turn_id=turn.turn_id,
        text=answer.text,
        model=answer.model,
        usage=answer.usage,
        cost_usd=answer.cost_usd,
        stream_key=turn.stream_key,
        tool_calls=answer.tool_calls,
        finish_reason=answer.finish_reason,
    )


class FailTurnInput(BaseModel):
    stream_key: str
    message: str
    error_type: str


def summary_message(summary: str) -> ChatMessage:
    return ChatMessage(role="system", content=f"Summary of the conversation so far:\n{summary}")


def build_context(
    system_prompt: str | None, summary: str | None, recent: list[ChatMessage]
) -> list[ChatMessage]:
    """The messages sent to the model: system prompt, running summary, recent turns."""
    messages = [ChatMessage(role="system", content=system_prompt)] if system_prompt else []
    if summary:
        messages.append(summary_message(summary))
    return messages + recent


def transcript_line(message: ChatMessage) -> str:
    """One message as the summarizer reads it, tool calls and results included."""
    line = f"{message.role}: {message.content}"
    if message.images:
        line += f" [{len(message.images)} image(s)]"
    for call in message.tool_calls:
        line += f"\n{message.role}: [called {call.name}({call.arguments}), call id {call.id}]"
    if message.role == "tool":
        line = f"tool (result of call {message.tool_call_id}): {message.content}"
    return line


def summarization_prompt(plan: FoldPlan) -> list[ChatMessage]:
    transcript = "\n".join(transcript_line(m) for m in plan.messages)
    earlier = f"Summary so far:\n{plan.previous_summary}\n\n" if plan.previous_summary else ""
    return [
        ChatMessage(
            role="system",
            content="You keep the running summary of a conversation. Merge the summary so far "
            "with the new turns into one summary that keeps names, facts, decisions and open "
            "questions. Answer with the summary only.",
        ),
        ChatMessage(role="user", content=f"{earlier}New turns:\n{transcript}"),
    ]
