"""Reading a batch file: one JSON object per line, in keel's shape or the OpenAI Batch API's.

keel's shape::

    {"custom_id": "q1", "prompt": "Name a river.", "model": "gpt-4o-mini", "max_tokens": 64,
     "metadata": {"source": "crm"}}
    {"custom_id": "q2", "messages": [{"role": "user", "content": "Name a lake."}]}

The OpenAI Batch API line, as is::

    {"custom_id": "q3", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [...], "max_tokens": 64}}

Every line becomes a ``ParsedLine``: an ``ItemRequest`` (keel's normalized form, what is stored
in ``batch_items.request``) or the reason it cannot run. Nothing here touches the database;
the CLI validates a file with it before anything is written, and the scheduled-load activity
uses it on the worker.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from contracts.batch import ItemRequest
from contracts.llm import ChatMessage
from infra.input_limits import (
    InputTooLarge,
    PromptLimits,
    UnstorableText,
    check_model_name,
    check_prompt,
    first_unstorable,
    setting_name,
)
from infra.settings import KeelSettings

MAX_CUSTOM_ID_LENGTH = 500  # batch_items.custom_id
# Deeper JSON than any request needs; past it, serializers (ours, Postgres's) hit recursion limits.
MAX_JSON_DEPTH = 64
_MAYBE_UNSTORABLE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF])")
OPENAI_CHAT_URL = "/v1/chat/completions"

KEEL_FIELDS = frozenset(
    {"custom_id", "prompt", "messages", "system", "model", "max_tokens", "temperature", "metadata"}
)
OPENAI_LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
# Body fields keel runs with (mapped onto its own parameters)…
OPENAI_BODY_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "response_format",
        "metadata",
    }
)
# …fields that do not change what the model is asked, so they are dropped with a warning…
OPENAI_IGNORED_BODY_FIELDS = frozenset(
    {"user", "store", "seed", "top_p", "stop", "presence_penalty", "frequency_penalty"}
)
# …and everything else (tools, n, stream, logprobs, audio, …) changes the answer's shape, which
# a plain chat completion cannot honour: such a line is malformed, not silently altered.
ROLE_ALIASES = {"developer": "system"}


class ParsedLine(BaseModel):
    line_no: int
    custom_id: str | None
    request: ItemRequest | None = None
    # Why the line cannot run (then request is None).
    problem: str | None = None
    warnings: list[str] = Field(default_factory=list)
    line_format: Literal["keel", "openai", "unknown"] = "unknown"

    @property
    def valid(self) -> bool:
        return self.request is not None


class LineProblem(BaseModel):
    line_no: int
    custom_id: str | None
    reason: str


class DuplicateId(BaseModel):
    custom_id: str
    line_numbers: list[int]


class ValidationReport(BaseModel):
    """What a person needs to fix a file before (or instead of) running it."""

    lines: int = 0
    valid: int = 0
    problems: list[LineProblem] = Field(default_factory=list)
    duplicates: list[DuplicateId] = Field(default_factory=list)
    warnings: list[LineProblem] = Field(default_factory=list)

    @property
    def items(self) -> int:
        return self.valid + len(self.problems)


class _LineError(ValueError):
    pass


@dataclass(frozen=True)
class BatchFileLimits:
    """How big a batch file, one of its lines and one line's prompt may be (settings)."""

    file_bytes: int
    line_bytes: int
    items: int
    prompt: PromptLimits

    @classmethod
    def from_settings(cls, settings: KeelSettings) -> BatchFileLimits:
        return cls(
            file_bytes=settings.max_batch_file_bytes,
            line_bytes=settings.max_batch_line_bytes,
            items=settings.max_batch_items,
            prompt=PromptLimits.from_settings(settings),
        )


class BatchFileRefused(ValueError):
    """The whole file cannot run (too large, too many items); ``str()`` says why and how to
    change the limit. Raised before anything is written."""


