"""LLM providers behind one small interface: stream a chat completion, report text and usage.

The SDKs run with ``max_retries=0`` and an explicit timeout: Temporal owns retries. One client per
provider per process, so connections are pooled across calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, cast

import anthropic
import httpx2
import openai

# The SDK's own request plumbing, for a request without its transform (_unread_chat_completion).
from openai._base_client import make_request_options
from openai._constants import RAW_RESPONSE_HEADER
from openai._response import AsyncAPIResponse, AsyncResponseContextManager
from openai._streaming import AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from activities.llm.images import ImageInliner, image_inliner
from contracts.llm import ChatMessage, LlmParameters, ToolCall, ToolChoice, Usage
from contracts.llm import provider_for_model as provider_for_model
from infra.settings import KeelSettings

SIMULATOR_API_KEY = "keel-simulator"
OnDelta = Callable[[str], Awaitable[None]]


@dataclass
class ToolCallDelta:
    """A piece of a streamed tool call: the first names it, later ones add argument text."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


OnToolDelta = Callable[[ToolCallDelta], Awaitable[None]]


async def ignore_tool_delta(_: ToolCallDelta) -> None:
    pass


@dataclass
class Completion:
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    usage_reported: bool = False
    finish_reason: str | None = None
    first_token_ms: int | None = None
    # Tool calls by stream index, as their pieces arrive: [id, name, arguments so far].
    tool_call_parts: dict[int, list[str]] = field(default_factory=dict)

    def add_tool_delta(self, delta: ToolCallDelta) -> None:
        parts = self.tool_call_parts.setdefault(delta.index, ["", "", ""])
        if delta.id:
            parts[0] = delta.id
        if delta.name:
            parts[1] = delta.name
        parts[2] += delta.arguments

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=call_id, name=name, arguments=arguments or "{}")
            for call_id, name, arguments in (
                self.tool_call_parts[index] for index in sorted(self.tool_call_parts)
            )
        ]

    @property
    def output_text(self) -> str:
        """What the model generated: its text and its tool calls' arguments (for usage)."""
        return self.text + "".join(parts[2] for parts in self.tool_call_parts.values())


class Provider(Protocol):
    name: str
    # Can answer a call as one response (``complete(..., streamed=False)``).
    whole_answers: bool

    async def complete(
        self,
        model: str,
        messages: list[ChatMessage],
        parameters: LlmParameters,
        timeout_seconds: float,
        on_delta: OnDelta,
        partial: Completion,
        on_tool_delta: OnToolDelta = ignore_tool_delta,
        *,
        streamed: bool = True,
    ) -> Completion:
        """Stream a completion into ``partial`` (so a broken stream leaves what arrived).
        ``streamed=False``: the answer may come as one response, without deltas, for a call
        whose tokens nobody watches (a batch page's); ``timeout_seconds`` is then the whole
        answer's wait, not the gap between chunks. A provider may stream anyway."""
        ...


