"""The LLM call contract shared by workflows (which plan calls) and activities (which make them).

Plain pydantic models, no I/O: workflows import this module inside the sandbox.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from contracts.audit import AuditEventInput
from contracts.traffic import BudgetPolicy


class CallClass(StrEnum):
    """How patient a call may be: interactive callers wait; batch items can wait for minutes."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class RequestPriority(StrEnum):
    """How urgent a caller says its request is. High runs first in Temporal's queues (Priority
    key 1); low is the first to be refused with 503 when keel is saturated."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def priority_key(self) -> int:
        return {"high": 1, "normal": 3, "low": 5}[self.value]


class ErrorClass(StrEnum):
    """Every way a provider call fails, classified once (see activities/llm/errors.py)."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    STREAM_INTERRUPTED = "stream_interrupted"
    CONTEXT_WINDOW = "context_window"
    CONTENT_POLICY = "content_policy"
    BAD_REQUEST = "bad_request"
    AUTHENTICATION = "authentication"
    MODEL_NOT_FOUND = "model_not_found"
    CIRCUIT_OPEN = "circuit_open"
    # The tenant's budget cannot cover the call (activities/llm/budgets.py); never retried.
    BUDGET_EXCEEDED = "budget_exceeded"
    # Over keel's own prompt limit (KEEL_MAX_PROMPT_TOKENS): refused before any provider sees
    # it, and no model of the chain is asked (the limit is the same for all).
    PROMPT_TOO_LARGE = "prompt_too_large"
    # The answer does not validate against the requested JSON schema, or a tool call's
    # arguments against the tool's: retried, then the next model, never handed to the caller.
    INVALID_OUTPUT = "invalid_output"
    # The model cannot honour what the request needs (tools, a JSON schema, images).
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE

    @property
    def error_type(self) -> str:
        """The ApplicationError type workflows see, e.g. ``LlmRateLimited``."""
        return "Llm" + "".join(part.capitalize() for part in self.value.split("_"))


_RETRYABLE = frozenset(
    {
        ErrorClass.RATE_LIMITED,
        ErrorClass.SERVER_ERROR,
        ErrorClass.OVERLOADED,
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION,
        ErrorClass.STREAM_INTERRUPTED,
        ErrorClass.INVALID_OUTPUT,
        ErrorClass.UNKNOWN,
    }
)

NON_RETRYABLE_ERROR_TYPES = [c.error_type for c in ErrorClass if not c.retryable]

# A content-policy refusal or a prompt over keel's limit is about the prompt, not the model: the
# chain stops there, no other model is asked (ask_llm's chain and a batch page alike).
CHAIN_STOPPERS = frozenset({ErrorClass.CONTENT_POLICY, ErrorClass.PROMPT_TOO_LARGE})


def error_class_from_type(error_type: str | None) -> ErrorClass:
    for candidate in ErrorClass:
        if candidate.error_type == error_type:
            return candidate
    return ErrorClass.UNKNOWN


def provider_for_model(model: str) -> tuple[str, str]:
    """``(provider, model name)``: an explicit ``anthropic:``/``openai:`` prefix wins; otherwise
    Claude models go to Anthropic and everything else to the OpenAI-compatible endpoint."""
    prefix, sep, rest = model.partition(":")
    if sep and prefix in ("openai", "anthropic"):
        return prefix, rest
    return ("anthropic" if model.startswith("claude") else "openai"), model


class ToolCall(BaseModel):
    """A model's request to call one tool; ``arguments`` is JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str = "{}"


class ImagePart(BaseModel):
    """An image in a user message: an http(s) URL, or a ``data:<type>;base64,...`` URL."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    # Added after histories were recorded: optional, with defaults that leave old payloads,
    # their prompt hashes and their replays unchanged (see _NEW_MESSAGE_FIELDS).
    images: list[ImagePart] = Field(default_factory=list)
    # An assistant message that calls tools (its content may be empty).
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # A ``tool`` message: the result of the call with this id.
    tool_call_id: str | None = None

    def counted_text(self) -> str:
        """The text a tokenizer sees for this message: its content plus its tool calls."""
        calls = "".join(f"\n{call.name}({call.arguments})" for call in self.tool_calls)
        return self.content + calls

    def canonical(self) -> dict[str, Any]:
        return _without_defaults(self.model_dump(), _NEW_MESSAGE_FIELDS)


