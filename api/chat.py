"""``POST /v1/chat/completions``: OpenAI's Chat Completions, served by durable chat sessions.

- With a session id (``X-Keel-Session-Id`` header or ``session_id`` field) the request is the next
  turn of that session: its last message is the question, keel's stored history is the context
  (earlier messages in the request only seed a new session).
- Without one, the request is stateless: a one-turn session seeded with the request's messages.
- ``Idempotency-Key`` is the turn id: a retried request returns the first answer.
- ``stream: true`` answers with SSE chunks ending in ``data: [DONE]``; each carries ``id: <seq>``,
  and re-sending the request with the same ``Idempotency-Key`` and ``Last-Event-ID`` resumes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from activities.llm.capabilities import missing_capabilities
from activities.sessions import chain_models
from api.auth import client_caller
from api.errors import ApiError, from_temporal
from api.load_shedding import InFlight
from api.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    KeelExtension,
    ResponseMessage,
    ResponseToolCall,
    refuse,
)
from api.sse import (
    KEEP_ALIVE,
    SSE_HEADERS,
    OpenAIStreamWriter,
    follow_turn,
)
from api.state import (
    IDEMPOTENCY_HEADER,
    SESSION_HEADER,
    KeelApi,
    keel_api,
    request_priority,
)
from contracts.llm import (
    Capability,
    ChatMessage,
    LlmParameters,
    RequestPriority,
    required_capabilities,
)
from contracts.sessions import SESSION_ID_PATTERN
from infra.input_limits import (
    InputTooLarge,
    PromptLimits,
    UnstorableText,
    check_model_name,
    check_prompt,
    check_storable,
)
from infra.settings import KeelSettings
from infra.token_streams import read_events
from services.api_tokens import VerifiedToken
from services.chat_client import TurnRequest, new_session_id, run_turn, start_turn
from services.session_reports import session_tenant
from workflows.chat_session import TurnOutput

router = APIRouter(tags=["chat"])

DEFAULT_MODEL_NAMES = frozenset({"keel", "default"})
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string"},
    },
}


def _route_or_models(model: str, settings: KeelSettings) -> tuple[str | None, list[str] | None]:
    """``model`` names a keel route (its fallback chain answers), ``keel`` (the default route),
    or one model."""
    if model in settings.routes:
        return model, None
    if model in DEFAULT_MODEL_NAMES:
        return None, None
    return None, [model]


def check_request_text(model: str, messages: list[ChatMessage], settings: KeelSettings) -> None:
    """400 for messages over keel's prompt limits, or text keel cannot store (checked before
    anything starts, so a refused request leaves nothing behind)."""
    try:
        check_model_name(model)
    except UnstorableText as error:
        raise ApiError(400, str(error), param="model", code="invalid_model") from None
    try:
        for position, message in enumerate(messages):
            check_storable(message.content, f"messages[{position}].content")
            for text in (
                [message.tool_call_id or ""]
                + [image.url for image in message.images]
                + [f"{c.id}{c.name}{c.arguments}" for c in message.tool_calls]
            ):
                check_storable(text, f"messages[{position}]")
        check_prompt(
            [m.content for m in messages],
            PromptLimits.from_settings(settings),
            "the prompt (all messages)",
            text_checked=True,
        )
    except InputTooLarge as error:
        raise ApiError(400, str(error), param="messages", code="prompt_too_large") from None
    except UnstorableText as error:
        raise ApiError(400, str(error), param="messages", code="invalid_text") from None


# The request field that asks for each capability, named in a refusal.
CAPABILITY_PARAMETERS: dict[str, str] = {
    Capability.TOOLS: "tools",
    Capability.JSON_SCHEMA: "response_format",
    Capability.IMAGES: "messages",
    Capability.SEED: "seed",
}


def check_capabilities(
    route: str | None,
    models: list[str] | None,
    messages: list[ChatMessage],
    parameters: LlmParameters,
    settings: KeelSettings,
) -> None:
    """400 naming the parameter when no model of the chain can honour the request; a chain
    with some models that can is served by those (the others are skipped, audited)."""
    needs = required_capabilities(messages, parameters)
    chain = chain_models(route, models, settings)
    if not needs or not chain:
        return
    missing = {model: missing_capabilities(model, needs, settings) for model in chain}
    if any(not lacks for lacks in missing.values()):
        return
    model, lacks = chain[0], missing[chain[0]]
    where = f"route {route or settings.default_route}" if not models else f"model {model}"
    raise refuse(
        f"{where} cannot honour {', '.join(CAPABILITY_PARAMETERS[c] for c in lacks)}: "
        f"{model} does not support {', '.join(lacks)}"
        + (", nor does any model of its fallback chain" if len(chain) > 1 else ""),
        CAPABILITY_PARAMETERS[lacks[0]],
    )


@dataclass
class TurnShape:
    """A request's messages split as a turn takes them: the context it seeds a new session
    with, and what the turn adds (a question's text, or tool results and images)."""

    earlier: list[ChatMessage]
    content: str
    turn_messages: list[ChatMessage]


def split_turn(messages: list[ChatMessage]) -> TurnShape:
    last = messages[-1]
    if last.role == "tool":
        start = len(messages)
        while start > 0 and messages[start - 1].role == "tool":
            start -= 1
        results = messages[start:]
        caller = messages[start - 1] if start > 0 else None
        if caller is not None:
            asked = {call.id for call in caller.tool_calls}
            unknown = [m.tool_call_id for m in results if m.tool_call_id not in asked]
            if caller.role != "assistant" or unknown:
                raise ApiError(
                    400,
                    "tool messages must answer the tool calls of the assistant message before "
                    f"them (unknown tool_call_id: {', '.join(map(str, unknown)) or 'none'})",
                    param="messages",
                )
        return TurnShape(messages[:start], "", results)
    if last.role != "user" or not (last.content.strip() or last.images):
        raise ApiError(
            400,
            "the last message must be a non-empty user message, or tool results",
            param="messages",
        )
    if last.images:
        return TurnShape(messages[:-1], "", [last])
    return TurnShape(messages[:-1], last.content, [])


def turn_request(
    body: ChatCompletionRequest,
    request: Request,
    settings: KeelSettings,
    tenant: str,
    priority: RequestPriority,
) -> TurnRequest:
    body.refuse_unsupported()
    messages = [m.to_chat_message(i) for i, m in enumerate(body.messages)]
    check_request_text(body.model, messages, settings)
    parameters = body.parameters()
    shape = split_turn(messages)
    return build_turn_request(
        body.model,
        shape,
        parameters,
        request,
        settings,
        tenant,
        priority,
        session_id=request.headers.get(SESSION_HEADER) or body.session_id,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        stream=body.stream,
    )


def build_turn_request(
    model: str,
    shape: TurnShape,
    parameters: LlmParameters,
    request: Request,
    settings: KeelSettings,
    tenant: str,
    priority: RequestPriority,
    *,
    session_id: str | None,
    max_tokens: int | None,
    temperature: float | None,
    stream: bool,
    system: list[str] | None = None,
) -> TurnRequest:
    """The turn of a chat session a request becomes (Chat Completions and Messages alike)."""
    if session_id is not None and not SESSION_ID_PATTERN.match(session_id):
        raise ApiError(
            400,
            "session id: 1-150 characters of letters, digits, '_', '.', ':' or '-'",
            param="session_id",
        )
    route, models = _route_or_models(model, settings)
    check_capabilities(route, models, shape.earlier + shape.turn_messages, parameters, settings)
    system = (system or []) + [m.content for m in shape.earlier if m.role == "system"]
    seed: list[ChatMessage] = [m for m in shape.earlier if m.role != "system"]
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if session_id is None and idempotency_key:
        # A stateless request retried with its key must land on the same one-turn session.
        digest = hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).hexdigest()[:24]
        session_id_for_turn = f"oneshot-{digest}"
    else:
        session_id_for_turn = session_id or new_session_id()
    fields: dict[str, object] = {
        "session_id": session_id_for_turn,
        "content": shape.content,
        "turn_messages": shape.turn_messages,
        # A plain text turn carries no parameters: the same turn as before they existed.
        "parameters": parameters if parameters != LlmParameters() else None,
        "tenant": tenant,
        "seed_messages": seed,
        "system_prompt": "\n\n".join(system) or None,
        "route": route,
        "models": models,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
        "priority": priority,
        "single_turn": session_id is None,
    }
    if idempotency_key:
        fields["turn_id"] = idempotency_key
    try:
        return TurnRequest.model_validate(fields)
    except ValidationError as error:
        problem = error.errors()[0]
        raise ApiError(400, f"{problem['loc'][0]}: {problem['msg']}") from None


