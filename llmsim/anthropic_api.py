"""The Anthropic Messages wire format: requests, answers, SSE events and errors.

Shapes follow the ``anthropic`` SDK's types (``Message``, ``Usage``, the ``Raw*Event``
stream events) and its error envelope ``{"type": "error", "error": {"type", "message"},
"request_id"}`` with the ``request-id`` header.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from llmsim.catalog import ModelSpec
from llmsim.engine import (
    Completion,
    JsonSchemaMode,
    OutputMode,
    Prompt,
    TextMode,
    ToolMode,
    auto_tool_choice,
)
from llmsim.faults import Fault, FaultKind
from llmsim.openai_api import retry_headers
from llmsim.pipeline import Answer, ApiError, Frame, ParsedRequest, ProviderAdapter
from llmsim.tokens import MESSAGE_OVERHEAD_TOKENS, count_tokens

IMAGE_TOKENS = 1_000
"""Charged per image or non-text document block (a mid-sized image's price)."""

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_calls": "tool_use",
}


def _error(
    status: int, type_: str, message: str, *, reason: str, headers: dict[str, str] | None = None
) -> ApiError:
    body = {
        "type": "error",
        "error": {"type": type_, "message": message},
        "request_id": "req_" + uuid.uuid4().hex[:24],
    }
    return ApiError(status, body, reason=reason, headers=headers)


def _invalid(message: str, reason: str = "invalid_request") -> ApiError:
    return _error(400, "invalid_request_error", message, reason=reason)


def _block_text(block: Any, where: str) -> tuple[str, int]:
    """(text, extra tokens) of one content block."""
    if isinstance(block, str):
        return block, 0
    if not isinstance(block, dict):
        raise _invalid(f"{where}: Input should be a valid dictionary or object")
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", "")), 0
    if kind == "tool_use":
        return f"{block.get('name', '')}({json.dumps(block.get('input', {}), sort_keys=True)})", 0
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            parts = [_block_text(b, f"{where}.content") for b in content]
            return "\n".join(t for t, _ in parts), sum(e for _, e in parts)
        return str(content or ""), 0
    if kind == "document":
        source = block.get("source") or {}
        if isinstance(source, dict) and source.get("type") == "text":
            return str(source.get("data", "")), 0
        return "", IMAGE_TOKENS
    if kind == "image":
        return "", IMAGE_TOKENS
    if kind in ("thinking", "redacted_thinking"):
        return "", 0
    return "", 0


def _asks(message: Any) -> bool:
    """A user turn with a question in it, not one that only hands back tool results."""
    if not isinstance(message, dict) or message.get("role") != "user":
        return False
    content = message.get("content")
    if isinstance(content, list):
        return not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    return True