# The most output tokens any request may ask for (every model's answer fits in it).
MAX_OUTPUT_TOKENS = 200_000


# A tool's name, as both providers' APIs take it.
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ToolSpec(BaseModel):
    """A function the model may call; ``parameters`` is the JSON schema of its arguments."""

    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolChoice(BaseModel):
    """``auto`` (the model decides), ``none``, ``required`` (some tool) or ``tool`` (``name``)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


class Capability(StrEnum):
    """What a request may need from a model; a model of the chain lacking one is skipped."""

    TOOLS = "tools"
    JSON_SCHEMA = "json_schema"
    IMAGES = "images"
    SEED = "seed"


class LlmParameters(BaseModel):
    max_tokens: int = Field(default=1024, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # A JSON schema the answer must satisfy (OpenAI json_schema response format); keel
    # validates the answer against it (an invalid answer is a retried, classified error).
    json_schema: dict[str, Any] | None = None
    json_schema_name: str = "answer"
    # Fields below were added after histories were recorded (see _NEW_PARAMETER_FIELDS).
    json_schema_strict: bool | None = None
    # What the answer's format is for (OpenAI's json_schema.description), told to the model.
    json_schema_description: str | None = None
    # OpenAI's json_object response format: any JSON object.
    json_object: bool = False
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stop: list[str] = Field(default_factory=list, max_length=4)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    # Validate a structured answer and tool calls (activities/llm/output_checks.py); off for a
    # caller that handles an unreadable answer itself.
    check_output: bool = True

    def canonical(self) -> dict[str, Any]:
        return _without_defaults(self.model_dump(), _NEW_PARAMETER_FIELDS)

    def tool(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)


def _without_defaults(dumped: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``dumped`` without the fields added later while they hold their defaults: a request
    that uses none of them hashes (prompt hash, cache key) as it did before they existed."""
    return {k: v for k, v in dumped.items() if k not in added or v != added[k]}


_NEW_MESSAGE_FIELDS: dict[str, Any] = {"images": [], "tool_calls": [], "tool_call_id": None}
_NEW_PARAMETER_FIELDS: dict[str, Any] = {
    "json_schema_strict": None,
    "json_schema_description": None,
    "json_object": False,
    "tools": [],
    "tool_choice": None,
    "parallel_tool_calls": None,
    "stop": [],
    "top_p": None,
    "seed": None,
    "check_output": True,
}


def required_capabilities(messages: list[ChatMessage], parameters: LlmParameters) -> set[str]:
    """What a model must support to answer this request as asked."""
    needs: set[str] = set()
    if parameters.tools or any(m.tool_calls or m.role == "tool" for m in messages):
        needs.add(Capability.TOOLS)
    if parameters.json_schema is not None:
        needs.add(Capability.JSON_SCHEMA)
    if any(m.images for m in messages):
        needs.add(Capability.IMAGES)
    if parameters.seed is not None:
        needs.add(Capability.SEED)
    return needs


class CallPolicy(BaseModel):
    """Timeouts and retries for one call class; resolved from settings by the route planner."""

    start_to_close_seconds: float
    heartbeat_seconds: float
    # The call's deadline on one model: rate limits are retried until then (Retry-After honoured).
    schedule_to_close_seconds: float
    # Attempts that fail for reasons other than a rate limit (activities/llm/retries.py).
    maximum_attempts: int
    initial_interval_seconds: float
    backoff_coefficient: float
    maximum_interval_seconds: float

    @property
    def start_to_close(self) -> timedelta:
        return timedelta(seconds=self.start_to_close_seconds)

    @property
    def heartbeat(self) -> timedelta:
        return timedelta(seconds=self.heartbeat_seconds)

    @property
    def schedule_to_close(self) -> timedelta:
        return timedelta(seconds=self.schedule_to_close_seconds)