def estimate_tokens(text: str) -> int:
    """Token estimate for text whose usage the provider never reported (a broken stream).

    The same rule as keel's simulator: about four characters a token.
    """
    return max(1, (len(text) + 3) // 4) if text else 0


def _timeout(seconds: float) -> httpx2.Timeout:
    return httpx2.Timeout(seconds, connect=min(10.0, seconds))


class OpenAIProvider:
    """OpenAI and every OpenAI-compatible server (vLLM, Ollama, keel's simulator)."""

    name = "openai"
    whole_answers = True

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client (the provider batch API uses its Files and Batches)."""
        return self._client

    def _unread_chat_completion(
        self, body: dict[str, Any], timeout: httpx2.Timeout
    ) -> AsyncResponseContextManager[AsyncAPIResponse[ChatCompletion]]:
        """``chat.completions.with_streaming_response.create(**body)`` (the response unread:
        a stream, or a whole answer when ``body`` does not ask to stream) without the SDK's
        request transform: keel builds the body in the wire format already, and the SDK's walk
        of it against its TypedDicts cost ≈ 4 ms of the worker's CPU per call before the
        request left (py-spy, a one-turn chat), more as a conversation grows. The same request
        otherwise: path, headers, auth, timeout, the client's error handling (retries stay off:
        ``max_retries=0``). tests/reliability and tests/api drive it through every error."""
        # With the raw-response header the client returns the response unread, as the SDK's
        # streaming wrapper relies on (its own cast, too).
        return AsyncResponseContextManager(
            cast(
                Awaitable[AsyncAPIResponse[ChatCompletion]],
                self._client.post(
                    "/chat/completions",
                    body=body,
                    options=make_request_options(
                        extra_headers={RAW_RESPONSE_HEADER: "stream"},
                        timeout=timeout,
                        security={"bearer_auth": True},
                    ),
                    cast_to=ChatCompletion,
                    stream=True,
                    stream_cls=AsyncStream[ChatCompletionChunk],
                ),
            )
        )

    async def complete(
        self,
        model: str,
        messages: list[ChatMessage],
        parameters: LlmParameters,
        timeout_seconds: float,
        on_delta: OnDelta,
        partial: Completion,
        on_tool_delta: OnToolDelta = ignore_tool_delta,
        *,
        streamed: bool = True,
    ) -> Completion:
        body: dict[str, Any] = {
            "model": model,
            "messages": [openai_message(m) for m in messages],
            "max_completion_tokens": parameters.max_tokens,
            **openai_options(parameters),
        }
        if not streamed:
            # One response: a streamed answer costs the client a parse per chunk and, at a
            # batch's concurrency, ≈ 15 % of its throughput (asyncio + SDK against the
            # simulator, 200 at a time: 156 items/s streamed, 185 not).
            async with self._unread_chat_completion(body, _timeout(timeout_seconds)) as response:
                _read_answer(json.loads(await response.read()), partial)
            return partial
        body.update(stream=True, stream_options={"include_usage": True})
        started = time.perf_counter()
        # The SSE lines are read raw and each chunk decoded with json.loads: the SDK's typed
        # chunks cost ~70% of a batch worker's CPU (cProfile: model construction per chunk), and
        # a call reads only text, usage and the finish reason. Errors are the SDK's still: a
        # non-2xx status raises APIStatusError before the first line, an error chunk APIError.
        async with self._unread_chat_completion(body, _timeout(timeout_seconds)) as response:
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data.startswith("[DONE]"):
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise _stream_error(chunk["error"], response.http_request)
                usage = chunk.get("usage")
                if usage:
                    partial.usage = _usage(usage)
                    partial.usage_reported = True
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if partial.first_token_ms is None:
                            partial.first_token_ms = int((time.perf_counter() - started) * 1000)
                        partial.text += delta
                        await on_delta(delta)
                    delta_fields = choice.get("delta") or {}
                    for call in delta_fields.get("tool_calls") or ():
                        if partial.first_token_ms is None:
                            partial.first_token_ms = int((time.perf_counter() - started) * 1000)
                        function = call.get("function") or {}
                        piece = ToolCallDelta(
                            index=call.get("index", 0),
                            arguments=function.get("arguments") or "",
                            id=call.get("id"),
                            name=function.get("name"),
                        )
                        partial.add_tool_delta(piece)
                        await on_tool_delta(piece)
                    if choice.get("finish_reason"):
                        partial.finish_reason = choice["finish_reason"]
        return partial


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_tokens=details.get("cached_tokens") or 0,
        reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
    )


def _read_answer(answer: dict[str, Any], partial: Completion) -> None:
    """A whole (not streamed) chat completion into ``partial``: what its stream would leave."""
    if answer.get("usage"):
        partial.usage = _usage(answer["usage"])
        partial.usage_reported = True
    for choice in (answer.get("choices") or ())[:1]:
        message = choice.get("message") or {}
        partial.text += message.get("content") or ""
        for index, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            partial.add_tool_delta(
                ToolCallDelta(
                    index=index,
                    arguments=function.get("arguments") or "",
                    id=call.get("id"),
                    name=function.get("name"),
                )
            )
        partial.finish_reason = choice.get("finish_reason")


def _stream_error(error: object, request: httpx2.Request) -> openai.APIError:
    """An error event inside the stream, as the SDK raises it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)


