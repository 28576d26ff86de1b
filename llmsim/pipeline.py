"""The request path both APIs share: parse, look up the model, decide the fault, check
limits, generate, wait out the latency, answer (whole or as a paced stream).

The provider modules only say how their requests look and how their answers and errors
are spelled (``ProviderAdapter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from llmsim.catalog import ModelSpec
from llmsim.connection import drop_connection, wait_for_disconnect
from llmsim.engine import Completion, OutputMode, Prompt, complete, latency
from llmsim.faults import Fault, FaultKind
from llmsim.state import SimState


class ApiError(Exception):
    """An error answer in the provider's own shape."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        *,
        reason: str = "invalid_request",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.reason = reason
        self.headers = headers or {}


@dataclass
class ParsedRequest:
    prompt: Prompt
    mode: OutputMode
    max_tokens: int | None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    n: int = 1
    request_seed: int | None = None
    include_usage: bool = False


@dataclass(frozen=True)
class CacheInfo:
    read_tokens: int
    """Prompt tokens served from the simulated prompt cache."""
    longest_prefix: int
    """Tokens of the longest cacheable prefix of this prompt (written if not read)."""


@dataclass(frozen=True)
class Frame:
    data: bytes
    part: Literal["open", "content", "close"]


@dataclass(frozen=True)
class Answer:
    """Everything a provider needs to spell a successful answer."""

    request_id: str
    response_id: str
    created: int
    spec: ModelSpec
    requested_model: str
    parsed: ParsedRequest
    completions: list[Completion]
    cache: CacheInfo


class ProviderAdapter(ABC):
    cache_min_tokens: int = 1024

    @abstractmethod
    def new_ids(self) -> tuple[str, str]:
        """(request id, response id)."""

    @abstractmethod
    def headers(self, request_id: str) -> dict[str, str]: ...

    @abstractmethod
    def invalid_request(self, message: str, param: str | None = None) -> ApiError: ...

    @abstractmethod
    def model_not_found(self, model: str) -> ApiError: ...

    @abstractmethod
    def parse(self, body: dict[str, Any], spec: ModelSpec) -> ParsedRequest:
        """Validate and reduce the request body; raise ``ApiError`` when it is bad."""

    @abstractmethod
    def check_limits(self, spec: ModelSpec, parsed: ParsedRequest) -> None:
        """Raise the provider's context-window / max-tokens errors."""

    @abstractmethod
    def fault_error(self, fault: Fault, spec: ModelSpec, parsed: ParsedRequest | None) -> ApiError:
        """The error answer for an HTTP-level fault kind."""

    @abstractmethod
    def response_body(self, answer: Answer) -> dict[str, Any]: ...

    @abstractmethod
    def stream_frames(self, answer: Answer, chunk_tokens: int) -> Iterator[Frame]: ...