class FallbackPolicy(StrEnum):
    """What happens when every model in the chain has failed."""

    FAIL = "fail"  # a clear, non-retryable failure naming each model's error
    RESPONSE = "response"  # answer with the configured fallback response
    SAFE_DEFAULT = "safe_default"  # the configured safe default (e.g. a moderation block)


class LlmRequest(BaseModel):
    """What a workflow asks for; the route (or explicit models) decides who answers."""

    messages: list[ChatMessage]
    route: str | None = None
    models: list[str] | None = None
    parameters: LlmParameters = Field(default_factory=LlmParameters)
    call_class: CallClass = CallClass.INTERACTIVE
    fallback_policy: FallbackPolicy | None = None
    fallback_response: str | None = None
    use_cache: bool = False
    tenant: str = "default"
    # Purpose of the call in the business process, recorded in the ledger and audit rows.
    purpose: str = "completion"
    # Publish the answer's tokens, as they arrive, to this token stream (infra/token_streams.py).
    stream_key: str | None = None
    # Temporal task priority of the call (1 = most urgent; None: inherit the workflow's).
    priority_key: int | None = Field(default=None, ge=1, le=5)
    # What to do when the tenant's budget cannot cover the call; None: the call class's
    # default from settings (interactive: downgrade; batch: refuse, and the batch pauses).
    budget_policy: BudgetPolicy | None = None

    def prompt_hash(self, model: str) -> str:
        return prompt_hash(model, self.messages, self.parameters)

    def required_capabilities(self) -> set[str]:
        return required_capabilities(self.messages, self.parameters)


