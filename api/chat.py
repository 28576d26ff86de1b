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

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

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
from contracts.llm import ChatMessage, RequestPriority
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


def turn_request(
    body: ChatCompletionRequest,
    request: Request,
    settings: KeelSettings,
    tenant: str,
    priority: RequestPriority,
) -> TurnRequest:
    messages = [m.to_chat_message(i) for i, m in enumerate(body.messages)]
    check_request_text(body.model, messages, settings)
    question = messages[-1]
    if question.role != "user" or not question.content.strip():
        raise ApiError(400, "the last message must be a non-empty user message", param="messages")
    session_id = request.headers.get(SESSION_HEADER) or body.session_id
    if session_id is not None and not SESSION_ID_PATTERN.match(session_id):
        raise ApiError(
            400,
            "session id: 1-150 characters of letters, digits, '_', '.', ':' or '-'",
            param="session_id",
        )
    route, models = _route_or_models(body.model, settings)
    system = [m.content for m in messages[:-1] if m.role == "system"]
    seed: list[ChatMessage] = [m for m in messages[:-1] if m.role != "system"]
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if session_id is None and idempotency_key:
        # A stateless request retried with its key must land on the same one-turn session.
        digest = hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).hexdigest()[:24]
        session_id_for_turn = f"oneshot-{digest}"
    else:
        session_id_for_turn = session_id or new_session_id()
    fields: dict[str, object] = {
        "session_id": session_id_for_turn,
        "content": question.content,
        "tenant": tenant,
        "seed_messages": seed,
        "system_prompt": "\n\n".join(system) or None,
        "route": route,
        "models": models,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
        "stream": body.stream,
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
                    message=ResponseMessage(content=output.text),
                    finish_reason=output.finish_reason or "stop",
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
        return JSONResponse(completion.model_dump(exclude_none=True), headers=headers)

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