def _message_content(raw: Any, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        texts: list[str] = []
        for part in raw:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _LineError(
                    f"{where}: content part of type {kind!r} is not supported (text parts only)"
                )
            if not isinstance(part.get("text"), str):
                raise _LineError(f"{where}: a text part needs a string 'text'")
            texts.append(part["text"])
        return "".join(texts)
    raise _LineError(f"{where}: content must be a string or a list of text parts")


def _messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise _LineError("'messages' must be a non-empty list")
    messages: list[ChatMessage] = []
    for index, entry in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(entry, dict):
            raise _LineError(f"{where} must be an object with 'role' and 'content'")
        declared = entry.get("role")
        role = ROLE_ALIASES.get(declared, declared) if isinstance(declared, str) else declared
        if role not in ("system", "user", "assistant"):
            raise _LineError(
                f"{where}: role {entry.get('role')!r} is not supported "
                "(system, developer, user, assistant)"
            )
        messages.append(
            ChatMessage(role=role, content=_message_content(entry.get("content"), where))
        )
    return messages


JSON_SCHEMA_FIELDS = frozenset({"name", "schema", "strict", "description"})


def _json_schema(response_format: Any) -> dict[str, Any]:
    """The ItemRequest fields of a ``response_format`` (none for text)."""
    if response_format is None:
        return {}
    if not isinstance(response_format, dict):
        raise _LineError("'response_format' must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise _LineError("response_format json_schema needs a 'schema' object")
        unknown = sorted(set(spec) - JSON_SCHEMA_FIELDS)
        if unknown:
            raise _LineError(
                f"response_format.json_schema field(s) {', '.join(unknown)} not supported"
            )
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise _LineError("response_format.json_schema.strict must be true or false")
        if spec.get("description") is not None and not isinstance(spec["description"], str):
            raise _LineError("response_format.json_schema.description must be a string")
        return {
            "json_schema": spec["schema"],
            "json_schema_name": str(spec.get("name") or "answer"),
            "json_schema_strict": spec.get("strict"),
            "json_schema_description": spec.get("description"),
        }
    raise _LineError(f"response_format type {kind!r} is not supported (text, json_schema)")


def _from_openai(line: dict[str, Any], warnings: list[str]) -> ItemRequest:
    unknown = sorted(set(line) - OPENAI_LINE_FIELDS)
    if unknown:
        raise _LineError(f"unknown field(s) {', '.join(unknown)} in an OpenAI batch line")
    if line.get("method", "POST") != "POST":
        raise _LineError(f"method must be POST (got {line.get('method')!r})")
    if line.get("url") != OPENAI_CHAT_URL:
        raise _LineError(
            f"url {line.get('url')!r} is not supported: keel runs {OPENAI_CHAT_URL} lines"
        )
    body = line.get("body")
    if not isinstance(body, dict):
        raise _LineError("'body' must be an object")
    ignored = sorted(set(body) & OPENAI_IGNORED_BODY_FIELDS)
    unsupported = sorted(set(body) - OPENAI_BODY_FIELDS - OPENAI_IGNORED_BODY_FIELDS)
    if unsupported:
        raise _LineError(
            f"body field(s) {', '.join(unsupported)} not supported: a keel batch item is a "
            "plain chat completion"
        )
    if ignored:
        warnings.append(f"ignored body field(s): {', '.join(ignored)}")
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise _LineError("body.model must be a model name")
    return ItemRequest(
        messages=_messages(body.get("messages")),
        model=body["model"],
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        temperature=body.get("temperature"),
        metadata=body.get("metadata"),
        **_json_schema(body.get("response_format")),
    )


def _from_keel(line: dict[str, Any]) -> ItemRequest:
    unknown = sorted(set(line) - KEEL_FIELDS)
    if unknown:
        raise _LineError(
            f"unknown field(s) {', '.join(unknown)}; keel lines have "
            f"{', '.join(sorted(KEEL_FIELDS))}"
        )
    has_prompt, has_messages = "prompt" in line, "messages" in line
    if has_prompt == has_messages:
        raise _LineError("give exactly one of 'prompt' or 'messages'")
    if has_prompt:
        if not isinstance(line["prompt"], str) or not line["prompt"].strip():
            raise _LineError("'prompt' must be a non-empty string")
        messages = [ChatMessage(role="user", content=line["prompt"])]
    else:
        messages = _messages(line["messages"])
    if "system" in line:
        if not isinstance(line["system"], str):
            raise _LineError("'system' must be a string")
        messages.insert(0, ChatMessage(role="system", content=line["system"]))
    if line.get("model") is not None and (
        not isinstance(line["model"], str) or not line["model"].strip()
    ):
        raise _LineError("'model' must be a model name")
    return ItemRequest(
        messages=messages,
        model=line.get("model"),
        max_tokens=line.get("max_tokens"),
        temperature=line.get("temperature"),
        metadata=line.get("metadata"),
    )


def _pydantic_reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "line"
    return f"{where}: {first['msg']}"


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is too large for a float")
    return value


# json.loads, strict: NaN/Infinity (Python's extension) and numbers that overflow a float are
# refused, as Postgres's JSON would refuse them when the item is stored.
_load_json = json.JSONDecoder(parse_constant=_not_json_constant, parse_float=_finite_float).decode


def _json_depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict | list):
            deepest = max(deepest, depth)
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _prompt_problem(request: ItemRequest, limits: PromptLimits) -> str | None:
    try:
        # parse_line already refused any line with text that cannot be stored.
        check_prompt([m.content for m in request.messages], limits, "the prompt", text_checked=True)
        if request.model is not None:
            check_model_name(request.model)
    except (InputTooLarge, UnstorableText) as error:
        return str(error)
    return None


def _too_long(line_no: int, size: int, limits: BatchFileLimits) -> ParsedLine:
    return ParsedLine(
        line_no=line_no,
        custom_id=None,
        problem=f"line is {size:,} bytes; the limit is {limits.line_bytes:,} bytes (raise it "
        f"with {setting_name('max_batch_line_bytes')})",
    )


def parse_line(line_no: int, raw: bytes | str, limits: BatchFileLimits) -> ParsedLine | None:
    """Parse one line; ``None`` for a blank line (skipped, not an item)."""
    if isinstance(raw, bytes):
        if len(raw) > limits.line_bytes:
            return _too_long(line_no, len(raw), limits)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return ParsedLine(line_no=line_no, custom_id=None, problem=f"not UTF-8: {error}")
    else:
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size > limits.line_bytes:
            return _too_long(line_no, size, limits)
        text = raw
    if not text.strip():
        return None
    try:
        data = _load_json(text)
    except RecursionError:
        return ParsedLine(
            line_no=line_no,
            custom_id=None,
            problem=f"invalid JSON: nested too deeply (at most {MAX_JSON_DEPTH} levels)",
        )
    except ValueError as error:  # JSONDecodeError, or a number JSON allows and Python cannot hold
        reason = (
            f"a number has more than {sys.get_int_max_str_digits():,} digits"
            if "integer string conversion" in str(error)
            else str(error)
        )
        return ParsedLine(line_no=line_no, custom_id=None, problem=f"invalid JSON: {reason}")
    if not isinstance(data, dict):
        return ParsedLine(
            line_no=line_no,
            custom_id=None,
            problem=f"a line must be a JSON object, not {type(data).__name__}",
        )
    custom_id = data.get("custom_id")
    line_format: Literal["keel", "openai"] = (
        "openai" if {"body", "url", "method"} & set(data) else "keel"
    )
    if not isinstance(custom_id, str) or not custom_id.strip():
        return ParsedLine(
            line_no=line_no,
            custom_id=None,
            line_format=line_format,
            problem="'custom_id' must be a non-empty string",
        )
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        return ParsedLine(
            line_no=line_no,
            custom_id=None,
            line_format=line_format,
            problem=f"'custom_id' is longer than {MAX_CUSTOM_ID_LENGTH} characters",
        )
    # Everything on the line is stored (batch_items) and carried in workflow history. A NUL or
    # a surrogate can only come from a \u escape (UTF-8 has neither raw), so most lines skip
    # the walk.
    unstorable = first_unstorable(data, "line") if _MAYBE_UNSTORABLE.search(text) else None
    if unstorable is not None:
        # An unstorable custom_id cannot name the failed item either.
        usable_id = None if unstorable.startswith("line.custom_id ") else custom_id
        return ParsedLine(
            line_no=line_no, custom_id=usable_id, line_format=line_format, problem=unstorable
        )
    openers = text.count("{") + text.count("[")  # an upper bound of the depth
    if openers > MAX_JSON_DEPTH and _json_depth(data) > MAX_JSON_DEPTH:
        return ParsedLine(
            line_no=line_no,
            custom_id=custom_id,
            line_format=line_format,
            problem=f"the line nests JSON deeper than {MAX_JSON_DEPTH} levels",
        )
    warnings: list[str] = []
    try:
        request = _from_openai(data, warnings) if line_format == "openai" else _from_keel(data)
    except _LineError as error:
        return ParsedLine(
            line_no=line_no, custom_id=custom_id, line_format=line_format, problem=str(error)
        )
    except ValidationError as error:
        return ParsedLine(
            line_no=line_no,
            custom_id=custom_id,
            line_format=line_format,
            problem=_pydantic_reason(error),
        )
    problem = _prompt_problem(request, limits.prompt)
    if problem is not None:
        return ParsedLine(
            line_no=line_no, custom_id=custom_id, line_format=line_format, problem=problem
        )
    return ParsedLine(
        line_no=line_no,
        custom_id=custom_id,
        request=request,
        warnings=warnings,
        line_format=line_format,
    )


def _without_line_end(raw: bytes | str) -> bytes | str:
    """The line without its one terminator ("\n" or "\r\n"): what its size is measured on."""
    if isinstance(raw, bytes):
        return raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    return raw[:-2] if raw.endswith("\r\n") else raw[:-1] if raw.endswith("\n") else raw


@dataclass(frozen=True)
class _OversizedLine:
    """A line longer than the limit, read past without being kept: only its size is known."""

    size: int


def parse_lines(
    lines: Iterable[bytes | str | _OversizedLine], limits: BatchFileLimits
) -> Iterator[ParsedLine]:
    """Every non-blank line as a ParsedLine, numbered from 1 (blank lines count in the
    numbering). Raises BatchFileRefused, before yielding the item past the limit, when the
    file has more items than ``limits.items``."""
    items = 0
    for line_no, raw in enumerate(lines, start=1):
        if isinstance(raw, _OversizedLine):
            parsed: ParsedLine | None = _too_long(line_no, raw.size, limits)
        else:
            parsed = parse_line(line_no, _without_line_end(raw), limits)
        if parsed is None:
            continue
        items += 1
        if items > limits.items:
            raise BatchFileRefused(
                f"the file has more than {limits.items:,} items (line {line_no} is item "
                f"{items:,}); the limit is {limits.items:,} (raise it with "
                f"{setting_name('max_batch_items')}, or split the file)"
            )
        yield parsed


_DRAIN_CHUNK = 64 * 1024


def read_bounded_lines(
    source: IO[bytes], limits: BatchFileLimits
) -> Iterator[bytes | _OversizedLine]:
    """The file's lines, each at most ``limits.line_bytes`` (plus its line end) in memory: a
    longer line is read past in chunks and reported by size. Raises BatchFileRefused once more
    than ``limits.file_bytes`` were read (a file that grew after it was measured, or a pipe)."""
    read = 0

    def count(chunk: bytes) -> None:
        nonlocal read
        read += len(chunk)
        if read > limits.file_bytes:
            raise _file_too_large(f"more than {limits.file_bytes:,}", limits)

    # Room for the longest allowed line and its "\r\n".
    window = limits.line_bytes + 2
    while chunk := source.readline(window):
        count(chunk)
        if chunk.endswith(b"\n") or len(chunk) < window:
            yield chunk
            continue
        # Too long: read past the rest of the line without keeping it, counting its bytes.
        size, previous = len(chunk), chunk
        while not chunk.endswith(b"\n"):
            previous, chunk = chunk, source.readline(_DRAIN_CHUNK)
            if not chunk:
                break
            count(chunk)
            size += len(chunk)
        ending = (previous[-1:] + chunk)[-2:] if chunk else b""
        yield _OversizedLine(
            size - (2 if ending == b"\r\n" else 1 if ending.endswith(b"\n") else 0)
        )


def _file_too_large(size: str, limits: BatchFileLimits) -> BatchFileRefused:
    return BatchFileRefused(
        f"the file is {size} bytes; the limit is {limits.file_bytes:,} bytes (raise it with "
        f"{setting_name('max_batch_file_bytes')}, or split the file)"
    )


def parse_file(path: Path, limits: BatchFileLimits) -> Iterator[ParsedLine]:
    """The file's items; BatchFileRefused when the file is over a limit (before reading it,
    when its size says so)."""
    size = path.stat().st_size
    if size > limits.file_bytes:
        raise _file_too_large(f"{size:,}", limits)
    with path.open("rb") as source:
        yield from parse_lines(read_bounded_lines(source, limits), limits)


def invalid_line_id(line_no: int) -> str:
    """The custom_id a malformed line without a usable one is reported under."""
    return f"line-{line_no}"


def validate(parsed: Iterable[ParsedLine]) -> ValidationReport:
    report = ValidationReport()
    seen: dict[str, list[int]] = defaultdict(list)
    for line in parsed:
        report.lines += 1
        if line.custom_id is not None:
            seen[line.custom_id].append(line.line_no)
        for warning in line.warnings:
            report.warnings.append(
                LineProblem(line_no=line.line_no, custom_id=line.custom_id, reason=warning)
            )
        if line.valid:
            report.valid += 1
        else:
            report.problems.append(
                LineProblem(
                    line_no=line.line_no, custom_id=line.custom_id, reason=line.problem or "invalid"
                )
            )
    report.duplicates = [
        DuplicateId(custom_id=custom_id, line_numbers=lines)
        for custom_id, lines in seen.items()
        if len(lines) > 1
    ]
    # A malformed line without an id is stored under a synthetic one; it must not collide.
    for problem in report.problems:
        if problem.custom_id is None and invalid_line_id(problem.line_no) in seen:
            report.duplicates.append(
                DuplicateId(
                    custom_id=invalid_line_id(problem.line_no),
                    line_numbers=[problem.line_no, *seen[invalid_line_id(problem.line_no)]],
                )
            )
    return report
