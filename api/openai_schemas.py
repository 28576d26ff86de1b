"""The slice of OpenAI's Chat Completions wire format keel serves (requests in, responses out).

Unknown request fields are accepted and ignored, as OpenAI-compatible servers do, so clients
that send ``top_p`` or ``user`` keep working.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from contracts.llm import MAX_OUTPUT_TOKENS, ChatMessage
from infra.input_limits import MAX_MODEL_NAME_LENGTH


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def to_chat_message(self, position: int) -> ChatMessage:
        if self.role in ("tool", "function"):
            raise ApiError(
                400,
                f"messages[{position}]: role {self.role!r} is not supported by keel",
                param=f"messages.{position}.role",
            )
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.type != "text" or part.text is None:
                    raise ApiError(
                        400,
                        f"messages[{position}]: only text content parts are supported",
                        param=f"messages.{position}.content",
                    )
                texts.append(part.text)
            content = "".join(texts)
        else:
            content = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


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
    n: int = Field(default=1, ge=1, le=1, description="keel answers with one choice.")
    session_id: str | None = Field(
        default=None, description="keel: continue this chat session (or X-Keel-Session-Id)."
    )


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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
