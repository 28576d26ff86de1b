"""The slice of OpenAI's Chat Completions wire format keel serves (requests in, responses out).

Served completely or refused explicitly: every request field keel does not honour is a 400 that
names it, except a short list of fields that change nothing about the answer (``user``,
``metadata``), and fields sent at their neutral value (``logprobs: false``,
``frequency_penalty: 0``...), which is what many clients send by default.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.wire_checks import (
    check_tools,
    refuse,
    refuse_extra_fields,
    refuse_unknown_parameters,
)
from contracts.llm import (
    MAX_OUTPUT_TOKENS,
    ChatMessage,
    ImagePart,
    LlmParameters,
    ToolCall,
    ToolChoice,
    ToolName,
    ToolSpec,
)
from infra.input_limits import MAX_MODEL_NAME_LENGTH

# Accepted and not forwarded: they identify or label the caller, the answer is the same.
HARMLESS_FIELDS = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key"})
# Fields keel does not honour, accepted only at the value that means "not used".
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "store": (None, False),
    "modalities": (None, ["text"]),
    "service_tier": (None, "auto", "default"),
    "function_call": (None, "none"),
    "functions": (None, []),
}


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class RequestToolCall(BaseModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[RequestToolCall] | None = None
    tool_call_id: str | None = None

    def to_chat_message(self, position: int) -> ChatMessage:
        where = f"messages[{position}]"
        for name, value in (self.model_extra or {}).items():
            if value is not None and name != "refusal":
                raise refuse(f"{where}.{name} is not supported by keel", f"{where}.{name}")
        if self.role == "function":
            raise ApiError(
                400,
                f"{where}: role 'function' (the legacy function-calling format) is not "
                "supported by keel; send tool results as role 'tool'",
                param=f"messages.{position}.role",
            )
        images: list[ImagePart] = []
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.type == "text" and part.text is not None:
                    texts.append(part.text)
                elif part.type == "image_url" and part.image_url is not None:
                    if self.role != "user":
                        raise ApiError(
                            400, f"{where}: images are accepted in user messages only",
                            param=f"messages.{position}.content",
                        )  # fmt: skip
                    images.append(ImagePart(url=part.image_url.url, detail=part.image_url.detail))
                else:
                    raise ApiError(
                        400,
                        f"{where}: content part type {part.type!r} is not supported by keel "
                        "(text and image_url are)",
                        param=f"messages.{position}.content",
                    )
            content = "".join(texts)
        else:
            content = self.content or ""
        if self.role == "tool":
            if not self.tool_call_id:
                raise ApiError(
                    400, f"{where}: a tool message needs tool_call_id",
                    param=f"messages.{position}.tool_call_id",
                )  # fmt: skip
            return ChatMessage(role="tool", content=content, tool_call_id=self.tool_call_id)
        calls = [
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in self.tool_calls or []
        ]
        if calls and self.role != "assistant":
            raise ApiError(
                400, f"{where}: only assistant messages carry tool_calls",
                param=f"messages.{position}.tool_calls",
            )  # fmt: skip
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=content, images=images, tool_calls=calls)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")  # refused by name (refuse_unsupported)

    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_NAME_LENGTH,
        description="A keel route name, or a model id.",
    )
    messages: list[RequestMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1, description="keel answers with one choice.")
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    session_id: str | None = Field(
        default=None, description="keel: continue this chat session (or X-Keel-Session-Id)."
    )

    def refuse_unsupported(self) -> None:
        """400 for a field keel would otherwise ignore (see the module's doc)."""
        refuse_unknown_parameters(self.model_extra, HARMLESS_FIELDS, NEUTRAL_VALUES)
        for position, tool in enumerate(self.tools or []):
            refuse_extra_fields(tool, f"tools[{position}]")
            refuse_extra_fields(tool.function, f"tools[{position}].function")
        if self.response_format is not None:
            refuse_extra_fields(self.response_format, "response_format")
            refuse_extra_fields(self.response_format.json_schema, "response_format.json_schema")

    def parameters(self) -> LlmParameters:
        """Everything of the request that shapes the answer, except the length and the
        temperature, which a turn carries itself."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise ApiError(400, "stop: at most 4 sequences", param="stop")
        tools = [
            ToolSpec(
                name=tool.function.name,
                description=tool.function.description,
                parameters=tool.function.parameters or {"type": "object", "properties": {}},
                strict=tool.function.strict,
            )
            for tool in self.tools or []
        ]
        choice: ToolChoice | None = None
        if isinstance(self.tool_choice, NamedToolChoice):
            choice = ToolChoice(mode="tool", name=self.tool_choice.function.name)
        elif self.tool_choice is not None:
            if self.tool_choice == "required" and not tools:
                raise ApiError(400, "tool_choice 'required' needs tools", param="tool_choice")
            choice = ToolChoice(mode=self.tool_choice)
        check_tools(tools, choice)
        fields: dict[str, Any] = {
            "tools": tools,
            "tool_choice": choice if tools else None,
            "parallel_tool_calls": self.parallel_tool_calls if tools else None,
            "stop": stop,
            "top_p": self.top_p,
            "seed": self.seed,
        }
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            fields["json_object"] = True
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise ApiError(
                    400,
                    "response_format: type json_schema needs json_schema",
                    param="response_format.json_schema",
                )
            fields["json_schema"] = fmt.json_schema.schema_ or {}
            fields["json_schema_name"] = fmt.json_schema.name
            fields["json_schema_strict"] = fmt.json_schema.strict
            fields["json_schema_description"] = fmt.json_schema.description
        return LlmParameters.model_validate(fields)


class ResponseFunction(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunction

    @classmethod
    def of(cls, call: ToolCall) -> ResponseToolCall:
        return cls(id=call.id, function=ResponseFunction(name=call.name, arguments=call.arguments))


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class KeelExtension(BaseModel):
    """keel's additions to a response: where the turn lives and what it cost."""

    session_id: str
    turn_id: str
    cost_usd: str | None = None
    replayed: bool = False
    event: str | None = None
    attempt: int | None = None
    model: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    keel: KeelExtension


def completion_chunk(
    completion_id: str,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: CompletionUsage | None = None,
    keel: KeelExtension | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; without ``delta`` it has no choice (usage, keel events)."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage is not None:
        chunk["usage"] = usage.model_dump()
    if keel is not None:
        chunk["keel"] = keel.model_dump(exclude_none=True)
    return chunk
