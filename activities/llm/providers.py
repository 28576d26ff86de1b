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
from typing import Any, Protocol

import anthropic
import httpx2
import openai

from contracts.llm import ChatMessage, LlmParameters, Usage
from contracts.llm import provider_for_model as provider_for_model
from infra.settings import KeelSettings

SIMULATOR_API_KEY = "keel-simulator"
OnDelta = Callable[[str], Awaitable[None]]


@dataclass
class Completion:
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    usage_reported: bool = False
    finish_reason: str | None = None
    first_token_ms: int | None = None


class Provider(Protocol):
    name: str

    async def complete(
        self,
        model: str,
        messages: list[ChatMessage],
        parameters: LlmParameters,
        timeout_seconds: float,
        on_delta: OnDelta,
        partial: Completion,
    ) -> Completion:
        """Stream a completion into ``partial`` (so a broken stream leaves what arrived)."""
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

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client (the provider batch API uses its Files and Batches)."""
        return self._client

    async def complete(
        self,
        model: str,
        messages: list[ChatMessage],
        parameters: LlmParameters,
        timeout_seconds: float,
        on_delta: OnDelta,
        partial: Completion,
    ) -> Completion:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump() for m in messages],
            "max_completion_tokens": parameters.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "timeout": _timeout(timeout_seconds),
        }
        if parameters.temperature is not None:
            kwargs["temperature"] = parameters.temperature
        if parameters.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": parameters.json_schema_name,
                    "schema": parameters.json_schema,
                },
            }
        started = time.perf_counter()
        # The SSE lines are read raw and each chunk decoded with json.loads: the SDK's typed
        # chunks cost ~70% of a batch worker's CPU (cProfile: model construction per chunk), and
        # a call reads only text, usage and the finish reason. Errors are the SDK's still: a
        # non-2xx status raises APIStatusError before the first line, an error chunk APIError.
        responses = self._client.chat.completions.with_streaming_response
        async with responses.create(**kwargs) as response:
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
                    details = usage.get("prompt_tokens_details") or {}
                    completion_details = usage.get("completion_tokens_details") or {}
                    partial.usage = Usage(
                        input_tokens=usage.get("prompt_tokens") or 0,
                        output_tokens=usage.get("completion_tokens") or 0,
                        cached_tokens=details.get("cached_tokens") or 0,
                        reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
                    )
                    partial.usage_reported = True
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if partial.first_token_ms is None:
                            partial.first_token_ms = int((time.perf_counter() - started) * 1000)
                        partial.text += delta
                        await on_delta(delta)
                    if choice.get("finish_reason"):
                        partial.finish_reason = choice["finish_reason"]
        return partial


def _stream_error(error: object, request: httpx2.Request) -> openai.APIError:
    """An error event inside the stream, as the SDK raises it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self._client = client

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
    ) -> Completion:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
        if parameters.json_schema is not None:
            # Anthropic has no response_format: ask for the schema in the system prompt.
            system = (
                f"{system}\n\nAnswer with one JSON object only, valid against this JSON schema:\n"
                f"{json.dumps(parameters.json_schema)}"
            ).strip()
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": turns,
            "max_tokens": parameters.max_tokens,
            "timeout": _timeout(timeout_seconds),
        }
        if system:
            kwargs["system"] = system
        if parameters.temperature is not None:
            # This SDK version takes no `temperature` argument; the API still accepts the field.
            kwargs["extra_body"] = {"temperature": min(parameters.temperature, 1.0)}
        started = time.perf_counter()
        input_tokens = cached = 0
        async with self._client.messages.stream(**kwargs) as stream:
            async for event in stream:
                if event.type == "message_start":
                    usage = event.message.usage
                    input_tokens = usage.input_tokens
                    cached = usage.cache_read_input_tokens or 0
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    if partial.first_token_ms is None:
                        partial.first_token_ms = int((time.perf_counter() - started) * 1000)
                    partial.text += event.delta.text
                    await on_delta(event.delta.text)
                elif event.type == "message_delta":
                    partial.finish_reason = event.delta.stop_reason
                    partial.usage = Usage(
                        input_tokens=input_tokens + cached,
                        output_tokens=event.usage.output_tokens,
                        cached_tokens=cached,
                    )
                    partial.usage_reported = True
        return partial


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
                )
            )
        if settings.uses_simulator or settings.anthropic_base_url:
            return AnthropicProvider(
                _anthropic_client(settings.anthropic_base_url or simulator, SIMULATOR_API_KEY)
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
