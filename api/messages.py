"""``POST /v1/messages``: Anthropic's Messages API, on the same durable path as chat completions.

A request becomes a turn of a chat session exactly as a Chat Completions request does (a
stateless one-turn session, or the next turn of ``X-Keel-Session-Id``; ``Idempotency-Key`` is the
turn id), so it gets the same retries, fallbacks, budgets, ledger and stored history; whichever
model the route chooses answers, in Anthropic's shape. ``stream: true`` answers with Anthropic's
events (``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from api.anthropic_schemas import MessagesRequest, message_body, stop_reason, tool_use_block
from api.auth import client_caller
from api.chat import SSE_EVENT_SCHEMA
from api.errors import ANTHROPIC_ERROR_RESPONSES, from_temporal
from api.load_shedding import InFlight
from api.sse import KEEP_ALIVE, SSE_HEADERS, follow_turn, sse
from api.state import (
    IDEMPOTENCY_HEADER,
    SESSION_HEADER,
    KeelApi,
    admission_controlled,
    keel_api,
    request_priority,
)
from api.turns import MESSAGES_CAPABILITY_PARAMETERS, AskedTurn, checked_turn
from contracts.llm import RequestPriority, ToolCall
from infra.token_streams import StreamEvent, StreamEventType
from services.api_tokens import VerifiedToken
from services.chat_client import run_turn, start_turn

router = APIRouter(tags=["messages"])


class AnthropicStreamWriter:
    """keel stream events as Anthropic's: text in a text block, each tool call in a tool_use
    block (its arguments as ``input_json_delta``), and the stored answer's end. A retried
    attempt cannot be taken back from an Anthropic client: its text is only completed."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.attempt: str | None = None
        self.block = -1  # index of the open content block
        self.block_kind: str | None = None
        self.text = ""
        self.tools_seen: set[int] = set()

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> str:
        return sse({"type": name, **data}, event=name)

    def opening(self) -> str:
        message = message_body(self.message_id, self.model, "", [], None, 0, 0)
        message["stop_reason"] = None
        return self._event("message_start", {"message": message})

    def _close(self) -> list[str]:
        if self.block_kind is None:
            return []
        self.block_kind = None
        return [self._event("content_block_stop", {"index": self.block})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[str]:
        lines = self._close()
        self.block += 1
        self.block_kind = kind
        lines.append(
            self._event("content_block_start", {"index": self.block, "content_block": block})
        )
        return lines

    def _text(self, piece: str) -> list[str]:
        lines = (
            [] if self.block_kind == "text" else self._open("text", {"type": "text", "text": ""})
        )
        self.text += piece
        delta = {"type": "text_delta", "text": piece}
        return [*lines, self._event("content_block_delta", {"index": self.block, "delta": delta})]

    def _tool(self, piece: dict[str, Any]) -> list[str]:
        index = int(piece.get("index", 0))
        lines: list[str] = []
        if index not in self.tools_seen:
            self.tools_seen.add(index)
            call = ToolCall(id=str(piece.get("id")), name=str(piece.get("name")), arguments="{}")
            lines = self._open("tool_use", tool_use_block(call, streaming=True))
        arguments = str(piece.get("arguments", ""))
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            lines.append(self._event("content_block_delta", {"index": self.block, "delta": delta}))
        return lines

    def write(self, event: StreamEvent) -> list[str]:
        if event.type == StreamEventType.ATTEMPT:
            self.attempt = event.attempt
            self.model = str(event.data.get("model") or self.model)
            return []
        if event.type == StreamEventType.DELTA:
            if event.attempt != self.attempt:
                return []
            if "tool_call" in event.data:
                return self._tool(event.data["tool_call"])
            return self._text(str(event.data.get("text", "")))
        if event.type == StreamEventType.DONE:
            return self._finish(event.data)
        message = str(event.data.get("message", "the turn failed"))
        error = {"type": "api_error", "message": message}
        return [sse({"type": "error", "error": error}, event="error")]

    def _finish(self, data: dict[str, Any]) -> list[str]:
        lines: list[str] = []
        final = str(data.get("text", ""))
        if final.startswith(self.text) and final != self.text and not self.tools_seen:
            lines += self._text(final[len(self.text) :])
        calls = [ToolCall.model_validate(call) for call in data.get("tool_calls") or []]
        for index, call in enumerate(calls):
            if index not in self.tools_seen:  # not streamed (a replayed turn): whole
                lines += self._tool(
                    {"index": index, "id": call.id, "name": call.name, "arguments": call.arguments}
                )
        lines += self._close()
        stop = stop_reason(data.get("finish_reason"), calls)
        usage = {
            "input_tokens": int(data.get("input_tokens") or 0),
            "output_tokens": int(data.get("output_tokens") or 0),
        }
        lines.append(
            self._event(
                "message_delta",
                {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage},
            )
        )
        lines.append(self._event("message_stop", {}))
        return lines


@router.post(
    "/v1/messages",
    # An Anthropic `message` object; with `stream: true`, Anthropic's SSE events.
    response_model=dict[str, Any],
    responses={
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **ANTHROPIC_ERROR_RESPONSES,
    },
)
@admission_controlled
async def create_message(
    body: MessagesRequest,
    request: Request,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> JSONResponse | StreamingResponse:
    """Create a message (Anthropic-compatible), as a durable turn of a chat session."""
    priority = request_priority(request)
    # Counted in flight from here (or refused with 503); released on every path.
    in_flight = api.shedder.admit(priority, streamed=bool(body.stream))
    try:
        return await _answer(body, request, api, caller, priority, in_flight)
    except BaseException:
        in_flight.release()
        raise


async def _answer(
    body: MessagesRequest,
    request: Request,
    api: KeelApi,
    caller: VerifiedToken,
    priority: RequestPriority,
    in_flight: InFlight,
) -> JSONResponse | StreamingResponse:
    body.refuse_unsupported()
    asked = AskedTurn(
        model=body.model,
        messages=body.chat_messages(),
        parameters=body.parameters(),
        session_id=request.headers.get(SESSION_HEADER),
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        stream=body.stream,
        system=body.system_texts(),
        capability_parameters=MESSAGES_CAPABILITY_PARAMETERS,
    )
    turn = await checked_turn(asked, request, api.settings, caller.tenant, priority)
    headers = {SESSION_HEADER: turn.session_id, IDEMPOTENCY_HEADER: turn.turn_id}
    message_id = f"msg_{turn.turn_id}"
    if not body.stream:
        with in_flight:
            try:
                output = await run_turn(api.client, api.settings, turn)
            except Exception as error:
                raise from_temporal(error) from error
        payload = message_body(
            message_id,
            output.model or body.model,
            output.text,
            output.tool_calls,
            output.finish_reason,
            output.usage.input_tokens,
            output.usage.output_tokens,
        )
        return JSONResponse(payload, headers=headers)

    try:
        handle = await start_turn(api.client, api.settings, turn)
    except Exception as error:
        raise from_temporal(error) from error
    writer = AnthropicStreamWriter(message_id, body.model)

    async def stream() -> AsyncIterator[str]:
        try:
            yield writer.opening()
            async for event in follow_turn(
                api.hub,
                turn.stream_key,
                0,
                handle,
                keep_alive_seconds=api.settings.stream_keep_alive_seconds,
            ):
                if event is None:
                    yield KEEP_ALIVE
                    continue
                in_flight.first_event()
                for line in writer.write(event):
                    yield line
        finally:
            in_flight.release()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={**headers, **SSE_HEADERS},
        background=BackgroundTask(in_flight.release),
    )
