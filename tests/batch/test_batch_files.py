"""Reading batch files: keel lines and OpenAI Batch API lines become the same request; every
malformed line is reported with its number and a reason; duplicate ids refuse the file."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.batch.files import BatchFileLimits, parse_line, parse_lines, validate
from activities.batch.items import refusal
from contracts.batch import ItemRequest
from infra.settings import KeelSettings

# The limits a worker with default settings reads files with.
LIMITS = BatchFileLimits.from_settings(KeelSettings())


def parsed(line: object) -> ItemRequest:
    result = parse_line(1, json.dumps(line), LIMITS)
    assert result is not None and result.request is not None, result
    return result.request


def problem(line: object | str) -> str:
    result = parse_line(7, line if isinstance(line, str) else json.dumps(line), LIMITS)
    assert result is not None and result.problem is not None, result
    return result.problem


def test_keel_and_openai_lines_become_the_same_request() -> None:
    keel = parsed(
        {
            "custom_id": "a",
            "system": "Be brief.",
            "prompt": "Name a river.",
            "model": "gpt-4o-mini",
            "max_tokens": 50,
            "temperature": 0,
            "metadata": {"row": 1},
        }
    )
    openai = parsed(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Name a river."}]},
                ],
                "max_completion_tokens": 50,
                "temperature": 0,
                "metadata": {"row": 1},
            },
        }
    )
    assert keel == openai
    assert keel.parameters().max_tokens == 50


def test_an_openai_json_schema_response_format_is_kept() -> None:
    schema = {"type": "object", "properties": {"river": {"type": "string"}}}
    request = parsed(
        {
            "custom_id": "s",
            "url": "/v1/chat/completions",
            "method": "POST",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "A river?"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "river", "schema": schema},
                },
            },
        }
    )
    assert request.parameters().json_schema == schema
    assert request.parameters().json_schema_name == "river"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"custom_id": "a", "prompt": ', "invalid JSON"),
        ("[1, 2]", "a line must be a JSON object, not list"),
        ({"prompt": "x"}, "'custom_id' must be a non-empty string"),
        ({"custom_id": "a"}, "give exactly one of 'prompt' or 'messages'"),
        ({"custom_id": "a", "prompt": "x", "messages": []}, "exactly one of"),
        ({"custom_id": "a", "prompt": "x", "max_token": 5}, "unknown field(s) max_token"),
        ({"custom_id": "a", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"custom_id": "a", "messages": [{"role": "tool", "content": "x"}]}, "role 'tool'"),
        (
            {"custom_id": "a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "content part of type 'image_url' is not supported",
        ),
        (
            {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}},
            "url '/v1/embeddings' is not supported",
        ),
        (
            {
                "custom_id": "a",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2},
            },
            "body field(s) n not supported",
        ),
        (
            {"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}},
            "method must be POST",
        ),
        ({"custom_id": "x" * 501, "prompt": "x"}, "longer than 500"),
    ],
)
def test_malformed_lines_say_why(line: object, reason: str) -> None:
    assert reason in problem(line)


def test_ignored_openai_fields_are_warnings_not_errors() -> None:
    line = parse_line(
        3,
        json.dumps(
            {
                "custom_id": "w",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "x"}],
                    "seed": 1,
                    "user": "u",
                },
            }
        ),
        LIMITS,
    )
    assert line is not None and line.valid
    assert line.warnings == ["ignored body field(s): seed, user"]


def test_oversized_and_non_utf8_lines_are_reported() -> None:
    big = parse_line(2, b"x" * (KeelSettings().max_batch_line_bytes + 1), LIMITS)
    assert big is not None and "KEEL_MAX_BATCH_LINE_BYTES" in (big.problem or "")
    bad = parse_line(3, b'{"custom_id": "\xff"}', LIMITS)
    assert bad is not None and "not UTF-8" in (bad.problem or "")


def test_validation_reports_line_numbers_duplicates_and_skips_blank_lines() -> None:
    lines = [
        '{"custom_id": "a", "prompt": "x"}',
        "",
        '{"custom_id": "b", "prompt": ',
        '{"custom_id": "a", "prompt": "y"}',
        '{"custom_id": "c", "prompt": "z"}',
    ]
    report = validate(parse_lines(lines, LIMITS))
    assert (report.lines, report.valid) == (4, 3)
    assert [(p.line_no, p.custom_id) for p in report.problems] == [(3, None)]
    assert [(d.custom_id, d.line_numbers) for d in report.duplicates] == [("a", [1, 4])]
    assert refusal(report, strict=False) is not None  # duplicates always refuse
    clean = validate(parse_lines([lines[0], lines[2], lines[4]], LIMITS))
    assert refusal(clean, strict=False) is None
    assert refusal(clean, strict=True) == "1 malformed line(s) and --strict is set"
    empty = refusal(validate(parse_lines(["", " "], LIMITS)), strict=False)
    assert empty == "the file has no valid items: 0 line(s)"


def test_a_file_with_no_valid_line_is_refused_like_an_empty_one() -> None:
    malformed = ["not json", '{"custom_id": "a"}', "[1]", '{"prompt": ', "{}"]
    reason = refusal(validate(parse_lines(malformed, LIMITS)), strict=False)
    assert reason is not None
    assert reason.startswith("the file has no valid items: 5 line(s), 5 malformed (line 1: ")
    # The first three problems are quoted by line, the rest counted.
    assert "; line 2: " in reason and "; line 3: " in reason and "line 4:" not in reason
    assert reason.endswith("; and 2 more)")
    # One valid line among them and the file runs (its malformed lines become failed items).
    assert (
        refusal(
            validate(parse_lines([*malformed, '{"custom_id": "b", "prompt": "x"}'], LIMITS)),
            strict=False,
        )
        is None
    )


def test_a_synthetic_id_never_collides_with_a_real_one() -> None:
    report = validate(parse_lines(['{"custom_id": "line-2", "prompt": "x"}', "not json"], LIMITS))
    assert [d.custom_id for d in report.duplicates] == ["line-2"]


@given(st.text(max_size=300))
def test_no_line_makes_the_parser_raise(text: str) -> None:
    result = parse_line(1, text, LIMITS)
    assert result is None or result.valid or result.problem


# Text Postgres can store: no NUL, no unpaired surrogates (those lines are refused instead).
storable = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


@given(
    custom_id=st.text(storable, min_size=1, max_size=40).filter(str.strip),
    prompt=st.text(storable, min_size=1, max_size=200).filter(str.strip),
    max_tokens=st.none() | st.integers(min_value=1, max_value=4096),
)
def test_valid_keel_lines_round_trip(custom_id: str, prompt: str, max_tokens: int | None) -> None:
    line: dict[str, object] = {"custom_id": custom_id, "prompt": prompt}
    if max_tokens is not None:
        line["max_tokens"] = max_tokens
    result = parse_line(1, json.dumps(line), LIMITS)
    assert result is not None and result.custom_id == custom_id
    assert result.request is not None and result.request.messages[0].content == prompt
    stored = result.request.model_dump(mode="json", exclude_none=True)
    assert ItemRequest.model_validate(stored) == result.request
