"""The simulator's token estimate, shared with keel so both sides count alike.

Rule: a token is either a run of up to four word characters (``\\w``) or a single
character that is neither a word character nor whitespace; whitespace is free. So
``"hello, world"`` is ``hell|o|,|worl|d`` = 5 tokens. That is close to ~4 characters per
token on English prose and errs a little high, which is the safe side for budgeting
against a context window.

The split is prefix-stable: cutting a text after its n-th token and counting again gives
exactly n, which is what lets ``max_tokens`` truncation and streamed chunks add up to the
same usage numbers as a non-streamed answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TOKEN = re.compile(r"\s*(?:\w{1,4}|[^\w\s])")

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens charged per message (and for a system prompt) on top of its text, like the
role/separator tokens real chat formats add."""

LOW_DETAIL_IMAGE_TOKENS = 85
"""Tokens of an image sent with ``detail: low`` (OpenAI's price; images carry no text)."""
IMAGE_TOKENS = 765
"""Tokens of an image of any other detail: OpenAI's price of a 1024x1024 high-detail image."""


def count_tokens(text: str) -> int:
    """Estimated number of tokens in ``text`` (see the module doc for the rule)."""
    return sum(1 for _ in _TOKEN.finditer(text))


def split_tokens(text: str) -> list[str]:
    """``text`` cut into tokens, each carrying the whitespace before it.

    Joining the result gives back ``text`` minus trailing whitespace.
    """
    return [m.group(0) for m in _TOKEN.finditer(text)]


def count_message_tokens(texts: Iterable[str]) -> int:
    """Prompt tokens for a chat: each message's text plus a fixed per-message overhead.

    The simulator reports ``prompt_tokens`` / ``input_tokens`` as
    ``count_message_tokens([system?, *message_texts]) (+ count_tokens(tools JSON))``.
    """
    return sum(count_tokens(t) + MESSAGE_OVERHEAD_TOKENS for t in texts)