def finish_reason(output: TurnOutput) -> str:
    if output.tool_calls:
        return "tool_calls"
    return output.finish_reason or "stop"


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("Last-Event-ID", "0").strip() or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be an event id (an integer)") from None


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    # With `stream: true` the same 200 is an SSE stream: each event's data is a
    # chat.completion.chunk (JSON), the last one `[DONE]`.
    responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> JSONResponse | StreamingResponse:
    """Create a chat completion (OpenAI-compatible), as a durable turn of a chat session."""
    priority = request_priority(request)
    # Counted in flight from here (or refused with 503); released on every path.
    in_flight = api.shedder.admit(priority, streamed=bool(body.stream))
    try:
        return await _answer(body, request, api, caller, priority, in_flight)
    except BaseException:
        in_flight.release()
        raise


async def _answer(
    body: ChatCompletionRequest,
    request: Request,
    api: KeelApi,
    caller: VerifiedToken,
    priority: RequestPriority,
    in_flight: InFlight,
) -> JSONResponse | StreamingResponse:
    turn = turn_request(body, request, api.settings, caller.tenant, priority)
    if not turn.single_turn:
        # Another tenant's session answers as one that does not exist (the session workflow
        # refuses the turn too; this check keeps it from learning the session exists).
        owner = await session_tenant(turn.session_id)
        if owner is not None and owner != caller.tenant:
            raise ApiError(404, f"no session {turn.session_id}", code="session_not_found")
    headers = {SESSION_HEADER: turn.session_id, IDEMPOTENCY_HEADER: turn.turn_id}
    completion_id = f"chatcmpl-{turn.turn_id}"
    if not body.stream:
        with in_flight:
            try:
                output = await run_turn(api.client, api.settings, turn)
            except Exception as error:
                raise from_temporal(error) from error
        completion = ChatCompletion(
            id=completion_id,
            model=output.model or body.model,
            choices=[
                Choice(
                    message=ResponseMessage(
                        content=output.text or (None if output.tool_calls else ""),
                        tool_calls=[ResponseToolCall.of(c) for c in output.tool_calls] or None,
                    ),
                    finish_reason=finish_reason(output),
                )
            ],
            usage=CompletionUsage(
                prompt_tokens=output.usage.input_tokens,
                completion_tokens=output.usage.output_tokens,
                total_tokens=output.usage.input_tokens + output.usage.output_tokens,
            ),
            keel=KeelExtension(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                cost_usd=str(output.cost_usd) if output.cost_usd is not None else None,
                replayed=output.replayed,
            ),
        )
        payload = completion.model_dump(exclude_none=True)
        for choice in payload["choices"]:  # OpenAI sends `content: null` beside tool calls
            choice["message"].setdefault("content", None)
        return JSONResponse(payload, headers=headers)

    after_seq = _last_event_id(request)
    try:
        handle = await start_turn(api.client, api.settings, turn)
    except Exception as error:
        raise from_temporal(error) from error
    writer = OpenAIStreamWriter(
        completion_id,
        body.model,
        turn.session_id,
        turn.turn_id,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )

    async def stream() -> AsyncIterator[str]:
        try:
            if after_seq:
                for seen in await read_events(turn.stream_key):
                    if seen.seq > after_seq:
                        break
                    writer.absorb(seen)
            else:
                yield writer.opening()
            async for event in follow_turn(
                api.hub,
                turn.stream_key,
                after_seq,
                handle,
                keep_alive_seconds=api.settings.stream_keep_alive_seconds,
            ):
                if event is None:
                    yield KEEP_ALIVE
                    continue
                in_flight.first_event(sample=not after_seq)
                for line in writer.write(event):
                    yield line
            yield "data: [DONE]\n\n"
        finally:
            in_flight.release()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={**headers, **SSE_HEADERS},
        background=BackgroundTask(in_flight.release),
    )
