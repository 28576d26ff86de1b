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

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
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
    ResponseToolCall,
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
    admission_controlled,
    keel_api,
    request_priority,
)
from api.turns import AskedTurn, checked_turn
from contracts.llm import RequestPriority
from infra.settings import KeelSettings
from infra.token_streams import read_events
from services.api_tokens import VerifiedToken
from services.chat_client import TurnRequest, run_turn, start_turn
from workflows.chat_session import TurnOutput

router = APIRouter(tags=["chat"])

SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string"},
    },
}


async def turn_request(
    body: ChatCompletionRequest,
    request: Request,
    settings: KeelSettings,
    tenant: str,
    priority: RequestPriority,
) -> TurnRequest:
    body.refuse_unsupported()
    asked = AskedTurn(
        model=body.model,
        messages=[m.to_chat_message(i) for i, m in enumerate(body.messages)],
        parameters=body.parameters(),
        session_id=request.headers.get(SESSION_HEADER) or body.session_id,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        stream=body.stream,
    )
    return await checked_turn(asked, request, settings, tenant, priority)


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
@admission_controlled
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
    turn = await turn_request(body, request, api.settings, caller.tenant, priority)
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
