"""How many prompt tokens a request costs, counted generously (the simulator's rule, a little
above real tokenizers): message text and tool calls, tool definitions, and images.

Budgets reserve against this count, sessions fit their history into it and keel's prompt limit
is checked with it, so a request with tools or images is never counted as if it had none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from contracts.llm import ChatMessage, LlmParameters

# The simulator's image prices, which are OpenAI's: keel cannot see an image's size before the
# provider does, so an image that is not low-detail counts as a 1024x1024 high-detail one.
from llmsim.tokens import (
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    count_message_tokens,
    count_tokens,
)


def message_tokens(message: ChatMessage) -> int:
    images = sum(
        LOW_DETAIL_IMAGE_TOKENS if image.detail == "low" else IMAGE_TOKENS
        for image in message.images
    )
    return count_message_tokens([message.counted_text()]) + images


def tool_texts(parameters: LlmParameters) -> list[str]:
    """The tool definitions as the text a provider counts (none: an empty list)."""
    if not parameters.tools:
        return []
    return [json.dumps([tool.model_dump(exclude_none=True) for tool in parameters.tools])]


def prompt_texts(
    messages: Iterable[ChatMessage], parameters: LlmParameters, system: Iterable[str] = ()
) -> list[str]:
    """Every text of a request a provider reads as its prompt, one entry a message: the system
    prompt(s), each message's text with its tool calls (a tool result is a ``tool`` message),
    then the tool definitions (one entry for all). What keel's prompt limits are checked on, at
    the API's door and again before a provider call."""
    return [*system, *(m.counted_text() for m in messages), *tool_texts(parameters)]


def tool_tokens(parameters: LlmParameters) -> int:
    return sum(count_tokens(text) for text in tool_texts(parameters))


def prompt_tokens(messages: Iterable[ChatMessage], parameters: LlmParameters) -> int:
    return sum(message_tokens(m) for m in messages) + tool_tokens(parameters)
