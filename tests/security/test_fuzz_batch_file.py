"""Fuzzing the batch file parser (activities/batch/files.py) with hypothesis.

Whatever the bytes — arbitrary binary, arbitrary JSON, or valid keel / OpenAI Batch lines
mutated — the parser never raises; every line with content is exactly one item, accepted or
rejected with its line number (accepted + rejected == such lines); what it accepts is what the
line asked for, and survives being stored (Postgres JSONB) and carried to the worker (keel's
Temporal data converter) unchanged.

The profile is fixed for CI: derandomized (the same examples on every run), bounded example
counts, no deadline (a loaded 2-core machine is slow, not wrong), no example database.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from activities.batch.files import (
    BatchFileLimits,
    BatchFileRefused,
    ParsedLine,
    parse_lines,
    read_bounded_lines,
    validate,
)
from activities.batch.items import create_batch, insert_items
from contracts.batch import BatchOptions, ClaimedItem, ItemRequest
from contracts.llm import ChatMessage, LlmRequest
from infra.database import session_factory
from infra.input_limits import PromptLimits
from infra.settings import KeelSettings
from infra.tables import BatchItem
from infra.temporal_client import keel_data_converter
from llmsim.tokens import count_message_tokens

pytestmark = pytest.mark.slow  # thousands of generated batch files

# Small limits, so that generated lines cross them often.
LIMITS = BatchFileLimits(
    file_bytes=10_000_000,
    line_bytes=600,
    items=1_000_000,
    prompt=PromptLimits(max_chars=300, max_tokens=120, max_messages=6),
)

# Long enough lines that a huge number or a deep nesting reaches the JSON parser.
ROOMY = BatchFileLimits(LIMITS.file_bytes, 100_000, LIMITS.items, LIMITS.prompt)


def fuzz_profile(examples: int) -> Any:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# --- the oracle ----------------------------------------------------------------------------


def item_line_numbers(data: bytes, limits: BatchFileLimits) -> list[int]:
    """Which lines are items, computed independently of the parser: split at "\\n", drop one
    "\\r" before it; a line is an item unless it is blank (valid UTF-8, only whitespace) —
    a line over the size limit or not UTF-8 is an item (a rejected one) whatever it holds."""
    segments = data.split(b"\n")
    if segments and segments[-1] == b"":
        segments.pop()  # the file's final "\n" ends the last line, it starts none
    numbers = []
    for number, segment in enumerate(segments, start=1):
        terminated = number < len(segments) or data.endswith(b"\n")
        content = segment[:-1] if terminated and segment.endswith(b"\r") else segment
        if len(content) > limits.line_bytes:
            numbers.append(number)
            continue
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            numbers.append(number)
            continue
        if text.strip():
            numbers.append(number)
    return numbers


def parse_bytes(data: bytes, limits: BatchFileLimits = LIMITS) -> list[ParsedLine]:
    return list(parse_lines(read_bounded_lines(io.BytesIO(data), limits), limits))


def stored_form(request: ItemRequest) -> dict[str, Any]:
    """What batch_items.request holds (activities/batch/items.py), through strict JSON."""
    document = request.model_dump(mode="json", exclude_none=True)
    text = json.dumps(document, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")  # no unpaired surrogate survives into what is stored
    assert "\\u0000" not in text, "Postgres cannot store NUL"
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def assert_runnable(request: ItemRequest) -> None:
    """The accepted request round-trips through its stored form and builds the LLM call the
    batch workflow makes from it (workflows/batch.py)."""
    assert ItemRequest.model_validate(stored_form(request)) == request
    LlmRequest(messages=request.messages, parameters=request.parameters())


def check_file(data: bytes, limits: BatchFileLimits = LIMITS) -> list[ParsedLine]:
    parsed = parse_bytes(data, limits)
    assert [line.line_no for line in parsed] == item_line_numbers(data, limits)
    for line in parsed:
        assert line.valid != (line.problem is not None), line
        if line.valid:
            assert line.request is not None and line.custom_id
            assert_runnable(line.request)
        else:
            assert line.problem and line.request is None
    report = validate(parsed)
    assert report.lines == len(parsed) == report.valid + len(report.problems)
    return parsed


# --- strategies ----------------------------------------------------------------------------

storable_char = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
short_text = st.text(storable_char, max_size=30)
words = st.text(st.sampled_from("abcdefgh .,!?\n"), min_size=1, max_size=60).filter(str.strip)
# Strings that have broken keel before, or could: NUL, lone surrogates, blank, huge, odd.
nasty_text = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\u2028", "é" * 120, "w" * 700, "null"]
)
any_text = st.text(max_size=30) | nasty_text
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
custom_ids = st.text(storable_char, min_size=1, max_size=20).filter(str.strip)
models = st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "anthropic:claude-x", "m"])
metadata = st.dictionaries(short_text, st.integers() | short_text | st.booleans(), max_size=3)


@st.composite
def messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = draw(
        st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "developer", "user", "assistant"])}
            ),
            min_size=1,
            max_size=4,
        )
    )
    for entry in entries:
        text = draw(words)
        entry["content"] = (
            [{"type": "text", "text": text}] if draw(st.booleans()) else text  # parts or string
        )
    return entries


@st.composite
def keel_lines(draw: st.DrawFn) -> dict[str, Any]:
    line: dict[str, Any] = {"custom_id": draw(custom_ids)}
    if draw(st.booleans()):
        line["prompt"] = draw(words)
    else:
        line["messages"] = draw(messages())
    optional = {
        "system": words,
        "model": models,
        "max_tokens": st.integers(1, 200_000),
        "temperature": st.floats(0, 2),
        "metadata": metadata,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            line[name] = draw(strategy)
    return line


@st.composite
def openai_lines(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(models), "messages": draw(messages())}
    optional = {
        "max_tokens": st.integers(1, 200_000),
        "max_completion_tokens": st.integers(1, 200_000),
        "temperature": st.floats(0, 2),
        "metadata": metadata,
        "seed": st.integers(0, 100),  # ignored with a warning
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "object"}},
                },
            ]
        ),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    return {
        "custom_id": draw(custom_ids),
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
    }


def expected_request(line: dict[str, Any]) -> ItemRequest:
    """What a valid line asks for, written from the documented format, not from the parser."""

    def content(value: Any) -> str:
        return value if isinstance(value, str) else "".join(part["text"] for part in value)

    def converted(entries: list[dict[str, Any]]) -> list[ChatMessage]:
        return [
            ChatMessage(
                role="system" if entry["role"] == "developer" else entry["role"],
                content=content(entry["content"]),
            )
            for entry in entries
        ]

    if "body" in line:
        body = line["body"]
        response_format = body.get("response_format") or {}
        schema = (response_format.get("json_schema") or {}).get("schema")
        return ItemRequest(
            messages=converted(body["messages"]),
            model=body["model"],
            max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
            temperature=body.get("temperature"),
            json_schema=schema,
            json_schema_name=(response_format.get("json_schema") or {}).get("name") or "answer",
            metadata=body.get("metadata"),
        )
    asked = (
        [ChatMessage(role="user", content=line["prompt"])]
        if "prompt" in line
        else converted(line["messages"])
    )
    system = [ChatMessage(role="system", content=line["system"])] if "system" in line else []
    return ItemRequest(
        messages=system + asked,
        model=line.get("model"),
        max_tokens=line.get("max_tokens"),
        temperature=line.get("temperature"),
        metadata=line.get("metadata"),
    )


def _containers(value: Any, into: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON value: the places a mutation can hit."""
    if isinstance(value, dict):
        for key, item in value.items():
            into.append((value, key))
            _containers(item, into)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            into.append((value, index))
            _containers(item, into)
    return into


