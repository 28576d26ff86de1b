"""The OpenAI Chat Completions wire format: requests, answers, SSE chunks and errors.

Shapes follow the ``openai`` SDK's types (``ChatCompletion``, ``ChatCompletionChunk``,
``CompletionUsage``) and the error envelope its ``_make_status_error`` reads:
``{"error": {"message", "type", "param", "code"}}`` with ``x-request-id``.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

from llmsim.catalog import ModelSpec
from llmsim.engine import (
    Completion,
    JsonObjectMode,
    JsonSchemaMode,
    OutputMode,
    Prompt,
    TextMode,
    ToolMode,
    auto_tool_choice,
)
from llmsim.faults import Fault, FaultKind
from llmsim.pipeline import Answer, ApiError, Frame, ParsedRequest, ProviderAdapter
from llmsim.tokens import (
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    count_tokens,
)

SYSTEM_FINGERPRINT = "fp_llmsim"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def retry_headers(seconds: float) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up, as HTTP requires) plus the exact
    ``retry-after-ms`` both SDKs prefer."""
    return {"retry-after": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}


def _error(
    status: int,
    message: str,
    type_: str,
    param: str | None,
    code: str | None,
    *,
    reason: str,
    headers: dict[str, str] | None = None,
) -> ApiError:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return ApiError(status, body, reason=reason, headers=headers)


