"""Provider-neutral answers: what the model "says", how many tokens it costs, how long it takes.

Everything a reply contains is a pure function of (seed, request seed, model, choice
index, the whole prompt, the output mode): ``temperature`` and friends are accepted and
ignored, so the same request always gets the same answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from llmsim.catalog import ModelSpec
from llmsim.config import SimConfig
from llmsim.hashing import rng_for
from llmsim.schema_instance import instance_for
from llmsim.text import generate_reply, phrase, sentence
from llmsim.tokens import count_message_tokens, count_tokens, split_tokens

FinishReason = Literal["stop", "length", "stop_sequence", "tool_calls"]


@dataclass(frozen=True)
class TextMode:
    kind: Literal["text"] = "text"


@dataclass(frozen=True)
class JsonSchemaMode:
    schema: dict[str, Any] | bool
    kind: Literal["json_schema"] = "json_schema"


@dataclass(frozen=True)
class JsonObjectMode:
    kind: Literal["json_object"] = "json_object"


@dataclass(frozen=True)
class ToolMode:
    """Answer with a call to ``name`` whose arguments fit ``parameters``."""

    name: str
    parameters: dict[str, Any] | bool
    kind: Literal["tool"] = "tool"


OutputMode = TextMode | JsonSchemaMode | JsonObjectMode | ToolMode


_WORD = re.compile(r"[a-z0-9]+")
# Words too common to say a tool fits a question.
_STOP_WORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "get", "how", "i", "in"}
    | {"is", "it", "me", "my", "of", "on", "or", "set", "the", "to", "what", "when", "where"}
    | {"which", "who", "with", "you", "your"}
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower().replace("_", " ")) if w not in _STOP_WORDS}


def auto_tool_choice(tools: dict[str, dict[str, Any]], question: str) -> str | None:
    """What a model choosing freely (``tool_choice: auto``) calls for ``question``: the tool
    whose name and description share the most words with it, or none when no word is shared
    (the model answers in text). Deterministic, so tests know which way it goes."""
    asked = _words(question)
    best, best_score = None, 0
    for name, tool in tools.items():
        score = len(asked & _words(f"{name} {tool.get('description') or ''}"))
        if score > best_score:
            best, best_score = name, score
    return best


@dataclass(frozen=True)
class Prompt:
    """What a request asks, reduced to what the simulator needs."""

    texts: list[str]
    """Per message (system prompt first, if any): the text counted for prompt tokens."""
    last_user_text: str
    fingerprint: str
    """Canonical serialisation of the whole conversation: the seed material of the reply."""
    extra_tokens: int = 0
    """Tokens outside message text (tool definitions, images)."""
    cache_prefixes: list[tuple[str, int]] = field(default_factory=list)
    """(content hash, tokens) of each cacheable prompt prefix."""

    @property
    def tokens(self) -> int:
        return count_message_tokens(self.texts) + self.extra_tokens


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    text: str
    """Visible content (for a tool call: its arguments JSON)."""
    finish: FinishReason
    completion_tokens: int
    """Visible plus reasoning tokens: what is billed."""
    reasoning_tokens: int = 0
    stop_sequence: str | None = None
    tool_call: ToolCall | None = None

    def chunks(self, tokens_per_chunk: int) -> list[str]:
        """The text in stream deltas of ``tokens_per_chunk`` tokens; they join to ``text``."""
        pieces = split_tokens(self.text)
        out = [
            "".join(pieces[i : i + tokens_per_chunk])
            for i in range(0, len(pieces), tokens_per_chunk)
        ]
        rest = self.text[len("".join(pieces)) :]
        if rest:
            if out:
                out[-1] += rest
            else:
                out.append(rest)
        return out


def complete(
    *,
    spec: ModelSpec,
    config: SimConfig,
    prompt: Prompt,
    mode: OutputMode,
    max_tokens: int | None,
    stop: list[str],
    choice_index: int = 0,
    request_seed: int | None = None,
    canned: str | None = None,
) -> Completion:
    rng = rng_for(
        "reply", config.seed, request_seed, spec.id, choice_index, mode.kind, prompt.fingerprint
    )
    reasoning = rng.randint(16, 192) if spec.reasoning else 0
    tool_call: ToolCall | None = None

    if canned is not None:
        text = canned
    elif isinstance(mode, JsonSchemaMode):
        text = json.dumps(instance_for(mode.schema, rng))
    elif isinstance(mode, JsonObjectMode):
        text = json.dumps(
            {"answer": sentence(rng), "topic": phrase(rng), "score": rng.randint(1, 10)}
        )
    elif isinstance(mode, ToolMode):
        text = json.dumps(instance_for(mode.parameters, rng))
    else:
        target = rng.randint(config.min_output_tokens, config.max_output_tokens)
        text = generate_reply(rng, prompt.last_user_text, target)
    if isinstance(mode, ToolMode) and canned is None:
        call_id = f"call_{rng.getrandbits(96):024x}"
        tool_call = ToolCall(id=call_id, name=mode.name, arguments=text)

    finish: FinishReason = "tool_calls" if tool_call is not None else "stop"
    stop_hit: str | None = None
    if stop and tool_call is None:
        cut = min(((text.find(s), s) for s in stop if s and s in text), default=None)
        if cut is not None:
            text, stop_hit = text[: cut[0]], cut[1]
            finish = "stop_sequence"

    if max_tokens is not None:
        budget = max_tokens - reasoning
        if budget <= 0:
            # A reasoning model that thought through its whole budget says nothing.
            return Completion(
                text="", finish="length", completion_tokens=max_tokens, reasoning_tokens=max_tokens
            )
        pieces = split_tokens(text)
        if len(pieces) > budget:
            text = "".join(pieces[:budget])
            finish, stop_hit = "length", None
            if tool_call is not None:
                tool_call = ToolCall(id=tool_call.id, name=tool_call.name, arguments=text)

    return Completion(
        text=text,
        finish=finish,
        completion_tokens=count_tokens(text) + reasoning,
        reasoning_tokens=reasoning,
        stop_sequence=stop_hit,
        tool_call=tool_call,
    )


@dataclass(frozen=True)
class Latency:
    first_token_s: float
    per_chunk_s: float
    total_s: float


def latency(
    spec: ModelSpec, config: SimConfig, completions: list[Completion], chunks: int
) -> Latency:
    """Time to first token (incl. reasoning) and per-chunk pacing, scaled or fixed."""
    reasoning = max((c.reasoning_tokens for c in completions), default=0)
    visible = sum(c.completion_tokens - c.reasoning_tokens for c in completions)
    first = spec.ttft_s + reasoning / spec.tokens_per_s
    gen = visible / spec.tokens_per_s
    if config.fixed_latency_s is not None:
        natural = first + gen
        total = config.fixed_latency_s
        first = total * first / natural if natural > 0 else total
        gen = total - first
    else:
        first *= config.latency_scale
        gen *= config.latency_scale
    return Latency(
        first_token_s=first, per_chunk_s=gen / chunks if chunks else 0.0, total_s=first + gen
    )
