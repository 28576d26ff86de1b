"""The official anthropic SDK, pointed at `keel api` (``POST /v1/messages``): a message, a stream,
tools (forced, automatic, a tool-result turn, streamed) and a system prompt, each a durable turn
of a chat session like a chat completion."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anthropic
import pytest
from anthropic.types import MessageParam, ToolChoiceParam, ToolParam

from contracts.sessions import session_workflow_id
from infra.settings import KeelSettings
from llmsim import SimServer
from services.api_tokens import IssuedToken
from tests.conftest import reconfigure
from tests.helpers import ledger_rows
from tests.sessions.conftest import stored_messages

MODEL = "claude-3-5-haiku-latest"
TOOLS: list[ToolParam] = [
    {
        "name": "get_weather",
        "description": "Current weather of a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture
def keel_settings(keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch) -> KeelSettings:
    """A model that supports nothing (no tools, no JSON schema)."""
    return reconfigure(monkeypatch, KEEL_MODEL_CAPABILITIES=json.dumps({"old-model": []}))


@pytest.fixture
async def claude(keel_url: str, api_token: IssuedToken) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # The SDK sends the keel token as `x-api-key`.
    async with anthropic.AsyncAnthropic(
        base_url=keel_url, api_key=api_token.secret, max_retries=0
    ) as client:
        yield client


def session_of(headers: dict[str, str] | object) -> str:
    return str(headers["x-keel-session-id"])  # type: ignore[index]


async def test_a_message_with_a_system_prompt_is_a_stored_turn(
    claude: anthropic.AsyncAnthropic, simulator: SimServer
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=200,
        system="Be brief.",
        messages=[{"role": "user", "content": "Name a river."}],
    )
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason == "end_turn" and message.content[0].type == "text"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    session_id = session_of(raw.headers)
    stored = await stored_messages(session_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].content == message.content[0].text
    (row,) = await ledger_rows(session_workflow_id(session_id))
    assert row.model == MODEL and row.outcome == "ok"


async def test_a_streamed_message_ends_with_the_stored_text(
    claude: anthropic.AsyncAnthropic, slow_simulator: SimServer
) -> None:
    async with claude.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "Describe a glacier."}],
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1 and final.content[0].type == "text"
    assert "".join(pieces) == final.content[0].text and final.stop_reason == "end_turn"


async def test_a_forced_tool_call_and_its_result_turn(
    claude: anthropic.AsyncAnthropic, simulator: SimServer
) -> None:
    question: MessageParam = {"role": "user", "content": "Is it raining in Lyon?"}
    called = await claude.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[question],
    )
    (use,) = called.content
    assert called.stop_reason == "tool_use" and use.type == "tool_use"
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    raw = await claude.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=200,
        tools=TOOLS,
        messages=[
            question,
            {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[misc, list-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rain"}],
            },
        ],
    )
    answered = await raw.parse()
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"
    stored = await stored_messages(session_of(raw.headers))
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].tool_calls == [
        {"id": use.id, "name": "get_weather", "arguments": json.dumps(use.input)}
    ]
    assert stored[2].tool_call_id == use.id and stored[2].content == "rain"


async def test_automatic_tool_choice_streams_a_tool_use_block(
    claude: anthropic.AsyncAnthropic, slow_simulator: SimServer
) -> None:
    async with claude.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=TOOLS,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
    ) as stream:
        json_pieces = [
            event.delta.partial_json
            async for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        final = await stream.get_final_message()
    (use,) = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and use.name == "get_weather"
    assert len(json_pieces) > 1 and json.loads("".join(json_pieces)) == use.input


async def test_a_field_keel_cannot_honour_is_refused_by_name(
    claude: anthropic.AsyncAnthropic, simulator: SimServer
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Hi"}],
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    assert "thinking" in str(refused.value)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"output_config": {"effort": "low"}}, "output_config.effort"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {}, "name": "x"}}},
            "output_config.format.name",
        ),
        (
            {"system": [{"type": "text", "text": "Be brief.", "citations": []}]},
            "system.0.citations",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool", "name": "get_weather"}}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "auto", "reason": "x"}},
            "tool_choice.reason",
        ),
        # Checked as Chat Completions checks them (api/wire_checks.py).
        ({"tools": [*TOOLS, *TOOLS]}, "tools"),
    ],
)
async def test_a_nested_field_keel_cannot_honour_is_refused_by_name(
    extra: dict[str, object], param: str, claude: anthropic.AsyncAnthropic, simulator: SimServer
) -> None:
    """Inside the objects keel knows (output_config, system blocks, tool_choice) too: a field keel
    would drop, or a tool_choice that asks for a tool when there are none, is a 400."""
    requests_before = simulator.stats()["totals"]["requests"]
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body=extra,
        )
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["error"]["param"] == param
    assert param in refused.value.body["error"]["message"]
    assert simulator.stats()["totals"]["requests"] == requests_before


async def test_tool_choice_auto_or_none_without_tools_answers_in_text(
    claude: anthropic.AsyncAnthropic, simulator: SimServer
) -> None:
    """Without tools, "auto" and "none" ask for what the model does anyway: answered."""
    choices: list[ToolChoiceParam] = [{"type": "auto"}, {"type": "none"}]
    for choice in choices:
        message = await claude.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Name a river."}],
            tool_choice=choice,
        )
        assert message.stop_reason == "end_turn" and message.content[0].type == "text"


async def test_a_capability_refusal_names_the_messages_field_that_asks_for_it(
    claude: anthropic.AsyncAnthropic, simulator: SimServer
) -> None:
    question: list[MessageParam] = [{"role": "user", "content": "Forecast for Oslo."}]
    with pytest.raises(anthropic.BadRequestError) as structured:
        await claude.messages.create(
            model="old-model",
            max_tokens=200,
            messages=question,
            output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        )
    with pytest.raises(anthropic.BadRequestError) as tools:
        await claude.messages.create(
            model="old-model", max_tokens=200, messages=question, tools=TOOLS
        )
    for refused, param in ((structured, "output_config.format"), (tools, "tools")):
        assert isinstance(refused.value.body, dict)
        error = refused.value.body["error"]
        assert error["param"] == param and f"cannot honour {param}" in error["message"]


async def test_errors_come_in_anthropics_shape_naming_the_field(
    claude: anthropic.AsyncAnthropic, keel_url: str, simulator: SimServer
) -> None:
    """A refusal, a request that fails validation and a bad token are all answered as Anthropic
    answers them (``{"type": "error", "error": {"type", "message"}}``), keel's ``param`` kept."""
    question: list[MessageParam] = [{"role": "user", "content": "Hi"}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model=MODEL, max_tokens=200, messages=question, extra_body={"top_k": 5}
        )
    with pytest.raises(anthropic.BadRequestError) as invalid:
        await claude.messages.create(model=MODEL, max_tokens=0, messages=question)
    async with anthropic.AsyncAnthropic(
        base_url=keel_url, api_key="not-a-keel-token", max_retries=0
    ) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
            await stranger.messages.create(model=MODEL, max_tokens=200, messages=question)
    assert refused.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "parameter 'top_k' is not supported by keel",
            "param": "top_k",
            "code": "unsupported_parameter",
        },
    }
    assert isinstance(invalid.value.body, dict) and invalid.value.body["type"] == "error"
    assert invalid.value.body["error"]["type"] == "invalid_request_error"
    assert invalid.value.body["error"]["param"] == "max_tokens"
    assert isinstance(unauthenticated.value.body, dict)
    assert unauthenticated.value.body["type"] == "error"
    assert unauthenticated.value.body["error"]["type"] == "authentication_error"
