"""The Anthropic Messages surface, driven by the real ``anthropic`` SDK over HTTP."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import jsonschema
import pytest

from llmsim import SimServer, count_message_tokens, count_tokens

MODEL = "claude-3-5-haiku-latest"
USER: list[Any] = [{"role": "user", "content": "Name three rivers in Europe please"}]


def text_of(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert block.type == "text"
    return block.text


@pytest.mark.asyncio
async def test_message_echoes_the_prompt_and_reports_usage(anth: anthropic.AsyncAnthropic) -> None:
    m = await anth.messages.create(model=MODEL, max_tokens=500, system="Be brief.", messages=USER)
    block = m.content[0]
    assert block.type == "text" and block.text.startswith("Re: Name three rivers in Europe please.")
    assert m.stop_reason == "end_turn" and m.model == MODEL and m.id.startswith("msg_")
    assert m.usage.input_tokens == count_message_tokens(["Be brief.", USER[0]["content"]])
    assert m.usage.output_tokens == count_tokens(block.text)
    assert m.usage.cache_read_input_tokens == 0
    assert m.usage.cache_creation_input_tokens == 0


@pytest.mark.asyncio
async def test_stream_matches_the_non_streamed_answer(anth: anthropic.AsyncAnthropic) -> None:
    whole = await anth.messages.create(model=MODEL, max_tokens=500, messages=USER)
    kinds: list[str] = []
    async with anth.messages.stream(model=MODEL, max_tokens=500, messages=USER) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert text_of(final) == text_of(whole)
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    for expected in (
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ):
        assert expected in kinds


@pytest.mark.asyncio
async def test_max_tokens_cuts_with_stop_reason_max_tokens(anth: anthropic.AsyncAnthropic) -> None:
    m = await anth.messages.create(model=MODEL, max_tokens=4, messages=USER)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 4
    assert count_tokens(text_of(m)) == 4
    async with anth.messages.stream(model=MODEL, max_tokens=4, messages=USER) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4


@pytest.mark.asyncio
async def test_same_answer_as_long_as_seed_and_prompt_match(
    anth: anthropic.AsyncAnthropic, sim: SimServer
) -> None:
    first = await anth.messages.create(model=MODEL, max_tokens=500, messages=USER)
    again = await anth.messages.create(
        model=MODEL, max_tokens=500, messages=USER, extra_body={"temperature": 1}
    )
    assert first.content == again.content
    sim.configure(seed=1234)
    other = await anth.messages.create(model=MODEL, max_tokens=500, messages=USER)
    assert other.content != first.content


@pytest.mark.asyncio
async def test_errors_have_anthropic_shapes(anth: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await anth.messages.create(model="claude-nope", max_tokens=5, messages=USER)
    assert missing.value.type == "not_found_error"
    huge: Any = [{"role": "user", "content": "word " * 2100}]
    with pytest.raises(anthropic.BadRequestError) as too_long:
        await anth.messages.create(model="sim-tiny", max_tokens=5, messages=huge)
    assert too_long.value.type == "invalid_request_error"
    assert "prompt is too long" in (too_long.value.api_message or "")
    with pytest.raises(anthropic.BadRequestError) as too_many:
        await anth.messages.create(model="sim-tiny", max_tokens=4096, messages=USER)
    assert "max_tokens" in (too_many.value.api_message or "")


@pytest.mark.asyncio
async def test_structured_output_and_tool_use(anth: anthropic.AsyncAnthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "rivers": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "string"}}
        },
        "required": ["rivers"],
        "additionalProperties": False,
    }
    m = await anth.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=USER,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    jsonschema.validate(json.loads(text_of(m)), schema)

    tools: list[Any] = [{"name": "lookup", "description": "find", "input_schema": schema}]
    m = await anth.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=USER,
        tools=tools,
        tool_choice={"type": "tool", "name": "lookup"},
    )
    assert m.stop_reason == "tool_use"
    block = m.content[0]
    assert block.type == "tool_use" and block.name == "lookup"
    jsonschema.validate(block.input, schema)
    async with anth.messages.stream(
        model=MODEL,
        max_tokens=500,
        messages=USER,
        tools=tools,
        tool_choice={"type": "tool", "name": "lookup"},
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == block.input


@pytest.mark.asyncio
async def test_cache_control_reads_and_writes(anth: anthropic.AsyncAnthropic) -> None:
    system: Any = [
        {"type": "text", "text": "policy " * 1200, "cache_control": {"type": "ephemeral"}}
    ]
    first = await anth.messages.create(model=MODEL, max_tokens=50, system=system, messages=USER)
    again = await anth.messages.create(model=MODEL, max_tokens=50, system=system, messages=USER)
    written = first.usage.cache_creation_input_tokens or 0
    assert written > 1024 and first.usage.cache_read_input_tokens == 0
    assert again.usage.cache_read_input_tokens == written
    assert again.usage.cache_creation_input_tokens == 0
    total = count_message_tokens([system[0]["text"], USER[0]["content"]])
    assert first.usage.input_tokens + written == total
    assert again.usage.input_tokens + written == total


@pytest.mark.asyncio
async def test_count_tokens_and_models(anth: anthropic.AsyncAnthropic) -> None:
    counted = await anth.messages.count_tokens(model=MODEL, messages=USER)
    assert counted.input_tokens == count_message_tokens([USER[0]["content"]])
    ids = [m.id async for m in anth.models.list()]
    assert MODEL in ids and "claude-sonnet-4-5" in ids
