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
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activities.llm.models import ChatMessage, LlmParameters

# A line carries one request through workflow history (Temporal's payload limit is 2 MB).
MAX_LINE_BYTES = 1_000_000
MAX_CUSTOM_ID_LENGTH = 500  # batch_items.custom_id
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


class ItemRequest(BaseModel):
    """One item's request in keel's normalized form (``batch_items.request``)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    json_schema: dict[str, Any] | None = None
    json_schema_name: str = "answer"
    metadata: dict[str, Any] | None = None

    def parameters(self) -> LlmParameters:
        defaults = LlmParameters()
        return LlmParameters(
            max_tokens=self.max_tokens or defaults.max_tokens,
            temperature=self.temperature,
            json_schema=self.json_schema,
            json_schema_name=self.json_schema_name,
        )


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


def _json_schema(response_format: Any) -> tuple[dict[str, Any] | None, str]:
    if response_format is None:
        return None, "answer"
    if not isinstance(response_format, dict):
        raise _LineError("'response_format' must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None, "answer"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise _LineError("response_format json_schema needs a 'schema' object")
        return spec["schema"], str(spec.get("name") or "answer")
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
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _LineError("body.model must be a model name")
    schema, schema_name = _json_schema(body.get("response_format"))
    return ItemRequest(
        messages=_messages(body.get("messages")),
        model=body["model"],
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        temperature=body.get("temperature"),
        json_schema=schema,
        json_schema_name=schema_name,
        metadata=body.get("metadata"),
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
    if line.get("model") is not None and not isinstance(line["model"], str):
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


def parse_line(line_no: int, raw: bytes | str) -> ParsedLine | None:
    """Parse one line; ``None`` for a blank line (skipped, not an item)."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_LINE_BYTES:
            return ParsedLine(
                line_no=line_no,
                custom_id=None,
                problem=f"line is {len(raw):,} bytes; the limit is {MAX_LINE_BYTES:,}",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return ParsedLine(line_no=line_no, custom_id=None, problem=f"not UTF-8: {error}")
    else:
        text = raw
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return ParsedLine(line_no=line_no, custom_id=None, problem=f"invalid JSON: {error}")
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
    return ParsedLine(
        line_no=line_no,
        custom_id=custom_id,
        request=request,
        warnings=warnings,
        line_format=line_format,
    )


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[ParsedLine]:
    for line_no, raw in enumerate(lines, start=1):
        parsed = parse_line(line_no, raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw)
        if parsed is not None:
            yield parsed


def parse_file(path: Path) -> Iterator[ParsedLine]:
    with path.open("rb") as source:
        yield from parse_lines(source)


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


def validate_file(path: Path) -> ValidationReport:
    return validate(parse_file(path))
