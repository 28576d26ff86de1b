"""The OpenAI Chat Completions surface, driven by the real ``openai`` SDK over HTTP."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from llmsim import MESSAGE_OVERHEAD_TOKENS, SimServer, count_message_tokens, count_tokens

MODEL = "gpt-4o-mini"
USER: Any = [{"role": "user", "content": "Summarise the quarterly revenue report for me"}]


async def collect(stream: Any) -> tuple[str, Any, list[Any]]:
    text, usage, chunks = "", None, []
    async for chunk in stream:
        chunks.append(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text, usage, chunks


def cached_tokens(response: Any) -> int:
    details = response.usage.prompt_tokens_details
    return int(details.cached_tokens or 0)


@pytest.mark.asyncio
async def test_completion_echoes_the_prompt_and_reports_usage(oai: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, *USER]
    r = await oai.chat.completions.create(model=MODEL, messages=messages)
    text = r.choices[0].message.content or ""
    assert text.startswith("Re: Summarise the quarterly revenue report for.")
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == count_message_tokens(["Be brief.", USER[0]["content"]])
    assert r.usage.completion_tokens == count_tokens(text)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.asyncio
async def test_stream_matches_the_non_streamed_answer(oai: openai.AsyncOpenAI) -> None:
    whole = await oai.chat.completions.create(model=MODEL, messages=USER)
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = await collect(stream)
    assert text == whole.choices[0].message.content
    assert len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and usage is not None
    assert whole.usage is not None and usage.model_dump() == whole.usage.model_dump()
    # Without include_usage no chunk carries usage.
    plain = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    text2, usage2, _ = await collect(plain)
    assert text2 == text and usage2 is None


@pytest.mark.asyncio
async def test_replies_are_deterministic_per_seed(oai: openai.AsyncOpenAI, sim: SimServer) -> None:
    async def ask(**kw: Any) -> str:
        r = await oai.chat.completions.create(model=MODEL, messages=USER, **kw)
        return r.choices[0].message.content or ""

    first = await ask()
    assert await ask(temperature=1.5) == first  # temperature never adds randomness
    assert await ask(seed=123) != first  # the request's seed does
    other: Any = [{"role": "user", "content": "Something else entirely"}]
    r = await oai.chat.completions.create(model=MODEL, messages=other)
    assert r.choices[0].message.content != first
    r = await oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].message.content != first
    sim.configure(seed=99)
    assert await ask() != first
    sim.configure(seed=7)
    assert await ask() == first


@pytest.mark.asyncio
async def test_max_tokens_cuts_with_finish_reason_length(oai: openai.AsyncOpenAI) -> None:
    limits: list[dict[str, Any]] = [{"max_tokens": 5}, {"max_completion_tokens": 5}]
    for kw in limits:
        r = await oai.chat.completions.create(model=MODEL, messages=USER, **kw)
        assert r.choices[0].finish_reason == "length"
        assert r.usage is not None and r.usage.completion_tokens == 5
        assert count_tokens(r.choices[0].message.content or "") == 5
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = await collect(stream)
    assert count_tokens(text) == 5 and usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    roomy = await oai.chat.completions.create(model=MODEL, messages=USER, max_tokens=1000)
    assert roomy.choices[0].finish_reason == "stop"


class Verdict(BaseModel):
    label: str = Field(description="one word")
    confidence: float = Field(ge=0, le=1)
    reasons: list[str]
    severity: int | None = Field(ge=1, le=5)


@pytest.mark.asyncio
async def test_json_schema_output_validates(oai: openai.AsyncOpenAI) -> None:
    schema = Verdict.model_json_schema()
    r = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": schema}},
    )
    value = json.loads(r.choices[0].message.content or "")
    jsonschema.validate(value, schema)
    assert r.usage is not None and r.usage.completion_tokens == count_tokens(
        r.choices[0].message.content or ""
    )
    # The SDK's own structured-output helper parses it into the model.
    parsed = await oai.chat.completions.parse(model=MODEL, messages=USER, response_format=Verdict)
    assert isinstance(parsed.choices[0].message.parsed, Verdict)


@pytest.mark.asyncio
async def test_json_object_output(oai: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Reply in JSON please"}]
    r = await oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError):  # like the real API: the prompt must say JSON
        await oai.chat.completions.create(
            model=MODEL,
            messages=USER,
            response_format={"type": "json_object"},
        )


@pytest.mark.asyncio
async def test_forced_tool_call(oai: openai.AsyncOpenAI) -> None:
    params = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
    }
    tools: Any = [{"type": "function", "function": {"name": "forecast", "parameters": params}}]
    r = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=tools,
        tool_choice="required",
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and calls[0].type == "function"
    call = calls[0]
    assert call.function.name == "forecast"
    jsonschema.validate(json.loads(call.function.arguments), params)
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=tools,
        tool_choice="required",
        stream=True,
    )
    args = ""
    async for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                args += (tc.function.arguments or "") if tc.function else ""
    assert args == call.function.arguments


@pytest.mark.asyncio
async def test_unknown_model_is_a_404(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await oai.chat.completions.create(model="gpt-9-ultra", messages=USER)
    assert err.value.code == "model_not_found"
    assert "gpt-9-ultra" in err.value.message


@pytest.mark.asyncio
async def test_context_window_errors(oai: openai.AsyncOpenAI) -> None:
    huge: Any = [{"role": "user", "content": "word " * 2100}]
    with pytest.raises(openai.BadRequestError) as err:
        await oai.chat.completions.create(model="sim-tiny", messages=huge)
    assert err.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in err.value.message
    # Prompt plus max_tokens over the window is the same error, as on the real API.
    half: Any = [{"role": "user", "content": "word " * 1500}]
    with pytest.raises(openai.BadRequestError) as err:
        await oai.chat.completions.create(model="sim-tiny", messages=half, max_tokens=1000)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(model="sim-tiny", messages=USER, max_tokens=5000)


@pytest.mark.asyncio
async def test_reasoning_model_reports_reasoning_tokens(oai: openai.AsyncOpenAI) -> None:
    r = await oai.chat.completions.create(model="o4-mini", messages=USER)
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    reasoning = r.usage.completion_tokens_details.reasoning_tokens or 0
    assert reasoning > 0
    assert r.usage.completion_tokens == reasoning + count_tokens(r.choices[0].message.content or "")


@pytest.mark.asyncio
async def test_repeated_long_prompt_reports_cached_tokens(oai: openai.AsyncOpenAI) -> None:
    long_system: Any = {"role": "system", "content": "policy " * 1200}
    first = await oai.chat.completions.create(
        model=MODEL,
        messages=[long_system, *USER],
    )
    again = await oai.chat.completions.create(
        model=MODEL,
        messages=[long_system, {"role": "user", "content": "another question"}],
    )
    assert cached_tokens(first) == 0
    cached = cached_tokens(again)
    system_tokens = count_tokens(long_system["content"]) + MESSAGE_OVERHEAD_TOKENS
    assert 1024 <= cached <= system_tokens and cached % 128 == 0


@pytest.mark.asyncio
async def test_stop_sequences_and_n(oai: openai.AsyncOpenAI) -> None:
    r = await oai.chat.completions.create(model=MODEL, messages=USER, stop=["quarterly"])
    assert r.choices[0].message.content == "Re: Summarise the "
    assert r.choices[0].finish_reason == "stop"
    many = await oai.chat.completions.create(model=MODEL, messages=USER, n=3)
    texts = [c.message.content for c in many.choices]
    assert [c.index for c in many.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert many.usage is not None
    assert many.usage.completion_tokens == sum(count_tokens(t or "") for t in texts)


@pytest.mark.asyncio
async def test_models_endpoint(oai: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in oai.models.list()]
    assert {"gpt-4o-mini", "gpt-4o", "o4-mini", "claude-sonnet-4-5", "sim-tiny"} <= set(ids)
    model = await oai.models.retrieve("sim-tiny")
    assert model.id == "sim-tiny"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nope")


async def test_a_tool_message_needs_its_call_and_a_call_needs_its_result(
    oai: openai.AsyncOpenAI,
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": "{}"},
    }
    with pytest.raises(openai.BadRequestError, match="must be a response to a preceeding"):
        await oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_1", "content": "orphan"},
            ],
        )
    with pytest.raises(openai.BadRequestError, match="did not have response messages: call_1"):
        await oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
                {"role": "user", "content": "and?"},
            ],
        )


async def test_automatic_tool_choice_calls_the_tool_that_fits_the_question(
    oai: openai.AsyncOpenAI,
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "send_email",
                "description": "Send an email",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    weather = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
    )
    joke = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a joke."}],
        tools=tools,  # type: ignore[arg-type]
    )
    (call,) = weather.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert weather.choices[0].finish_reason == "tool_calls"
    assert joke.choices[0].message.content and joke.choices[0].finish_reason == "stop"