class AnthropicProvider:
    name = "anthropic"
    whole_answers = False

    def __init__(self, client: anthropic.AsyncAnthropic, images: ImageInliner) -> None:
        self._client = client
        self._images = images

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client (the provider batch API uses its Message Batches)."""
        return self._client

    async def complete(
        self,
        model: str,
        messages: list[ChatMessage],
        parameters: LlmParameters,
        timeout_seconds: float,
        on_delta: OnDelta,
        partial: Completion,
        on_tool_delta: OnToolDelta = ignore_tool_delta,
        *,
        streamed: bool = True,  # always streams here: whole_answers is False
    ) -> Completion:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns = await anthropic_turns(messages, self._images)
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": turns,
            "max_tokens": parameters.max_tokens,
            "timeout": _timeout(timeout_seconds),
            **anthropic_options(parameters),
        }
        if system:
            kwargs["system"] = system
        started = time.perf_counter()
        input_tokens = cached = 0
        # Anthropic numbers content blocks; tool calls are numbered among themselves.
        tool_index: dict[int, int] = {}
        async with self._client.messages.stream(**kwargs) as stream:
            async for event in stream:
                if event.type == "message_start":
                    usage = event.message.usage
                    input_tokens = usage.input_tokens
                    cached = usage.cache_read_input_tokens or 0
                elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                    tool_index[event.index] = len(tool_index)
                    piece = ToolCallDelta(
                        index=tool_index[event.index],
                        id=event.content_block.id,
                        name=event.content_block.name,
                    )
                    partial.add_tool_delta(piece)
                    await on_tool_delta(piece)
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    if partial.first_token_ms is None:
                        partial.first_token_ms = int((time.perf_counter() - started) * 1000)
                    partial.text += event.delta.text
                    await on_delta(event.delta.text)
                elif (
                    event.type == "content_block_delta"
                    and event.delta.type == "input_json_delta"
                    and event.index in tool_index
                ):
                    if partial.first_token_ms is None:
                        partial.first_token_ms = int((time.perf_counter() - started) * 1000)
                    piece = ToolCallDelta(
                        index=tool_index[event.index], arguments=event.delta.partial_json
                    )
                    partial.add_tool_delta(piece)
                    await on_tool_delta(piece)
                elif event.type == "message_delta":
                    partial.finish_reason = ANTHROPIC_STOP_REASONS.get(
                        event.delta.stop_reason or "", event.delta.stop_reason
                    )
                    partial.usage = Usage(
                        input_tokens=input_tokens + cached,
                        output_tokens=event.usage.output_tokens,
                        cached_tokens=cached,
                    )
                    partial.usage_reported = True
        return partial


# --- OpenAI wire format ----------------------------------------------------------------------


def openai_message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        for image in message.images:
            url: dict[str, Any] = {"url": image.url}
            if image.detail:
                url["detail"] = image.detail
            parts.append({"type": "image_url", "image_url": url})
        return {"role": message.role, "content": parts}
    return {"role": message.role, "content": message.content}


def openai_tool_choice(choice: ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def openai_options(parameters: LlmParameters) -> dict[str, Any]:
    """The request's optional fields, only those it sets (a field sent as null can be refused)."""
    options: dict[str, Any] = {}
    if parameters.temperature is not None:
        options["temperature"] = parameters.temperature
    if parameters.top_p is not None:
        options["top_p"] = parameters.top_p
    if parameters.seed is not None:
        options["seed"] = parameters.seed
    if parameters.stop:
        options["stop"] = parameters.stop
    if parameters.tools:
        options["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": tool.parameters,
                    **({"strict": tool.strict} if tool.strict is not None else {}),
                },
            }
            for tool in parameters.tools
        ]
        if parameters.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = parameters.parallel_tool_calls
    if parameters.tool_choice is not None:
        options["tool_choice"] = openai_tool_choice(parameters.tool_choice)
    if parameters.json_schema is not None:
        schema: dict[str, Any] = {
            "name": parameters.json_schema_name,
            "schema": parameters.json_schema,
        }
        if parameters.json_schema_description is not None:
            schema["description"] = parameters.json_schema_description
        if parameters.json_schema_strict is not None:
            schema["strict"] = parameters.json_schema_strict
        options["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif parameters.json_object:
        options["response_format"] = {"type": "json_object"}
    return options


# --- Anthropic wire format -------------------------------------------------------------------

# Anthropic's stop reasons in OpenAI's words, which keel's answers use.
ANTHROPIC_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _tool_input(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {}


async def anthropic_turns(
    messages: list[ChatMessage], images: ImageInliner
) -> list[dict[str, Any]]:
    """Chat messages as Anthropic turns: tool results are ``tool_result`` blocks of a user turn,
    an assistant's tool calls ``tool_use`` blocks, images base64 ``image`` blocks; consecutive
    turns of one role are merged, since Anthropic alternates user and assistant."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        blocks: list[dict[str, Any]] = []
        if message.role == "tool":
            role = "user"
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": message.content,
                }
            )
        else:
            role = message.role
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for image in message.images:
                blocks.append({"type": "image", "source": await images.source(image.url)})
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _tool_input(call.arguments),
                    }
                )
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def anthropic_options(parameters: LlmParameters) -> dict[str, Any]:
    options: dict[str, Any] = {}
    # This SDK version takes no `temperature` or `top_p` argument; the API accepts the fields.
    extra: dict[str, Any] = {}
    if parameters.temperature is not None:
        # Above Anthropic's 1 the model is never asked (capabilities.provider_refusals); were it
        # sent, Anthropic's own 400 would say so: never clamped into a different request.
        extra["temperature"] = parameters.temperature
    if parameters.top_p is not None:
        extra["top_p"] = parameters.top_p
    if extra:
        options["extra_body"] = extra
    if parameters.stop:
        options["stop_sequences"] = parameters.stop
    if parameters.tools:
        options["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description else {}),
                "input_schema": tool.parameters,
            }
            for tool in parameters.tools
        ]
    choice: dict[str, Any] | None = None
    if parameters.tool_choice is not None:
        mode = parameters.tool_choice.mode
        choice = {"type": {"required": "any"}.get(mode, mode)}
        if mode == "tool":
            choice["name"] = parameters.tool_choice.name
    if parameters.tools and parameters.parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        options["tool_choice"] = choice
    # Structured outputs: Anthropic's output_config.format takes a JSON schema; a json_object
    # request is the schema of any object.
    if parameters.json_schema is not None:
        options["output_config"] = {
            "format": {"type": "json_schema", "schema": parameters.json_schema}
        }
    elif parameters.json_object:
        options["output_config"] = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    return options


@lru_cache(maxsize=8)
def _openai_client(base_url: str | None, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)


@lru_cache(maxsize=8)
def _anthropic_client(base_url: str | None, api_key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key, max_retries=0)


class ProviderClients:
    """The providers a worker's LLM activities call, as its settings configure them (keys, base
    URLs, the simulator). The SDK clients underneath are shared per (base URL, key) across the
    process, so their connection pools are too."""

    def __init__(self, settings: KeelSettings) -> None:
        self._settings = settings

    def get(self, name: str) -> Provider:
        """The provider ``name`` ("openai" or "anthropic"); LookupError when it has no
        credentials."""
        return get_provider(name, self._settings)


def get_provider(name: str, settings: KeelSettings) -> Provider:
    simulator = settings.effective_simulator_url
    if name == "anthropic":
        if settings.anthropic_api_key is not None:
            return AnthropicProvider(
                _anthropic_client(
                    settings.anthropic_base_url,
                    settings.anthropic_api_key.get_secret_value(),
                ),
                image_inliner(settings),
            )
        if settings.uses_simulator or settings.anthropic_base_url:
            return AnthropicProvider(
                _anthropic_client(settings.anthropic_base_url or simulator, SIMULATOR_API_KEY),
                image_inliner(settings),
            )
        raise LookupError(
            "no Anthropic credentials: set ANTHROPIC_API_KEY, or route this call to another model"
        )
    if settings.openai_api_key is not None:
        return OpenAIProvider(
            _openai_client(settings.openai_base_url, settings.openai_api_key.get_secret_value())
        )
    if settings.uses_simulator or settings.openai_base_url:
        return OpenAIProvider(
            _openai_client(settings.openai_base_url or f"{simulator}/v1", SIMULATOR_API_KEY)
        )
    raise LookupError("no OpenAI credentials: set OPENAI_API_KEY, or route this call elsewhere")