def _content_text(content: Any, where: str) -> tuple[str, int]:
    """(text, extra tokens) of a message's ``content``: a string, parts, or null."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        raise _error(
            400,
            f"Invalid type for '{where}.content': expected one of a string or an array of objects.",
            "invalid_request_error",
            f"{where}.content",
            "invalid_type",
            reason="invalid_request",
        )
    texts: list[str] = []
    extra = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "refusal"):
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        elif kind == "image_url":
            image = part.get("image_url")
            low = isinstance(image, dict) and image.get("detail") == "low"
            extra += LOW_DETAIL_IMAGE_TOKENS if low else IMAGE_TOKENS
        elif kind in ("input_image", "file", "input_audio"):
            extra += LOW_DETAIL_IMAGE_TOKENS
    return "\n".join(texts), extra


class OpenAIAdapter(ProviderAdapter):
    cache_min_tokens = 1024

    def new_ids(self) -> tuple[str, str]:
        return "req_" + uuid.uuid4().hex, "chatcmpl-" + uuid.uuid4().hex[:29]

    def headers(self, request_id: str) -> dict[str, str]:
        return {"x-request-id": request_id, "openai-processing-ms": "1"}

    # --- errors ---------------------------------------------------------------------------
    def invalid_request(self, message: str, param: str | None = None) -> ApiError:
        return _error(400, message, "invalid_request_error", param, None, reason="invalid_request")

    def model_not_found(self, model: str) -> ApiError:
        return _error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            None,
            "model_not_found",
            reason="not_found",
        )

    def context_error(
        self, spec: ModelSpec, prompt_tokens: int, max_tokens: int | None
    ) -> ApiError:
        window = spec.context_window
        if max_tokens is None or prompt_tokens > window:
            message = (
                f"This model's maximum context length is {window} tokens. However, your messages"
                f" resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
            )
        else:
            message = (
                f"This model's maximum context length is {window} tokens. However, you requested"
                f" {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages,"
                f" {max_tokens} in the completion). Please reduce the length of the messages or"
                " completion."
            )
        return _error(
            400,
            message,
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
            reason="context_length",
        )

    def fault_error(self, fault: Fault, spec: ModelSpec, parsed: ParsedRequest | None) -> ApiError:
        kind = fault.kind
        if kind is FaultKind.RATE_LIMIT:
            wait = fault.retry_after_s
            return _error(
                429,
                f"Rate limit reached for {spec.id} in organization org-llmsim on requests per min"
                f" (RPM): Limit 500, Used 500, Requested 1. Please try again in {wait:g}s. Visit"
                " https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                None,
                "rate_limit_exceeded",
                reason="rate_limit",
                headers={
                    **retry_headers(wait),
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait:g}s",
                },
            )
        if kind is FaultKind.SERVER_ERROR:
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
                reason="server_error",
            )
        if kind is FaultKind.OVERLOADED:
            return _error(
                503,
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None,
                reason="overloaded",
            )
        if kind is FaultKind.CONTENT_POLICY:
            return _error(
                400,
                "Your request was rejected as a result of our safety system. Your prompt may"
                " contain text that is not allowed by our safety system.",
                "invalid_request_error",
                None,
                "content_policy_violation",
                reason="content_policy",
            )
        if kind is FaultKind.CONTEXT_WINDOW:
            prompt_tokens = parsed.prompt.tokens if parsed is not None else 0
            return self.context_error(spec, max(prompt_tokens, spec.context_window + 1), None)
        raise ValueError(f"{kind} is not an HTTP error fault")

    # --- requests -------------------------------------------------------------------------
    def parse(self, body: dict[str, Any], spec: ModelSpec) -> ParsedRequest:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise self.invalid_request("Missing required parameter: 'messages'.", "messages")
        if not messages:
            raise _error(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum"
                " length 1, but got an empty array instead.",
                "invalid_request_error",
                "messages",
                "empty_array",
                reason="invalid_request",
            )

        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise self.invalid_request("Invalid 'tools': expected an array.", "tools")
        extra = count_tokens(json.dumps(tools, sort_keys=True)) if tools else 0

        texts: list[str] = []
        canonical: list[list[str]] = []
        prefixes: list[tuple[str, int]] = []
        chain = hashlib.sha256(json.dumps(tools, sort_keys=True).encode())
        running = extra
        last_user = ""
        unanswered: set[str] = set()
        for i, msg in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(msg, dict):
                raise self.invalid_request(
                    f"Invalid type for '{where}': expected an object.", where
                )
            role = msg.get("role")
            if role not in _ROLES:
                raise _error(
                    400,
                    f"Invalid value: '{role}'. Supported values are: 'system',"
                    " 'assistant', 'user', 'function', 'tool', and 'developer'.",
                    "invalid_request_error",
                    f"{where}.role",
                    "invalid_value",
                    reason="invalid_request",
                )
            unanswered = self._check_tool_order(msg, str(role), unanswered, where)
            text, more = _content_text(msg.get("content"), where)
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    text += f"\n{fn.get('name', '')}({fn.get('arguments', '')})"
            extra += more
            texts.append(text)
            canonical.append([str(role), text])
            if role == "user":
                last_user = text
            chain.update(json.dumps([role, text]).encode())
            running += count_tokens(text) + MESSAGE_OVERHEAD_TOKENS + more
            prefixes.append((chain.hexdigest(), running))

        prompt = Prompt(
            texts=texts,
            last_user_text=last_user,
            fingerprint=json.dumps({"messages": canonical, "tools": tools}, sort_keys=True),
            extra_tokens=extra,
            cache_prefixes=prefixes,
        )

        max_tokens = body.get("max_completion_tokens")
        param = "max_completion_tokens"
        if max_tokens is None:
            max_tokens, param = body.get("max_tokens"), "max_tokens"
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise _error(
                    400,
                    f"Invalid type for '{param}': expected an integer.",
                    "invalid_request_error",
                    param,
                    "invalid_type",
                    reason="invalid_request",
                )
            if max_tokens < 1:
                raise _error(
                    400,
                    f"Invalid '{param}': integer below minimum value. Expected a"
                    f" value >= 1, but got {max_tokens} instead.",
                    "invalid_request_error",
                    param,
                    "integer_below_min_value",
                    reason="invalid_request",
                )

        stop_raw = body.get("stop")
        stop = [stop_raw] if isinstance(stop_raw, str) else list(stop_raw or [])
        if len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise self.invalid_request(
                "Invalid 'stop': expected a string or up to 4 strings.", "stop"
            )

        n = body.get("n", 1) or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise self.invalid_request("Invalid 'n': expected an integer from 1 to 128.", "n")

        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        if stream_options is not None and not stream:
            raise self.invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        include_usage = bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        )

        seed = body.get("seed")
        return ParsedRequest(
            prompt=prompt,
            mode=self._mode(body, tools, texts, str(messages[-1].get("role"))),
            max_tokens=max_tokens,
            stop=stop,
            stream=stream,
            n=n,
            request_seed=seed if isinstance(seed, int) else None,
            include_usage=include_usage,
        )

    def _check_tool_order(
        self, msg: dict[str, Any], role: str, unanswered: set[str], where: str
    ) -> set[str]:
        """OpenAI's rule: every tool call is answered by a ``tool`` message right after its
        assistant message, and a ``tool`` message answers one of those calls. Returns the calls
        still unanswered after ``msg``."""
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id not in unanswered:
                raise self.invalid_request(
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceeding message with 'tool_calls'.",
                    f"{where}.role",
                )
            return unanswered - {call_id}
        if unanswered:
            raise self.invalid_request(
                "An assistant message with 'tool_calls' must be followed by tool messages"
                " responding to each 'tool_call_id'. The following tool_call_ids did not have"
                f" response messages: {', '.join(sorted(unanswered))}",
                "messages",
            )
        if role == "assistant":
            return {
                str(call.get("id"))
                for call in msg.get("tool_calls") or []
                if isinstance(call, dict)
            }
        return set()

    def _mode(
        self, body: dict[str, Any], tools: list[Any], texts: list[str], last_role: str
    ) -> OutputMode:
        choice = body.get("tool_choice")
        functions = {
            t["function"]["name"]: t["function"]
            for t in tools
            if isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
        }
        forced: str | None = None
        if choice == "required" and functions:
            forced = next(iter(functions))
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            forced = str(choice["function"].get("name"))
            if forced not in functions:
                raise self.invalid_request(
                    f"Invalid value for 'tool_choice': function '{forced}' is not in 'tools'.",
                    "tool_choice",
                )
        elif choice in (None, "auto") and last_role == "user":
            forced = auto_tool_choice(functions, texts[-1] if texts else "")
        if forced is not None:
            params = functions[forced].get("parameters") or {"type": "object", "properties": {}}
            return ToolMode(name=forced, parameters=params)

        fmt = body.get("response_format")
        if fmt is None:
            return TextMode()
        if not isinstance(fmt, dict) or fmt.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            raise self.invalid_request(
                "Invalid 'response_format.type': expected one of 'text',"
                " 'json_object', 'json_schema'.",
                "response_format.type",
            )
        if fmt["type"] == "json_object":
            if not any("json" in t.lower() for t in texts):
                raise self.invalid_request(
                    "'messages' must contain the word 'json' in some form,"
                    " to use 'response_format' of type 'json_object'.",
                    "messages",
                )
            return JsonObjectMode()
        if fmt["type"] == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise self.invalid_request(
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    "response_format.json_schema.name",
                )
            schema = spec.get("schema", {})
            if not isinstance(schema, (dict, bool)):
                raise self.invalid_request(
                    "Invalid 'response_format.json_schema.schema': expected an object.",
                    "response_format.json_schema.schema",
                )
            return JsonSchemaMode(schema=schema)
        return TextMode()

    def check_limits(self, spec: ModelSpec, parsed: ParsedRequest) -> None:
        mt = parsed.max_tokens
        if mt is not None and mt > spec.max_output_tokens:
            raise _error(
                400,
                f"max_tokens is too large: {mt}. This model supports at most"
                f" {spec.max_output_tokens} completion tokens, whereas you provided"
                f" {mt}.",
                "invalid_request_error",
                "max_tokens",
                "invalid_value",
                reason="invalid_request",
            )
        prompt_tokens = parsed.prompt.tokens
        if prompt_tokens > spec.context_window:
            raise self.context_error(spec, prompt_tokens, None)
        if mt is not None and prompt_tokens + mt > spec.context_window:
            raise self.context_error(spec, prompt_tokens, mt)

    # --- answers --------------------------------------------------------------------------
    def usage(self, answer: Answer) -> dict[str, Any]:
        prompt_tokens = answer.parsed.prompt.tokens
        completion = sum(c.completion_tokens for c in answer.completions)
        read = answer.cache.read_tokens
        # OpenAI caches in 128-token steps from 1024 on.
        cached = 1024 + (read - 1024) // 128 * 128 if read >= 1024 else 0
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {
                "cached_tokens": min(cached, prompt_tokens),
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": sum(c.reasoning_tokens for c in answer.completions),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @staticmethod
    def finish_reason(c: Completion) -> str:
        return "stop" if c.finish == "stop_sequence" else c.finish

    def response_body(self, answer: Answer) -> dict[str, Any]:
        choices = []
        for i, c in enumerate(answer.completions):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": c.text,
                "refusal": None,
                "annotations": [],
            }
            if c.tool_call is not None:
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": c.tool_call.id,
                        "type": "function",
                        "function": {"name": c.tool_call.name, "arguments": c.tool_call.arguments},
                    }
                ]
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason(c),
                }
            )
        return {
            "id": answer.response_id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.requested_model,
            "choices": choices,
            "usage": self.usage(answer),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def stream_frames(self, answer: Answer, chunk_tokens: int) -> Iterator[Frame]:
        include_usage = answer.parsed.include_usage

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            data: dict[str, Any] = {
                "id": answer.response_id,
                "object": "chat.completion.chunk",
                "created": answer.created,
                "model": answer.requested_model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                data["usage"] = usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        def delta(i: int, d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": i, "delta": d, "logprobs": None, "finish_reason": finish}]

        for i, c in enumerate(answer.completions):
            yield Frame(
                chunk(delta(i, {"role": "assistant", "content": "", "refusal": None})), "open"
            )
            call = c.tool_call
            if call is not None:
                head = {
                    "index": 0,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                yield Frame(chunk(delta(i, {"tool_calls": [head]})), "content")
                for piece in c.chunks(chunk_tokens):
                    args = {"index": 0, "function": {"arguments": piece}}
                    yield Frame(chunk(delta(i, {"tool_calls": [args]})), "content")
            else:
                for piece in c.chunks(chunk_tokens):
                    yield Frame(chunk(delta(i, {"content": piece})), "content")
            yield Frame(chunk(delta(i, {}, self.finish_reason(c))), "close")
        if include_usage:
            yield Frame(chunk([], self.usage(answer)), "close")
        yield Frame(b"data: [DONE]\n\n", "close")
