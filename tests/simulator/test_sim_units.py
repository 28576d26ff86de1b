"""Pure parts of the simulator: token rule, schema instances, fault draws, profiles."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Literal

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from llmsim import (
    PROFILES,
    CannedResponse,
    FaultKind,
    FaultProfile,
    FaultRule,
    SimConfig,
    count_message_tokens,
    count_tokens,
    load_profile_file,
)
from llmsim.faults import FaultPlan, ScriptedFault, draw, effective_rules
from llmsim.pipeline import Frame, PacedStreamResponse
from llmsim.schema_instance import instance_for
from llmsim.state import SimState
from llmsim.tokens import MESSAGE_OVERHEAD_TOKENS, split_tokens


def test_token_rule_examples() -> None:
    assert count_tokens("") == 0
    assert count_tokens("   \n\t") == 0
    assert count_tokens("hello, world") == 5  # hell|o|,|worl|d
    assert count_tokens("a b c") == 3
    assert count_tokens("Re: x.") == 4
    assert count_message_tokens(["hi", "there"]) == 1 + 2 + 2 * MESSAGE_OVERHEAD_TOKENS


@given(st.text(max_size=300), st.integers(min_value=0, max_value=200))
def test_token_prefixes_recount_exactly(text: str, n: int) -> None:
    pieces = split_tokens(text)
    assert len(pieces) == count_tokens(text)
    assert "".join(pieces) == text.rstrip() or not text.strip()
    assert count_tokens("".join(pieces[:n])) == min(n, len(pieces))


@given(st.lists(st.text(max_size=40), max_size=6))
def test_tokens_add_up_over_newline_joins(parts: list[str]) -> None:
    assert count_tokens("\n".join(parts)) == sum(count_tokens(p) for p in parts)


class Address(BaseModel):
    street: str
    city: str = Field(min_length=3, max_length=12)
    zip_code: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=99)
    score: float = Field(gt=0, lt=1)
    tags: list[str] = Field(min_length=1, max_length=3)
    kind: Literal["admin", "user"]
    active: bool
    address: Address
    friends: list[Person] = Field(default_factory=list)


SCHEMAS: list[dict[str, object]] = [
    Person.model_json_schema(),
    {
        "type": "object",
        "properties": {"a": {"const": 3}, "b": {"enum": ["x", "y"]}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    {"type": ["string", "null"], "format": "date-time"},
    {"type": "string", "nullable": True, "format": "uuid"},
    {"anyOf": [{"type": "integer", "minimum": 5, "maximum": 5}, {"type": "null"}]},
    {"type": "number", "multipleOf": 0.1, "minimum": 0.2, "maximum": 0.9},
    {"type": "integer", "exclusiveMinimum": 9, "exclusiveMaximum": 11},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True, "minItems": 3},
    {"type": "object", "properties": {"n": {"type": "integer", "default": 42}}},
    {"type": "object", "properties": {"e": {"type": "string", "examples": ["hi@x.io"]}}},
    {
        "allOf": [
            {"properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ]
    },
    {"type": "string", "minLength": 40, "maxLength": 45},
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", range(8))
def test_schema_instances_validate(schema: dict[str, object], seed: int) -> None:
    value = instance_for(schema, random.Random(seed))
    jsonschema.validate(value, schema)
    json.dumps(value)  # and it is JSON


def test_schema_default_and_examples_are_used() -> None:
    value = instance_for(SCHEMAS[8], random.Random(0))
    assert value == {"n": 42}
    assert instance_for(SCHEMAS[9], random.Random(0)) == {"e": "hi@x.io"}


def test_schema_instance_is_deterministic() -> None:
    schema = Person.model_json_schema()
    assert instance_for(schema, random.Random(5)) == instance_for(schema, random.Random(5))
    assert instance_for(schema, random.Random(5)) != instance_for(schema, random.Random(6))


def test_rule_for_a_model_overrides_the_wildcard_rule_of_the_same_kind() -> None:
    rules = [
        FaultRule(kind=FaultKind.RATE_LIMIT, rate=0.5),
        FaultRule(kind=FaultKind.SERVER_ERROR, rate=0.1),
        FaultRule(model="m", kind=FaultKind.RATE_LIMIT, rate=0.0),
    ]
    assert [r.kind for r in effective_rules(rules, "m")] == [FaultKind.SERVER_ERROR]
    assert {r.kind for r in effective_rules(rules, "other")} == {
        FaultKind.RATE_LIMIT,
        FaultKind.SERVER_ERROR,
    }


def test_fault_draws_match_their_rates_and_replay() -> None:
    rules = PROFILES["flaky"].rules
    fates = [draw(rules, 1, "gpt-4o", i) for i in range(4000)]
    again = [draw(rules, 1, "gpt-4o", i) for i in range(4000)]
    assert fates == again
    share = {k: sum(1 for f in fates if f and f.kind is k) / len(fates) for k in FaultKind}
    assert abs(share[FaultKind.RATE_LIMIT] - 0.20) < 0.03
    assert abs(share[FaultKind.SERVER_ERROR] - 0.10) < 0.02
    assert abs(share[FaultKind.OVERLOADED] - 0.05) < 0.015
    assert abs(share[FaultKind.STREAM_RESET] - 0.03) < 0.01
    assert all(draw(rules, 1, "gpt-4o-mini", i) is None for i in range(500))
    assert [draw(rules, 2, "gpt-4o", i) for i in range(200)] != fates[:200]


def test_scripted_faults_are_fifo_per_model_then_wildcard() -> None:
    plan = FaultPlan()
    plan.add_scripted(ScriptedFault(model="a", kind=FaultKind.HANG, count=2))
    plan.add_scripted(ScriptedFault(model="*", kind=FaultKind.SERVER_ERROR))
    plan.add_scripted(ScriptedFault(model="a", kind=FaultKind.OVERLOADED))
    kinds = [f.kind if (f := plan.next_fault(0, "a", i)) else None for i in range(5)]
    assert kinds == [
        FaultKind.HANG,
        FaultKind.HANG,
        FaultKind.OVERLOADED,
        FaultKind.SERVER_ERROR,
        None,
    ]


def test_profiles_and_profile_files(tmp_path: Path) -> None:
    assert {"none", "flaky", "chaos", "rate-limited"} <= PROFILES.keys()
    data = {
        "rules": [{"model": "gpt-4o", "kind": "hang", "rate": 0.5}],
        "scripted": [{"model": "x", "kind": "rate_limit", "count": 2}],
    }
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(data))
    as_yaml = tmp_path / "p.yaml"
    as_yaml.write_text(
        "rules:\n  - {model: gpt-4o, kind: hang, rate: 0.5}\n"
        "scripted:\n  - {model: x, kind: rate_limit, count: 2}\n"
    )
    assert load_profile_file(as_json) == load_profile_file(as_yaml)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [{"kind": "meteor", "rate": 2}]}))
    with pytest.raises(ValueError):
        load_profile_file(bad)
    with pytest.raises(ValueError):
        SimConfig(profile="nope")


def test_reset_restores_the_startup_faults_and_canned_responses() -> None:
    config = SimConfig(
        profile="flaky",
        faults=FaultProfile(scripted=[ScriptedFault(model="m", kind=FaultKind.HANG)]),
        canned_responses=[CannedResponse(match="ping", content="pong")],
    )
    state = SimState(config)
    assert state.admit("m", stream=False) is not None  # the scripted hang
    assert state.find_canned("gpt-4o", "ping?") == "pong"
    state.clear_faults()
    state.clear_canned()
    state.reset()
    assert state.faults_view()["scripted"][0]["kind"] == "hang"
    assert len(state.faults_view()["rules"]) == len(PROFILES["flaky"].rules)
    assert state.find_canned("gpt-4o", "ping?") == "pong"
    assert state.stats()["models"] == {}


async def test_a_stream_keeps_its_latency_when_sending_is_slow() -> None:
    """A provider generates on its own clock: a client (or an event loop) slow to take each
    chunk does not stretch the answer past its latency model. Paced by sleeping a chunk
    interval after each send, 20 chunks at 10 ms with 10 ms per send took ≈ 0.4 s, not 0.25."""
    frames = [
        Frame(b"open", "open"),
        *(Frame(b"chunk", "content") for _ in range(20)),
        Frame(b"close", "close"),
    ]
    response = PacedStreamResponse(
        frames,
        state=SimState(SimConfig()),
        first_token_s=0.05,
        per_chunk_s=0.01,
        reset_after=None,
        on_complete=lambda: None,
        headers={},
    )

    async def slow_send(message: object) -> None:
        await asyncio.sleep(0.01)

    started = time.perf_counter()
    assert await response._run({"type": "http"}, slow_send)
    took = time.perf_counter() - started
    model = 0.05 + 20 * 0.01  # first token, then one interval per later frame
    assert took < model + 0.06, f"{took:.3f}s for a {model:.2f}s stream"