@st.composite
def mutated(draw: st.DrawFn, line: dict[str, Any]) -> str:
    """A valid line, hit by up to four structural mutations and then maybe by one on its
    text: a field dropped, replaced by any JSON value or a nasty string, an unknown field
    added, the JSON cut short, a number made huge or NaN."""
    for _ in range(draw(st.integers(0, 4))):
        places = _containers(line, [])
        if not places:  # everything was dropped already
            break
        container, key = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["drop", "replace", "nasty", "add"]))
        if action == "drop" and isinstance(container, dict):
            del container[key]
        elif action == "replace":
            container[key] = draw(json_values)
        elif action == "nasty":
            container[key] = draw(nasty_text)
        elif isinstance(container, dict):
            container[draw(any_text)] = draw(json_values)
    text = json.dumps(line, ensure_ascii=draw(st.booleans()))
    edit = draw(st.sampled_from(["none", "none", "cut", "huge", "nan", "deep"]))
    if edit == "cut":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif edit == "huge":
        text = text.replace('"custom_id"', '"n": ' + "9" * 5000 + ', "custom_id"', 1)
    elif edit == "nan":
        text = text.replace('"custom_id"', '"n": NaN, "custom_id"', 1)
    elif edit == "deep":
        depth = draw(st.sampled_from([70, 5000]))
        text = text.replace('"custom_id"', '"n": ' + "[" * depth + "]" * depth + ', "custom_id"')
    return text