class AnthropicAdapter(ProviderAdapter):
    cache_min_tokens = 1024

    def new_ids(self) -> tuple[str, str]:
        return "req_" + uuid.uuid4().hex[:24], "msg_" + uuid.uuid4().hex[:24]

    def headers(self, request_id: str) -> dict[str, str]:
        return {"request-id": request_id, "anthropic-organization-id": "llmsim"}

    # --- errors ---------------------------------------------------------------------------
    def invalid_request(self, message: str, param: str | None = None) -> ApiError:
        return _invalid(f"{param}: {message}" if param else message)

    def model_not_found(self, model: str) -> ApiError:
        return _error(404, "not_found_error", f"model: {model}", reason="not_found")

    def fault_error(self, fault: Fault, spec: ModelSpec, parsed: ParsedRequest | None) -> ApiError:
        kind = fault.kind
        if kind is FaultKind.RATE_LIMIT:
            return _error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization (llmsim) of 50"
                " requests per minute. For details, refer to:"
                " https://docs.claude.com/en/api/rate-limits. You can see the response headers"
                " for current usage. Please reduce the prompt length or the maximum tokens"
                " requested, or try again later.",
                reason="rate_limit",
                headers={
                    **retry_headers(fault.retry_after_s),
                    "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                },
            )
        if kind is FaultKind.SERVER_ERROR:
            return _error(500, "api_error", "Internal server error", reason="server_error")
        if kind is FaultKind.OVERLOADED:
            return _error(529, "overloaded_error", "Overloaded", reason="overloaded")
        if kind is FaultKind.CONTENT_POLICY:
            return _invalid(
                "This request was blocked because it may violate Anthropic's Usage Policy"
                " (https://www.anthropic.com/legal/aup). Please rephrase your request.",
                reason="content_policy",
            )
        if kind is FaultKind.CONTEXT_WINDOW:
            tokens = parsed.prompt.tokens if parsed is not None else 0
            return self.prompt_too_long(max(tokens, spec.context_window + 1), spec)
        raise ValueError(f"{kind} is not an HTTP error fault")

    def prompt_too_long(self, tokens: int, spec: ModelSpec) -> ApiError:
        return _invalid(
            f"prompt is too long: {tokens} tokens > {spec.context_window} maximum",
            reason="context_length",
        )

    # --- requests -------------------------------------------------------------------------
    def parse(self, body: dict[str, Any], spec: ModelSpec) -> ParsedRequest:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _invalid("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 1
        ):
            # Anthropic's range is 0-1 (OpenAI's is 0-2): a client that clamps nothing is told.
            raise _invalid("temperature: Input should be less than or equal to 1")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _invalid("messages: Field required")
        if not messages:
            raise _invalid("messages: at least one message is required")

        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise _invalid("tools: Input should be a valid list")
        tools_json = json.dumps(tools, sort_keys=True)
        tool_tokens = count_tokens(tools_json) if tools else 0

        # Walk the prompt in the order the API caches it (tools, system, messages), noting
        # the running token count at every cache_control breakpoint.
        chain = hashlib.sha256(tools_json.encode())
        running = tool_tokens
        breakpoints: list[tuple[str, int]] = []
        if any(isinstance(t, dict) and t.get("cache_control") for t in tools):
            breakpoints.append((chain.hexdigest(), running))

        texts: list[str] = []
        canonical: list[list[str]] = []
        extra = tool_tokens
        last_user = ""

        def add_message(role: str, blocks: list[Any], where: str) -> str:
            nonlocal running, extra
            running += MESSAGE_OVERHEAD_TOKENS
            parts: list[str] = []
            for j, block in enumerate(blocks):
                text, more = _block_text(block, f"{where}.{j}")
                parts.append(text)
                # Blocks are joined with "\n", which the token rule never charges for.
                running += count_tokens(text) + more
                extra += more
                chain.update(json.dumps([role, text]).encode())
                if isinstance(block, dict) and block.get("cache_control"):
                    breakpoints.append((chain.hexdigest(), running))
            joined = "\n".join(parts)
            texts.append(joined)
            canonical.append([role, joined])
            return joined

        system = body.get("system")
        if system:
            if isinstance(system, str):
                add_message("system", [system], "system")
            elif isinstance(system, list):
                add_message("system", system, "system")
            else:
                raise _invalid("system: Input should be a valid string or list of text blocks")

        for i, msg in enumerate(messages):
            where = f"messages.{i}"
            if not isinstance(msg, dict):
                raise _invalid(f"{where}: Input should be a valid dictionary")
            role = msg.get("role")
            if role not in ("user", "assistant"):
                raise _invalid(f"{where}.role: Input should be 'user' or 'assistant'")
            content = msg.get("content")
            if isinstance(content, str):
                blocks: list[Any] = [content]
            elif isinstance(content, list):
                blocks = content
            else:
                raise _invalid(f"{where}.content: Input should be a valid string or list")
            text = add_message(str(role), blocks, where)
            if role == "user":
                last_user = text

        prompt = Prompt(
            texts=texts,
            last_user_text=last_user,
            fingerprint=json.dumps({"messages": canonical, "tools": tools}, sort_keys=True),
            extra_tokens=extra,
            cache_prefixes=breakpoints,
        )

        stop = body.get("stop_sequences") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _invalid("stop_sequences: Input should be a valid list of strings")

        return ParsedRequest(
            prompt=prompt,
            mode=self._mode(body, tools, last_user if _asks(messages[-1]) else None),
            max_tokens=max_tokens,
            stop=stop,
            stream=body.get("stream") is True,
        )

    def _mode(self, body: dict[str, Any], tools: list[Any], question: str | None) -> OutputMode:
        by_name = {
            t["name"]: t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)
        }
        choice = body.get("tool_choice")
        forced: str | None = None
        if isinstance(choice, dict):
            if choice.get("type") == "any" and by_name:
                forced = next(iter(by_name))
            elif choice.get("type") == "tool":
                forced = str(choice.get("name"))
                if forced not in by_name:
                    raise _invalid(f"tool_choice: tool '{forced}' not found in tools")
        auto = choice is None or (isinstance(choice, dict) and choice.get("type") == "auto")
        if forced is None and auto and question is not None:
            forced = auto_tool_choice(by_name, question)
        if forced is not None:
            schema = by_name[forced].get("input_schema") or {"type": "object", "properties": {}}
            return ToolMode(name=forced, parameters=schema)

        output_config = body.get("output_config")
        fmt = output_config.get("format") if isinstance(output_config, dict) else None
        fmt = fmt or body.get("output_format")  # the structured-outputs beta spelling
        if isinstance(fmt, dict):
            if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
                raise _invalid(
                    "output_config.format: expected {type: 'json_schema', schema: {...}}"
                )
            return JsonSchemaMode(schema=fmt["schema"])
        return TextMode()

    def check_limits(self, spec: ModelSpec, parsed: ParsedRequest) -> None:
        mt = parsed.max_tokens or 0
        if mt > spec.max_output_tokens:
            raise _invalid(
                f"max_tokens: {mt} > {spec.max_output_tokens}, which is the maximum"
                f" allowed number of output tokens for {spec.id}"
            )
        tokens = parsed.prompt.tokens
        if tokens > spec.context_window:
            raise self.prompt_too_long(tokens, spec)
        if tokens + mt > spec.context_window:
            raise _invalid(
                f"input length and `max_tokens` exceed context limit: {tokens} + {mt} >"
                f" {spec.context_window}, decrease input length or `max_tokens` and try again",
                reason="context_length",
            )

    # --- answers --------------------------------------------------------------------------
    def usage(self, answer: Answer) -> dict[str, Any]:
        total = answer.parsed.prompt.tokens
        read = answer.cache.read_tokens
        created = answer.cache.longest_prefix - read if answer.cache.longest_prefix > read else 0
        return {
            # Anthropic's input_tokens excludes what was read from or written to the cache.
            "input_tokens": total - read - created,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": created,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": answer.completions[0].completion_tokens,
            "service_tier": "standard",
        }

    @staticmethod
    def content_block(c: Completion, *, streaming: bool) -> dict[str, Any]:
        if c.tool_call is not None:
            tool_input: Any = {}
            if not streaming:
                try:
                    tool_input = json.loads(c.tool_call.arguments)
                except ValueError:  # cut short by max_tokens
                    tool_input = {}
            return {
                "type": "tool_use",
                "id": "toolu_" + c.tool_call.id.removeprefix("call_"),
                "name": c.tool_call.name,
                "input": tool_input,
            }
        return {"type": "text", "text": "" if streaming else c.text}

    def response_body(self, answer: Answer) -> dict[str, Any]:
        c = answer.completions[0]
        return {
            "id": answer.response_id,
            "type": "message",
            "role": "assistant",
            "model": answer.requested_model,
            "content": [self.content_block(c, streaming=False)],
            "stop_reason": _STOP_REASONS[c.finish],
            "stop_sequence": c.stop_sequence,
            "usage": self.usage(answer),
        }

    def stream_frames(self, answer: Answer, chunk_tokens: int) -> Iterator[Frame]:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        c = answer.completions[0]
        usage = self.usage(answer)
        start_usage = {**usage, "output_tokens": 1}
        message: dict[str, Any] = {
            "id": answer.response_id,
            "type": "message",
            "role": "assistant",
            "model": answer.requested_model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        yield Frame(event("message_start", {"type": "message_start", "message": message}), "open")
        yield Frame(event("ping", {"type": "ping"}), "open")
        block = self.content_block(c, streaming=True)
        yield Frame(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            "open",
        )
        for piece in c.chunks(chunk_tokens):
            delta = (
                {"type": "input_json_delta", "partial_json": piece}
                if c.tool_call is not None
                else {"type": "text_delta", "text": piece}
            )
            yield Frame(
                event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                ),
                "content",
            )
        yield Frame(
            event("content_block_stop", {"type": "content_block_stop", "index": 0}), "close"
        )
        final_usage = {
            k: v for k, v in usage.items() if k not in ("cache_creation", "service_tier")
        }
        yield Frame(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": _STOP_REASONS[c.finish],
                        "stop_sequence": c.stop_sequence,
                    },
                    "usage": final_usage,
                },
            ),
            "close",
        )
        yield Frame(event("message_stop", {"type": "message_stop"}), "close")
