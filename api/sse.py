"""Server-sent events: following a turn's token stream and writing it out, resumably.

Every event carries ``id: <seq>``; a client that reconnects with ``Last-Event-ID: <seq>`` gets
the events after it (from Postgres, then live), with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from temporalio.client import WorkflowUpdateHandle

from api.errors import from_temporal
from api.openai_schemas import CompletionUsage, KeelExtension, completion_chunk
from infra.token_streams import StreamEvent, StreamEventType, StreamHub
from workflows.chat_session import TurnOutput

# After the turn's Update has returned, its `done` event is already committed; this is only a
# backstop for a stream pruned or unreachable in the meantime.
DONE_GRACE_SECONDS = 5.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(
    data: str | dict[str, Any], *, event_id: int | None = None, event: str | None = None
) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines.append(f"data: {payload}")
    return "\n".join(lines) + "\n\n"


# A comment line with no blank line after it. The blank line matters: the openai SDK (and other
# decoders, openai/openai-python#2722) dispatch an event at every blank line once an earlier
# event carried an ``id:``, so ``: keep-alive\n\n`` reaches them as an event with empty data and
# ``json.loads("")`` ends the stream with JSONDecodeError. Without the blank line the comment is
# ignored by every decoder and still keeps proxies from timing the connection out.
KEEP_ALIVE = ": keep-alive\n"


def _event_from_output(output: TurnOutput) -> StreamEvent:
    return StreamEvent(
        seq=0,
        type=StreamEventType.DONE,
        data={
            "turn_id": output.turn_id,
            "text": output.text,
            "model": output.model,
            "message_seq": output.message_seq,
            "input_tokens": output.usage.input_tokens,
            "output_tokens": output.usage.output_tokens,
            "cost_usd": str(output.cost_usd) if output.cost_usd is not None else None,
            "tool_calls": [call.model_dump() for call in output.tool_calls],
            "finish_reason": output.finish_reason,
        },
    )


def _error_event(error: BaseException) -> StreamEvent:
    api_error = from_temporal(error)
    return StreamEvent(
        seq=0,
        type=StreamEventType.ERROR,
        data={"message": api_error.message, "type": api_error.code or api_error.error_type},
    )


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def follow_turn(
    hub: StreamHub,
    stream_key: str,
    after_seq: int,
    handle: WorkflowUpdateHandle[TurnOutput] | None,
    *,
    keep_alive_seconds: float,
) -> AsyncIterator[StreamEvent | None]:
    """The turn's events after ``after_seq`` until a terminal one; ``None`` means "quiet for
    ``keep_alive_seconds``" (time for a keep-alive). With the turn's ``handle``, a turn that
    fails before it streams anything (or whose stream is gone) still ends, with an event made
    from its outcome; such events have seq 0."""
    events = hub.follow(stream_key, after_seq).__aiter__()
    outcome = asyncio.ensure_future(handle.result()) if handle is not None else None
    next_event: asyncio.Future[StreamEvent] | None = None
    try:
        while True:
            if next_event is None:
                next_event = asyncio.ensure_future(events.__anext__())
            waiting: set[asyncio.Future[Any]] = {next_event}
            if outcome is not None and not outcome.done():
                waiting.add(outcome)
            timeout = DONE_GRACE_SECONDS if outcome is not None and outcome.done() else None
            done, _ = await asyncio.wait(
                waiting,
                timeout=timeout or keep_alive_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if next_event in done:
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    return
                next_event = None
                yield event
                if event.terminal:
                    return
                continue
            if outcome is not None and outcome.done():
                if outcome.exception() is not None:
                    yield _error_event(outcome.exception())  # type: ignore[arg-type]
                    return
                if timeout is not None:  # the grace period passed without the `done` event
                    yield _event_from_output(outcome.result())
                    return
                continue  # the Update just finished: give its `done` event the grace period
            yield None
    finally:
        for task in (next_event, outcome):
            if task is not None and not task.done():
                task.cancel()
                # A cancelled wait on the Update raises its own error type: consume it.
                task.add_done_callback(_consume_outcome)
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]


class OpenAIStreamWriter:
    """Turns keel stream events into ``chat.completion.chunk`` SSE lines.

    Content deltas of the current attempt pass straight through. When a new attempt starts
    after text was already sent, a chunk with no choices and ``keel.event = "retry"`` tells a
    keel-aware client to discard what it has (plain OpenAI clients cannot be told). The final
    ``done`` event is authoritative: if the streamed text is a prefix of it, the rest is sent;
    if not, a retry marker and the whole text follow.
    """

    def __init__(
        self,
        completion_id: str,
        model: str,
        session_id: str,
        turn_id: str,
        include_usage: bool,
    ) -> None:
        self.completion_id = completion_id
        self.model = model
        self.session_id = session_id
        self.turn_id = turn_id
        self.include_usage = include_usage
        self.attempt: str | None = None
        self.text = ""
        # Tool calls streamed in the current attempt: index -> arguments sent so far.
        self.tool_arguments: dict[int, str] = {}

    def _chunk(self, **fields: Any) -> dict[str, Any]:
        return completion_chunk(self.completion_id, self.model, **fields)

    def _retry_marker(self, attempt: int | None) -> dict[str, Any]:
        return self._chunk(
            keel=KeelExtension(
                session_id=self.session_id,
                turn_id=self.turn_id,
                event="retry",
                attempt=attempt,
                model=self.model,
            )
        )

    def opening(self) -> str:
        return sse(self._chunk(delta={"role": "assistant", "content": ""}))

    def absorb(self, event: StreamEvent) -> None:
        """Replay an event the client already received (a resumed stream), emitting nothing."""
        self.write(event)

    def write(self, event: StreamEvent) -> list[str]:
        event_id = event.seq or None
        if event.type == StreamEventType.ATTEMPT:
            restarted = bool(self.text or self.tool_arguments)
            self.attempt, self.text, self.tool_arguments = event.attempt, "", {}
            self.model = str(event.data.get("model") or self.model)
            if restarted:
                return [sse(self._retry_marker(event.data.get("attempt")), event_id=event_id)]
            return []
        if event.type == StreamEventType.DELTA:
            if event.attempt != self.attempt:
                return []  # an abandoned attempt still talking
            if "tool_call" in event.data:
                call = self._tool_piece(event.data["tool_call"])
                return [sse(self._chunk(delta={"tool_calls": [call]}), event_id=event_id)]
            piece = str(event.data.get("text", ""))
            self.text += piece
            return [sse(self._chunk(delta={"content": piece}), event_id=event_id)]
        if event.type == StreamEventType.DONE:
            return self._finish(event, event_id)
        message = str(event.data.get("message", "the turn failed"))
        code = str(event.data.get("type", "turn_failed"))
        return [sse({"error": {"message": message, "type": "api_error", "code": code}},
                    event_id=event_id)]  # fmt: skip

    def _tool_piece(self, piece: dict[str, Any]) -> dict[str, Any]:
        """A tool-call delta in OpenAI's shape: the first piece of a call names it."""
        index = int(piece.get("index", 0))
        arguments = str(piece.get("arguments", ""))
        out: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if index not in self.tool_arguments:
            out["id"] = piece.get("id")
            out["type"] = "function"
            out["function"]["name"] = piece.get("name")
        self.tool_arguments[index] = self.tool_arguments.get(index, "") + arguments
        return out

    def _finish(self, event: StreamEvent, event_id: int | None) -> list[str]:
        final = str(event.data.get("text", ""))
        self.model = str(event.data.get("model") or self.model)
        calls = event.data.get("tool_calls") or []
        lines = []
        if final != self.text:
            if final.startswith(self.text):
                rest = final[len(self.text) :]
            else:
                lines.append(sse(self._retry_marker(None)))
                rest = final
            self.text = final
            lines.append(sse(self._chunk(delta={"content": rest})))
        # The stored calls are authoritative: what the stream did not carry whole (a replayed
        # turn, a stream resumed after its deltas were pruned) is sent now, whole.
        for index, call in enumerate(calls):
            sent = self.tool_arguments.get(index)
            if sent == call["arguments"]:
                continue
            if sent is not None:  # cannot be taken back: say so to keel-aware clients
                lines.append(sse(self._retry_marker(None)))
                self.tool_arguments = {}
            piece = {"index": index, "id": call["id"], "name": call["name"]}
            piece["arguments"] = call["arguments"]
            lines.append(sse(self._chunk(delta={"tool_calls": [self._tool_piece(piece)]})))
        # As the non-streamed answer says it: tool calls, else the model's own reason.
        finish = "tool_calls" if calls else str(event.data.get("finish_reason") or "stop")
        lines.append(sse(self._chunk(delta={}, finish_reason=finish), event_id=event_id))
        if self.include_usage:
            prompt = int(event.data.get("input_tokens") or 0)
            completion = int(event.data.get("output_tokens") or 0)
            usage = CompletionUsage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
            )
            lines.append(sse(self._chunk(usage=usage)))
        return lines


def native_event(event: StreamEvent) -> str:
    """keel's own SSE format: the event type as the SSE event, its data as JSON."""
    return sse(
        {"attempt": event.attempt, **event.data} if event.attempt else event.data,
        event_id=event.seq or None,
        event=event.type.value,
    )