def join_lines(draw: Callable[[st.SearchStrategy[Any]], Any], lines: list[str]) -> bytes:
    """Lines as a file: "\\n" or "\\r\\n", blank lines between, maybe no final newline."""
    out = b""
    for line in lines:
        if draw(st.integers(0, 5)) == 0:
            out += draw(st.sampled_from([b"\n", b"   \n", b"\t\r\n"]))
        out += line.encode("utf-8", "surrogatepass") + draw(st.sampled_from([b"\n", b"\r\n"]))
    if out and draw(st.booleans()):
        out = out.rstrip(b"\r\n")
    return out


@st.composite
def mixed_files(draw: st.DrawFn) -> bytes:
    """Valid lines of both formats, mutated ones, oversized ones, with unique ids."""
    lines: list[str] = []
    for number in range(draw(st.integers(1, 12))):
        line = draw(keel_lines() | openai_lines())
        line["custom_id"] = f"{line['custom_id']}-{number}"
        kind = draw(st.sampled_from(["valid", "valid", "mutated", "oversized"]))
        if kind == "valid":
            lines.append(json.dumps(line))
        elif kind == "mutated":
            lines.append(draw(mutated(line)))
        else:
            line["custom_id"] += "-" + "p" * LIMITS.line_bytes  # past the line limit
            lines.append(json.dumps(line))
    return join_lines(draw, lines)


# --- the properties ------------------------------------------------------------------------


@fuzz_profile(400)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_break_the_parser(data: bytes) -> None:
    check_file(data)


@fuzz_profile(300)
@given(st.lists(st.binary(max_size=800), max_size=10).map(b"\n".join))
def test_arbitrary_byte_lines_with_long_ones_never_break_the_parser(data: bytes) -> None:
    check_file(data)


@fuzz_profile(400)
@given(st.lists(json_values, min_size=1, max_size=8), st.data())
def test_arbitrary_json_lines_are_each_one_item(values: list[Any], data: st.DataObject) -> None:
    lines = [json.dumps(value, ensure_ascii=data.draw(st.booleans())) for value in values]
    parsed = check_file(join_lines(data.draw, lines))
    assert len(parsed) == len(values)  # a JSON value is never blank


@fuzz_profile(400)
@given(keel_lines() | openai_lines())
def test_a_valid_line_is_accepted_as_exactly_what_it_asks_for(line: dict[str, Any]) -> None:
    raw = json.dumps(line).encode()
    (parsed,) = check_file(raw)
    expected = expected_request(line)
    texts = [m.content for m in expected.messages]
    over_limit = (
        len(raw) > LIMITS.line_bytes
        or sum(map(len, texts)) > LIMITS.prompt.max_chars
        or len(texts) > LIMITS.prompt.max_messages
        or count_message_tokens(texts) > LIMITS.prompt.max_tokens
    )
    if over_limit:
        assert parsed.problem is not None and "KEEL_MAX_" in parsed.problem
        return
    assert parsed.problem is None, parsed.problem
    assert parsed.custom_id == line["custom_id"] and parsed.request == expected
    assert parsed.line_format == ("openai" if "body" in line else "keel")


@fuzz_profile(500)
@given(st.data())
def test_mutated_lines_are_accepted_or_rejected_never_crash(data: st.DataObject) -> None:
    line = data.draw(keel_lines() | openai_lines())
    text = data.draw(mutated(line))
    (parsed,) = check_file(text.encode("utf-8", "surrogatepass") or b"{}", ROOMY)
    if parsed.request is not None:  # a mutation can leave a valid line: then it is runnable
        assert parsed.custom_id and len(parsed.custom_id) <= 500


@fuzz_profile(200)
@given(mixed_files())
def test_mixed_files_report_every_line_once(data: bytes) -> None:
    check_file(data)


