"""The LLM activity's side of a token stream: one attempt's deltas, published as they arrive.

Each attempt opens with an ``attempt`` event, so a client that already shows text from a failed
attempt (a stream cut midway, a model that fell over) knows to discard it; every delta names its
attempt. Calls without a ``stream_key`` stream nothing and cost nothing extra.
"""

from __future__ import annotations

from types import TracebackType

from temporalio import activity

from infra.token_streams import StreamEventType, StreamPublisher


class AttemptStream:
    """Publishes one activity attempt's text to a token stream (see infra/token_streams.py)."""

    def __init__(self, stream_key: str, model: str) -> None:
        info = activity.info()
        self.label = f"{info.activity_id}/{info.attempt}"
        self._attempt_number = info.attempt
        self._model = model
        self._publisher = StreamPublisher(stream_key)

    def delta(self, text: str) -> None:
        self._publisher.publish(StreamEventType.DELTA, {"text": text}, attempt=self.label)

    def tool_delta(self, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        """A piece of a tool call: the first of a call names it, later ones add arguments."""
        piece: dict[str, object] = {"index": index, "arguments": arguments}
        if call_id:
            piece["id"] = call_id
        if name:
            piece["name"] = name
        self._publisher.publish(StreamEventType.DELTA, {"tool_call": piece}, attempt=self.label)

    async def __aenter__(self) -> AttemptStream:
        await self._publisher.__aenter__()
        self._publisher.publish(
            StreamEventType.ATTEMPT,
            {"attempt": self._attempt_number, "model": self._model},
            attempt=self.label,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._publisher.aclose()


class NoStream:
    """Stands in for ``AttemptStream`` when nobody is watching."""

    def delta(self, text: str) -> None:
        pass

    def tool_delta(self, index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        pass

    async def __aenter__(self) -> NoStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass


def open_attempt_stream(stream_key: str | None, model: str) -> AttemptStream | NoStream:
    return AttemptStream(stream_key, model) if stream_key else NoStream()
