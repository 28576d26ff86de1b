"""The slice of Anthropic's Messages wire format keel serves: requests in, messages out.

As with Chat Completions, a field keel cannot honour is a 400 naming it, never dropped; ``metadata``
(an end-user id) and ``cache_control`` marks (a billing hint to Anthropic's prompt cache, which
does not change the answer) pass.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.wire_checks import check_tools, refuse, refuse_extra_fields, refuse_unknown_parameters
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

HARMLESS_FIELDS = frozenset({"metadata"})
# A billing hint to Anthropic's prompt cache, on blocks and tools: the answer is the same.
CACHE_CONTROL = frozenset({"cache_control"})
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "top_k": (None,),
    "thinking": (None, {"type": "disabled"}),
    "service_tier": (None, "auto", "standard_only"),
}
# Anthropic's stop reasons for the finish reasons keel's answers carry.
STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None, tool_calls: list[ToolCall]) -> str:
    """The ``stop_reason`` of an answer (streamed or not) that ended for ``finish_reason``."""
    if tool_calls:
        return "tool_use"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


class ImageSource(BaseModel):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    def as_url(self, where: str) -> str:
        if self.type == "url" and self.url:
            return self.url
        if self.type == "base64" and self.data and self.media_type:
            return f"data:{self.media_type};base64,{self.data}"
        raise ApiError(
            400, f"{where}: an image source needs url, or media_type and data", param=where
        )


class ContentBlock(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "image", "tool_use", "tool_result"]
    text: str | None = None
    source: ImageSource | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: Any = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None

    def check_fields(self, where: str) -> None:
        refuse_extra_fields(self, where, CACHE_CONTROL)


class AnthropicMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    def to_chat_messages(self, position: int) -> list[ChatMessage]:
        """One Anthropic turn as keel's messages: a user turn's tool results become ``tool``
        messages (before its text, as they answer the previous turn's calls)."""
        where = f"messages.{position}"
        if isinstance(self.content, str):
            return [ChatMessage(role=self.role, content=self.content)]
        texts: list[str] = []
        images: list[ImagePart] = []
        calls: list[ToolCall] = []
        results: list[ChatMessage] = []
        for index, block in enumerate(self.content):
            at = f"{where}.content.{index}"
            block.check_fields(at)
            if block.type == "text":
                texts.append(block.text or "")
            elif block.type == "image" and self.role == "user" and block.source is not None:
                images.append(ImagePart(url=block.source.as_url(f"{at}.source")))
            elif block.type == "tool_use" and self.role == "assistant" and block.id and block.name:
                calls.append(
                    ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input or {}))
                )
            elif block.type == "tool_result" and self.role == "user" and block.tool_use_id:
                results.append(
                    ChatMessage(
                        role="tool",
                        content=_result_text(block, at),
                        tool_call_id=block.tool_use_id,
                    )
                )
            else:
                raise ApiError(
                    400, f"{at}: a {block.type} block is not valid in a {self.role} message",
                    param=at,
                )  # fmt: skip
        text = "\n".join(texts)
        if results and not (text or images):
            return results
        return [
            *results,
            ChatMessage(role=self.role, content=text, images=images, tool_calls=calls),
        ]


def _result_text(block: ContentBlock, where: str) -> str:
    if isinstance(block.content, list):
        parts = []
        for block_part in block.content:
            if block_part.type != "text":
                raise refuse(
                    f"{where}.content: keel takes text tool results only", f"{where}.content"
                )
            parts.append(block_part.text or "")
        text = "\n".join(parts)
    else:
        text = block.content or ""
    # An error result reaches the model marked as one (OpenAI's format has no flag for it).
    return f"Error: {text}" if block.is_error else text


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any]


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class OutputConfig(BaseModel):
    # `effort` and any other field keel cannot honour are refused by name.
    model_config = ConfigDict(extra="allow")

    format: OutputFormat | None = None


class SystemBlock(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, max_length=MAX_MODEL_NAME_LENGTH, description="A keel route or a model id."
    )
    max_tokens: int = Field(ge=1, le=MAX_OUTPUT_TOKENS)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[SystemBlock] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    output_config: OutputConfig | None = None

    def refuse_unsupported(self) -> None:
        refuse_unknown_parameters(self.model_extra, HARMLESS_FIELDS, NEUTRAL_VALUES)
        for position, tool in enumerate(self.tools or []):
            refuse_extra_fields(tool, f"tools.{position}", CACHE_CONTROL)
        if isinstance(self.system, list):
            for position, block in enumerate(self.system):
                refuse_extra_fields(block, f"system.{position}", CACHE_CONTROL)
        if self.output_config is not None:
            refuse_extra_fields(self.output_config, "output_config")
            refuse_extra_fields(self.output_config.format, "output_config.format")
        if self.tool_choice is not None:
            refuse_extra_fields(self.tool_choice, "tool_choice")
            if self.tool_choice.type in ("any", "tool") and not self.tools:
                raise ApiError(
                    400,
                    f"tool_choice {self.tool_choice.type!r} needs tools, and the request has none",
                    param="tool_choice",
                )

    def system_texts(self) -> list[str]:
        if isinstance(self.system, list):
            return ["\n".join(block.text for block in self.system)]
        return [self.system] if self.system else []

    def chat_messages(self) -> list[ChatMessage]:
        return [m for i, message in enumerate(self.messages) for m in message.to_chat_messages(i)]

    def parameters(self) -> LlmParameters:
        tools = [
            ToolSpec(name=t.name, description=t.description, parameters=t.input_schema)
            for t in self.tools or []
        ]
        choice, parallel = None, None
        if self.tool_choice is not None and tools:
            mode = {"any": "required"}.get(self.tool_choice.type, self.tool_choice.type)
            choice = ToolChoice.model_validate({"mode": mode, "name": self.tool_choice.name})
            if self.tool_choice.disable_parallel_tool_use:
                parallel = False
        check_tools(tools, choice)
        fmt = self.output_config.format if self.output_config else None
        return LlmParameters(
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            stop=list(self.stop_sequences or []),
            top_p=self.top_p,
            json_schema=fmt.schema_ if fmt else None,
        )


def message_body(
    message_id: str,
    model: str,
    text: str,
    tool_calls: list[ToolCall],
    finish_reason: str | None,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    """An Anthropic ``message`` object."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [tool_use_block(call) for call in tool_calls]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish_reason, tool_calls),
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def tool_use_block(call: ToolCall, *, streaming: bool = False) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = {}
    return {
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": {} if streaming else arguments,
    }