@fuzz_profile(100)
@given(mixed_files(), st.integers(1, 8))
def test_the_item_limit_refuses_the_file_before_the_item_past_it(data: bytes, items: int) -> None:
    limits = BatchFileLimits(LIMITS.file_bytes, LIMITS.line_bytes, items, LIMITS.prompt)
    expected = item_line_numbers(data, limits)
    if len(expected) <= items:
        assert [p.line_no for p in parse_bytes(data, limits)] == expected
        return
    with pytest.raises(BatchFileRefused) as refused:
        parse_bytes(data, limits)
    assert f"line {expected[items]} is item {items + 1}" in str(refused.value)
    assert "KEEL_MAX_BATCH_ITEMS" in str(refused.value)


@fuzz_profile(100)
@given(mixed_files(), st.integers(0, 2000))
def test_the_file_limit_holds_while_reading(data: bytes, file_bytes: int) -> None:
    limits = BatchFileLimits(file_bytes, LIMITS.line_bytes, LIMITS.items, LIMITS.prompt)
    if len(data) <= file_bytes:
        check_file(data, limits)
        return
    with pytest.raises(BatchFileRefused) as refused:
        parse_bytes(data, limits)
    assert "KEEL_MAX_BATCH_FILE_BYTES" in str(refused.value)


# --- what is stored is what runs (real Postgres, keel's real data converter) -----------------

_batches = iter(range(10**9))


@fuzz_profile(60)
@given(data=mixed_files())
async def test_what_the_parser_accepts_is_stored_and_carried_unchanged(
    database_url: str, data: bytes
) -> None:
    parsed = check_file(data)
    if validate(parsed).duplicates:
        return  # such a file is refused before anything is written
    batch_id = f"fuzz-{next(_batches)}"
    async with session_factory().begin() as session:
        assert await create_batch(session, batch_id, BatchOptions(), source_name="fuzz")
        total, invalid = await insert_items(session, batch_id, parsed)
    assert total == len(parsed) and invalid == sum(1 for p in parsed if not p.valid)
    async with session_factory()() as session:
        rows = list(
            (
                await session.execute(
                    select(BatchItem)
                    .where(BatchItem.batch_id == batch_id)
                    .order_by(BatchItem.line_no)
                )
            ).scalars()
        )
    assert [row.line_no for row in rows] == [p.line_no for p in parsed]
    converter = keel_data_converter(KeelSettings())
    for row, line in zip(rows, parsed, strict=True):
        if line.request is None:
            assert row.status == "failed" and row.request is None
            assert row.error_message == f"line {line.line_no}: {line.problem}"
            continue
        assert row.status == "pending" and row.custom_id == line.custom_id
        # As the claim activity reads it, and as the worker receives it.
        claimed = ClaimedItem(
            custom_id=row.custom_id,
            line_no=row.line_no,
            request=ItemRequest.model_validate(row.request),
        )
        assert claimed.request == line.request
        (carried,) = await converter.decode(await converter.encode([claimed]), [ClaimedItem])
        assert carried == claimed


# --- found by the fuzzing above: each crashed the parser, or was accepted and then broke the
# --- batch's start when Postgres refused to store it ------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # Crashed: ValueError (Python's 4,300-digit limit), not the JSONDecodeError caught.
        (b'{"custom_id": "a", "prompt": "x", "n": ' + b"9" * 5000 + b"}", "4,300 digits"),
        # Crashed: RecursionError from json.loads.
        (b'{"custom_id": "a", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too deeply"),
        # Accepted, then INSERT failed: Postgres JSON has no NaN/Infinity, text no NUL.
        (b'{"custom_id": "a", "prompt": "x", "metadata": {"v": NaN}}', "NaN is not a JSON"),
        (b'{"custom_id": "a", "prompt": "x", "metadata": {"v": 1e999}}', "too large for a float"),
        (b'{"custom_id": "a", "prompt": "x\\u0000y"}', "NUL character"),
        (b'{"custom_id": "a", "prompt": "x", "metadata": {"\\u0000": 1}}', "NUL character"),
        (b'{"custom_id": "a\\ud800", "prompt": "x"}', "unpaired surrogate"),
        # Accepted, then failed the batch_items.model VARCHAR(200).
        (b'{"custom_id": "a", "prompt": "x", "model": "' + b"m" * 201 + b'"}', "at most 200"),
    ],
)
def test_lines_that_broke_keel_are_rejected_with_a_reason(line: bytes, reason: str) -> None:
    (parsed,) = check_file(line, ROOMY)
    assert parsed.problem is not None and reason in parsed.problem, parsed.problem