def conversation_key(body: dict[str, Any]) -> str:
    """What every attempt of one call has in common (both APIs' ``system`` and ``messages``),
    hashed: the request log groups a client's retries by it."""
    material = json.dumps([body.get("system"), body.get("messages")], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def error_response(err: ApiError, adapter: ProviderAdapter, request_id: str) -> JSONResponse:
    return JSONResponse(
        err.body, status_code=err.status, headers={**adapter.headers(request_id), **err.headers}
    )


async def handle_completion(
    request: Request, adapter: ProviderAdapter, state: SimState
) -> Response:
    request_id, response_id = adapter.new_ids()
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error_response(
            adapter.invalid_request(
                "We could not parse the JSON body of your request. (HINT: This likely means"
                " you aren't using your HTTP library correctly.)"
            ),
            adapter,
            request_id,
        )
    if not isinstance(body, dict):
        return error_response(
            adapter.invalid_request("The request body must be a JSON object."), adapter, request_id
        )
    model = body.get("model")
    stream = body.get("stream") is True
    if not isinstance(model, str) or not model:
        return error_response(
            adapter.invalid_request("you must provide a model parameter", "model"),
            adapter,
            request_id,
        )
    spec = state.catalog.get(model)
    if spec is None:
        state.record_rejected(model, "not_found", stream, admitted=False)
        return error_response(adapter.model_not_found(model), adapter, request_id)

    fault = state.admit(model, stream, conversation_key(body))
    if fault is not None and fault.kind is FaultKind.HANG:
        return HangResponse(state, fault.hang_s)
    if fault is not None and fault.kind is FaultKind.STREAM_RESET and not stream:
        return ResetResponse()
    if fault is not None and fault.kind is not FaultKind.STREAM_RESET:
        parsed_for_fault: ParsedRequest | None = None
        if fault.kind is FaultKind.CONTEXT_WINDOW:
            # Only to quote the real prompt size in the message, when the body allows it.
            with contextlib.suppress(ApiError):
                parsed_for_fault = adapter.parse(body, spec)
        return error_response(
            adapter.fault_error(fault, spec, parsed_for_fault), adapter, request_id
        )

    try:
        parsed = adapter.parse(body, spec)
        adapter.check_limits(spec, parsed)
    except ApiError as err:
        state.record_rejected(model, err.reason, stream, admitted=True)
        return error_response(err, adapter, request_id)

    config = state.config
    canned = state.find_canned(model, parsed.prompt.last_user_text)
    completions = [
        complete(
            spec=spec,
            config=config,
            prompt=parsed.prompt,
            mode=parsed.mode,
            max_tokens=parsed.max_tokens,
            stop=parsed.stop,
            choice_index=i,
            request_seed=parsed.request_seed,
            canned=canned,
        )
        for i in range(parsed.n)
    ]
    hit, longest = state.prompt_cache(model, parsed.prompt.cache_prefixes, adapter.cache_min_tokens)
    answer = Answer(
        request_id=request_id,
        response_id=response_id,
        created=int(time.time()),
        spec=spec,
        requested_model=model,
        parsed=parsed,
        completions=completions,
        cache=CacheInfo(read_tokens=hit, longest_prefix=longest),
    )
    prompt_tokens = parsed.prompt.tokens
    completion_tokens = sum(c.completion_tokens for c in completions)

    if not stream:
        await state.sleep(latency(spec, config, completions, chunks=1).total_s)
        state.record_success(model, prompt_tokens, completion_tokens)
        return JSONResponse(adapter.response_body(answer), headers=adapter.headers(request_id))

    frames = list(adapter.stream_frames(answer, config.stream_chunk_tokens))
    content_frames = sum(1 for f in frames if f.part == "content")
    pace = latency(spec, config, completions, chunks=content_frames)
    return PacedStreamResponse(
        frames,
        state=state,
        first_token_s=pace.first_token_s,
        per_chunk_s=pace.per_chunk_s,
        reset_after=fault.after_chunks if fault is not None else None,
        on_complete=lambda: state.record_success(model, prompt_tokens, completion_tokens),
        headers=adapter.headers(request_id),
    )


async def _race(*aws: Any) -> set[asyncio.Task[Any]]:
    """Run until the first finishes; cancel and reap the rest. Returns the finished ones."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done


class PacedStreamResponse(Response):
    """SSE frames paced by the latency model, optionally cut by a connection reset."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: list[Frame],
        *,
        state: SimState,
        first_token_s: float,
        per_chunk_s: float,
        reset_after: int | None,
        on_complete: Callable[[], None],
        headers: dict[str, str],
    ) -> None:
        self.frames = frames
        self.state = state
        self.first_token_s = first_token_s
        self.per_chunk_s = per_chunk_s
        self.reset_after = reset_after
        self.on_complete = on_complete
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        runner = asyncio.ensure_future(self._run(scope, send))
        done = await _race(runner, wait_for_disconnect(receive))
        # A client that hung up mid-stream is neither a success nor our error.
        if runner in done and not runner.cancelled() and runner.result():
            self.on_complete()

    async def _run(self, scope: Scope, send: Send) -> bool:
        """Send the frames; False when the stream was cut by a simulated reset.

        Paced on the stream's own clock, as a provider generates: frame i is due at the first
        token's time plus i chunk intervals, whatever the sending cost. (Sleeping a chunk
        interval after each send made a streamed answer take longer than its latency model
        says, by the event loop's lag per chunk: ≈ 20 % at 200 concurrent streams.)"""
        sent_content = 0
        waited_first = False
        loop = asyncio.get_running_loop()
        due = loop.time()
        for frame in self.frames:
            if (
                self.reset_after is not None
                and (frame.part == "close" or sent_content >= self.reset_after)
                and frame.part != "open"
            ):
                await drop_connection(scope, mid_body=True)
                return False
            if frame.part != "open":
                due += self.per_chunk_s if waited_first else self.first_token_s
                await self.state.sleep(due - loop.time())
                waited_first = True
            if frame.part == "content":
                sent_content += 1
            await send({"type": "http.response.body", "body": frame.data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


class HangResponse(Response):
    """Never answer: hold the request until ``seconds`` pass, the client gives up, or the
    server shuts down; then drop the connection."""

    def __init__(self, state: SimState, seconds: float) -> None:
        self.state = state
        self.seconds = seconds
        self.status_code = 200
        self.background = None
        self.init_headers({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnect = asyncio.ensure_future(wait_for_disconnect(receive))
        done = await _race(disconnect, asyncio.sleep(self.seconds), self.state.wait_closing())
        if disconnect not in done:
            await drop_connection(scope, mid_body=False)


class ResetResponse(Response):
    """Drop the connection without sending a byte of response."""

    def __init__(self) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await drop_connection(scope, mid_body=False)


def new_request_id(prefix: str = "req_") -> str:
    return prefix + uuid.uuid4().hex[:24]