def prompt_hash(model: str, messages: list[ChatMessage], parameters: LlmParameters) -> str:
    canonical = json.dumps(
        {
            "model": model,
            "messages": [m.canonical() for m in messages],
            "parameters": parameters.canonical(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ModelCandidate(BaseModel):
    model: str
    provider: str
    breaker_open: bool = False
    breaker_retry_in_seconds: float | None = None
    # Why this model cannot answer the request as asked (e.g. "does not support tools"):
    # the chain skips it with an audit row instead of sending it what it would drop.
    unsupported: str | None = None


class BudgetState(BaseModel):
    """One budget of a tenant as it stands: metered spend plus reservations of calls in flight."""

    tenant: str
    period: Literal["day", "month"]
    limit_usd: Decimal
    spent_usd: Decimal = Decimal(0)
    reserved_usd: Decimal = Decimal(0)

    @property
    def left_usd(self) -> Decimal:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    @property
    def left_ratio(self) -> float:
        return float(self.left_usd / self.limit_usd) if self.limit_usd > 0 else 0.0

    @property
    def name(self) -> str:
        return f"{self.tenant}/{self.period}"

    def describe(self) -> str:
        return (
            f"budget {self.name}: ${self.spent_usd:.4f} spent + ${self.reserved_usd:.4f} "
            f"reserved by calls in flight, of ${self.limit_usd:.4f}"
        )


class RoutePlan(BaseModel):
    route: str | None
    candidates: list[ModelCandidate]
    policy: CallPolicy
    task_queue: str
    fallback_policy: FallbackPolicy
    fallback_response: str | None
    # Which of the route's chains serves this call: "primary" or a canary's label.
    chain: str = "primary"
    # The route the request named, when the planner chose a cheaper one (and why).
    downgraded_from: str | None = None
    downgrade_reason: str | None = None
    # Where to go when the budget refuses a call on this route (BudgetPolicy.DOWNGRADE).
    downgrade_route: str | None = None
    budget_policy: BudgetPolicy = BudgetPolicy.REFUSE
    # The tenant's budgets, and whether they can cover this call's estimate right now.
    budgets: list[BudgetState] = Field(default_factory=list)
    # Set when a budget cannot cover the first candidate's worst-case cost right now (the
    # planner reads without locking; complete_chat's check is the one that holds).
    budget_refusal: str | None = None
    budget_blocking: BudgetState | None = None
    # How a paused call (BudgetPolicy.PAUSE) polls for room, and for how long at most.
    pause_poll_seconds: float = 15
    pause_poll_max_seconds: float = 300
    pause_max_seconds: float = 86_400


class TurnToStore(BaseModel):
    """The chat turn an answer belongs to: stored in ``messages`` and its stream ended."""

    session_id: str
    turn_id: str
    stream_key: str | None = None


class AnswerRecords(BaseModel):
    """What the call writes with its answer, in the transaction of its ledger row, so the
    caller's own record of the answer (a local activity after the call) is off the path
    between the provider's last token and the reply."""

    # Stored as the turn's answer; the stream's `done` event carries the stored text.
    turn: TurnToStore | None = None
    # Appended to the audit trail with ``model`` and ``output_tokens`` of the answer added.
    audit: AuditEventInput | None = None


class AttemptInput(BaseModel):
    """One model's turn at answering (the activity retries it under the route's policy)."""

    request: LlmRequest
    model: str
    provider: str
    route: str | None = None
    # The route's chain this model belongs to ("primary" or a canary's label): a metric label,
    # so a canary is compared with its route's primary chain.
    chain: str = "primary"
    # The model that failed (or was skipped) before this one, for the fallback metric.
    fallback_from: str | None = None
    # Written with the answer if this attempt answers (None: the caller records it itself).
    records: AnswerRecords | None = None


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class StoredAnswer(BaseModel):
    """An assistant message as stored in ``messages``."""

    text: str
    model: str | None = None
    message_seq: int
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class LlmAnswer(BaseModel):
    text: str
    model: str
    provider: str
    # The tools the model asks to call (finish_reason "tool_calls"); empty for a text answer.
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cost_usd: Decimal | None = None
    finish_reason: str | None = None
    cached: bool = False
    # The answer came from the final fallback policy, not from a model.
    fallback_used: bool = False
    attempts: int = 1
    latency_ms: int = 0
    # Models that failed before this answer, with their error classes, in order.
    failed_models: list[tuple[str, str]] = Field(default_factory=list)
    # The call wrote its ``AnswerRecords``; ``stored``: the turn's answer as stored (a retried
    # call finds the first answer stored, and that one stands).
    records_written: bool = False
    stored: StoredAnswer | None = None


def answered_audit(audit: AuditEventInput, answer: LlmAnswer) -> AuditEventInput:
    """``AnswerRecords.audit`` as written for ``answer``: its payload with the answering model
    and its output tokens added."""
    payload = {"model": answer.model, **audit.payload, "output_tokens": answer.usage.output_tokens}
    return audit.model_copy(update={"payload": payload})


class LlmFailureType(StrEnum):
    """``ApplicationError.type`` of the ways an LLM call ends for good, which callers (batches,
    the API) tell apart: the values are the compatibility surface recorded in histories."""

    CHAIN_EXHAUSTED = "LlmChainExhausted"
    BUDGET_EXCEEDED = "LlmBudgetExceeded"
    UNKNOWN_ROUTE = "UnknownRoute"


class LedgerOutcome(StrEnum):
    """``llm_calls.outcome``: how one attempt ended (one ledger row per attempt)."""

    OK = "ok"
    CACHED = "cached"
    ERROR = "error"
    IN_FLIGHT = "in_flight"
    # The worker died mid-call; the row was closed by the next run's sweep.
    INTERRUPTED = "interrupted"
    # Refused before reaching a provider: nothing billed.
    SHORT_CIRCUITED = "short_circuited"
    BUDGET_REFUSED = "budget_refused"
    THROTTLED = "throttled"
    PROMPT_TOO_LARGE = "prompt_too_large"


class CircuitState(StrEnum):
    """``circuit_breakers.state`` of one provider model (activities/llm/circuit_breaker.py)."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"
