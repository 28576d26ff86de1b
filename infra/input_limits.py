"""Size limits on what enters keel, and text keel can store.

Every door a prompt comes in by checks it here before anything is started or written: ``keel
ask``, ``keel chat``, ``keel review start``, batch files (activities/batch/files.py) and the HTTP
API (api/chat.py, api/jobs.py; bodies are capped earlier, in api/request_limits.py). The LLM
activity checks the token estimate once more, as the last line of defence, before a provider
sees the prompt. The limits are settings (``KEEL_MAX_*``); every refusal says what is too big,
how big it is, the limit, and the setting that raises it.

Text must also be storable: prompts, model names and metadata end up in Postgres, which cannot
store a NUL character, and in JSON payloads, which cannot carry half of a UTF-16 surrogate pair
(what a non-UTF-8 command-line argument or a ``"\\ud800"`` JSON escape decodes to). Such input
is refused at the door with its location, instead of failing a database write later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# keel's token estimate is the simulator's rule, which also bills and budgets: a little above
# real tokenizers, the safe side for a limit.
from llmsim.tokens import MESSAGE_OVERHEAD_TOKENS, count_message_tokens

if TYPE_CHECKING:
    from infra.settings import KeelSettings

# Model names are stored in VARCHAR(200) columns (ledger, batch items, breakers, messages).
MAX_MODEL_NAME_LENGTH = 200
_SURROGATE = re.compile("[\ud800-\udfff]")


def setting_name(field: str) -> str:
    """The environment variable of a KeelSettings field."""
    return f"KEEL_{field.upper()}"


class InputTooLarge(ValueError):
    """Something a caller sent is over a limit; ``str()`` is the whole explanation."""

    def __init__(self, what: str, size: int, limit: int, unit: str, field: str) -> None:
        self.what, self.size, self.limit, self.unit = what, size, limit, unit
        self.setting = setting_name(field)
        super().__init__(
            f"{what} is {size:,} {unit}; the limit is {limit:,} {unit} "
            f"(raise it with {self.setting})"
        )


class UnstorableText(ValueError):
    """Text keel cannot store or carry: a NUL character or an unpaired surrogate."""


@dataclass(frozen=True)
class PromptLimits:
    max_chars: int
    max_tokens: int
    max_messages: int

    @classmethod
    def from_settings(cls, settings: KeelSettings) -> PromptLimits:
        return cls(
            max_chars=settings.max_prompt_chars,
            max_tokens=settings.max_prompt_tokens,
            max_messages=settings.max_messages,
        )


def check_prompt_tokens(texts: Sequence[str], max_tokens: int, what: str = "the prompt") -> int:
    """Raise InputTooLarge when the estimate is over ``max_tokens``; returns the estimate (0
    when it was not needed: every token takes at least one character, so a prompt shorter
    than the limit in characters cannot be over it in tokens)."""
    if sum(map(len, texts)) + MESSAGE_OVERHEAD_TOKENS * len(texts) <= max_tokens:
        return 0
    tokens = count_message_tokens(texts)
    if tokens > max_tokens:
        raise InputTooLarge(
            f"{what} (estimated)", tokens, max_tokens, "tokens", "max_prompt_tokens"
        )
    return tokens


def check_prompt(
    texts: Sequence[str],
    limits: PromptLimits,
    what: str = "the prompt",
    *,
    text_checked: bool = False,
    message_count: int | None = None,
) -> None:
    """A prompt (its messages' texts, system prompt included) within every limit, or
    InputTooLarge naming the first one it passes; UnstorableText for text keel cannot store
    (``text_checked``: the caller has already made sure it can be stored). ``message_count``:
    how many of the texts are messages, when the others (tool definitions) count in size only."""
    messages = len(texts) if message_count is None else message_count
    if messages > limits.max_messages:
        raise InputTooLarge(what, messages, limits.max_messages, "messages", "max_messages")
    chars = sum(map(len, texts))
    if chars > limits.max_chars:
        raise InputTooLarge(what, chars, limits.max_chars, "characters", "max_prompt_chars")
    for position, text in enumerate(() if text_checked else texts):
        check_storable(text, what if len(texts) == 1 else f"{what} (message {position + 1})")
    check_prompt_tokens(texts, limits.max_tokens, what)


def check_prompt_with_system(
    prompt: str, system: str | None, limits: PromptLimits, what: str
) -> None:
    """A command's prompt and its optional ``--system``: each storable (named as the user gave
    it), and the two together within the limits."""
    if system is not None:
        check_storable(system, "--system")
    check_storable(prompt, what)
    if system is None:
        check_prompt([prompt], limits, what, text_checked=True)
    else:
        check_prompt([system, prompt], limits, f"{what} and --system together", text_checked=True)


def unstorable_reason(text: str) -> str | None:
    """Why ``text`` cannot be stored or sent as JSON, or None."""
    position = text.find("\x00")
    if position >= 0:
        return (
            f"contains a NUL character (\\u0000) at position {position}, which Postgres "
            "cannot store; remove it"
        )
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        return (
            f"contains an unpaired surrogate (\\u{ord(surrogate.group()):04x}) at position "
            f"{surrogate.start()}: not valid Unicode (was the input UTF-8?)"
        )
    return None


def check_storable(text: str, where: str) -> None:
    reason = unstorable_reason(text)
    if reason is not None:
        raise UnstorableText(f"{where} {reason}")


def first_unstorable(value: Any, where: str) -> str | None:
    """Walk a JSON value (keys included) for a string keel cannot store: the problem with its
    location (``where.key[3]``), or None."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        current, path = stack.pop()
        if isinstance(current, str):
            reason = unstorable_reason(current)
            if reason is not None:
                return f"{path} {reason}"
        elif isinstance(current, dict):
            for key, item in current.items():
                if isinstance(key, str) and unstorable_reason(key) is not None:
                    return f"a key in {path} {unstorable_reason(key)}"
                stack.append((item, f"{path}.{key}"))
        elif isinstance(current, list):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(current))
    return None


def check_model_name(name: str, where: str = "model") -> None:
    """A model (or route) name keel can store in its ledger."""
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise UnstorableText(
            f"{where} is {len(name):,} characters; model names have at most {MAX_MODEL_NAME_LENGTH}"
        )
    check_storable(name, where)
