"""Tools and structured outputs through `keel api`, with the official openai SDK over HTTP against
keel's simulator: forced and automatic tool choice, plain and streamed, a tool-result turn,
``chat.completions.parse`` with a pydantic model, and every parameter keel cannot honour refused
by name instead of dropped."""

from __future__ import annotations

import json
import uuid
from typing import Literal

import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel
from temporalio.client import Client

from activities.llm.providers import openai_options
from contracts.llm import AttemptInput, LlmParameters
from contracts.sessions import session_workflow_id
from infra.settings import KeelSettings
from llmsim import SimServer
from services.api_tokens import IssuedToken
from tests.api.tokens import openai_client
from tests.conftest import reconfigure
from tests.helpers import audit_events, ledger_rows
from tests.sessions.conftest import stored_messages

MODEL = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_stock_price",
            "description": "Latest price of a stock ticker",
            "parameters": {
                "type": "object",
                "properties": {"ticker": {"type": "string"}},
                "required": ["ticker"],
            },
        },
    },
]
QUESTION: ChatCompletionUserMessageParam = {
    "role": "user",
    "content": "What is the weather in Paris?",
}


class Forecast(BaseModel):
    city: str
    temperature_c: float
    summary: str


@pytest.fixture
def keel_settings(keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch) -> KeelSettings:
    """A route whose first model cannot do JSON schemas or tools, and a model that cannot."""
    return reconfigure(
        monkeypatch,
        KEEL_ROUTES=json.dumps(
            {
                **keel_settings.routes,
                "legacy-first": ["old-model", MODEL],
                "claude-first": [CLAUDE, MODEL],
            }
        ),
        KEEL_MODEL_CAPABILITIES=json.dumps({"old-model": []}),
    )


def session_of(completion: openai.types.chat.ChatCompletion) -> str:
    return str((completion.model_extra or {})["keel"]["session_id"])


async def test_a_forced_tool_call_has_arguments_valid_against_the_tool_schema(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[QUESTION],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_stock_price"}},
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_stock_price"
    assert isinstance(json.loads(call.function.arguments)["ticker"], str)
    stored = await stored_messages(session_of(completion))
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].tool_calls == [
        {"id": call.id, "name": "get_stock_price", "arguments": call.function.arguments}
    ]


async def test_automatic_tool_choice_calls_the_fitting_tool_or_answers_in_text(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        weather = await client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=TOOLS, tool_choice="auto"
        )
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a joke."}], tools=TOOLS
        )
    (call,) = weather.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
    assert chat.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.content and not chat.choices[0].message.tool_calls


async def test_a_streamed_tool_call_arrives_in_openai_chunks_and_matches_what_was_stored(
    keel_url: str, api_token: IssuedToken, slow_simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    async with openai_client(keel_url, api_token, **{"X-Keel-Session-Id": session_id}) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[QUESTION],
            tools=TOOLS,
            tool_choice="required",
            stream=True,
        )
        ids, names, arguments, finish, chunks = set(), set(), "", None, 0
        async for chunk in stream:
            for choice in chunk.choices:
                for piece in choice.delta.tool_calls or []:
                    chunks += 1
                    ids.add(piece.id) if piece.id else None
                    names.add(
                        piece.function.name
                    ) if piece.function and piece.function.name else None
                    arguments += (piece.function.arguments or "") if piece.function else ""
                finish = choice.finish_reason or finish
    (stored,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert finish == "tool_calls" and chunks > 1  # streamed in pieces, not at the end
    assert stored.tool_calls == [{"id": ids.pop(), "name": names.pop(), "arguments": arguments}]
    (row,) = await ledger_rows(session_workflow_id(session_id))
    assert row.outcome == "ok" and row.output_tokens > 0


async def test_a_tool_result_turn_is_answered_and_stored_with_its_call(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        asked = await client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=TOOLS, tool_choice="required"
        )
        call = (asked.choices[0].message.tool_calls or [])[0]
        answered = await client.chat.completions.create(
            model=MODEL,
            tools=TOOLS,
            messages=[
                QUESTION,
                asked.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
            ],
        )
    assert answered.choices[0].finish_reason == "stop"
    assert answered.choices[0].message.content
    stored = await stored_messages(session_of(answered))
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].tool_calls and stored[1].tool_calls[0]["id"] == call.id
    assert stored[2].tool_call_id == call.id and stored[2].content == '{"temp_c": 21}'


# Through the OpenAI adapter (response_format) and the Anthropic one (output_config.format).
@pytest.mark.parametrize("model", [MODEL, "claude-3-5-haiku-latest"])
async def test_parse_with_a_pydantic_model_returns_a_validated_instance(
    model: str, keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        completion = await client.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Forecast for Oslo."}],
            response_format=Forecast,
        )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Forecast)
    assert Forecast.model_validate_json(completion.choices[0].message.content or "") == parsed


async def test_json_object_mode_answers_a_json_object(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe Oslo as JSON."}],
            response_format={"type": "json_object"},
        )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        # Fields keel's models do not know, inside known objects: refused, never dropped.
        (
            {"tools": [{"type": "function", "function": {"name": "f"}, "cache": True}]},
            "tools[0].cache",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "examples": ["x"]}}]},
            "tools[0].function.examples",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "v": 2}}},
            "response_format.json_schema.v",
        ),
    ],
)
async def test_a_parameter_keel_cannot_honour_is_refused_by_name(
    extra: dict[str, object],
    param: str,
    keel_url: str,
    api_token: IssuedToken,
    simulator: SimServer,
) -> None:
    async with openai_client(keel_url, api_token) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=MODEL, messages=[QUESTION], extra_body=extra)
    assert refused.value.param == param and param in refused.value.message


async def test_harmless_and_neutral_parameters_pass(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[QUESTION],
            user="end-user-7",
            frequency_penalty=0,
            logprobs=False,
            stop=["\n\n"],
            top_p=0.9,
            seed=7,
        )
    assert completion.choices[0].message.content


async def test_a_model_that_cannot_honour_the_request_is_refused_or_skipped(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="old-model", messages=[QUESTION], tools=TOOLS
            )
        parsed = await client.chat.completions.parse(
            model="legacy-first",
            messages=[{"role": "user", "content": "Forecast for Oslo."}],
            response_format=Forecast,
        )
    assert refused.value.param == "tools" and "does not support tools" in refused.value.message
    assert isinstance(parsed.choices[0].message.parsed, Forecast) and parsed.model == MODEL
    events = await audit_events(session_workflow_id(session_of(parsed)))
    (skipped,) = [e for e in events if e.event_type == "llm.model_skipped"]
    assert skipped.payload["model"] == "old-model"
    assert "does not support json_schema" in skipped.payload["reason"]


async def test_an_answer_that_does_not_validate_is_retried_and_never_handed_over(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(keel_url, api_token) as client:
        # The model's first sample is not JSON; its retry is.
        simulator.add_canned_response("Forecast for Bergen", "Sunny, I think.", times=1)
        retried = await client.chat.completions.with_raw_response.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Forecast for Bergen."}],
            response_format=Forecast,
        )
        # Every sample of every model is wrong: the caller gets an error, not the text.
        simulator.add_canned_response("Forecast for Tromso", '{"city": "Tromso"}')
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.parse(
                model=MODEL,
                messages=[{"role": "user", "content": "Forecast for Tromso."}],
                response_format=Forecast,
            )
    assert isinstance(retried.parse().choices[0].message.parsed, Forecast)
    session_id = retried.headers["x-keel-session-id"]
    rows = await ledger_rows(session_workflow_id(session_id))
    assert [(r.outcome, r.error_class) for r in rows] == [
        ("error", "invalid_output"),
        ("ok", None),
    ]
    assert failed.value.status_code == 502 and "invalid_output" in failed.value.message


async def provider_call_parameters(client: Client, workflow_id: str) -> list[LlmParameters]:
    """The parameters of each model call the workflow made (its history, decoded)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    found = []
    for event in history.events:
        scheduled = event.activity_task_scheduled_event_attributes
        if event.HasField("activity_task_scheduled_event_attributes") and (
            scheduled.activity_type.name == "complete_chat"
        ):
            (call,) = await client.data_converter.decode(scheduled.input.payloads, [AttemptInput])
            found.append(call.request.parameters)
    return found


async def test_a_json_schema_description_reaches_an_openai_model_and_is_refused_for_claude(
    client: Client, keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """OpenAI's models take a json_schema's description (sent on with the schema); Anthropic's
    structured outputs have no place for it: a Claude model is refused by name, and a route
    whose first model is Claude is answered by the next model that can honour it."""
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {
            "name": "forecast",
            "description": "A weather forecast for one city",
            "schema": Forecast.model_json_schema(),
        },
    }
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Forecast for Oslo."}]
    async with openai_client(keel_url, api_token) as sdk:
        answered = await sdk.chat.completions.create(
            model=MODEL, messages=question, response_format=response_format
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(
                model=CLAUDE, messages=question, response_format=response_format
            )
        skipped = await sdk.chat.completions.create(
            model="claude-first", messages=question, response_format=response_format
        )
    Forecast.model_validate_json(answered.choices[0].message.content or "")
    (parameters,) = await provider_call_parameters(
        client, session_workflow_id(session_of(answered))
    )
    assert parameters.json_schema_description == "A weather forecast for one city"
    sent = openai_options(parameters)["response_format"]["json_schema"]
    assert sent["name"] == "forecast" and sent["description"] == "A weather forecast for one city"
    assert refused.value.param == "response_format.json_schema.description"
    assert "response_format.json_schema.description" in refused.value.message
    assert skipped.model == MODEL
    events = await audit_events(session_workflow_id(session_of(skipped)))
    (skip,) = [e for e in events if e.event_type == "llm.model_skipped"]
    assert skip.payload["model"] == CLAUDE
    assert "json_schema.description" in skip.payload["reason"]


PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD"
    "hgGAWjR9awAAAABJRU5ErkJggg=="
)


def image_question(detail: Literal["auto", "low", "high"]) -> list[ChatCompletionMessageParam]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": PIXEL, "detail": detail}},
            ],
        }
    ]


async def test_what_an_anthropic_model_cannot_take_is_refused_not_changed(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """OpenAI's temperature goes up to 2 and its images carry a detail; Anthropic's temperature
    stops at 1 and its images have no detail. Sent to a Claude model, such a request is a 400
    naming the field (it was clamped to 1 and dropped); within Anthropic's range it is answered,
    and a route whose first model is Claude is answered by the next model."""
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a river."}]
    async with openai_client(keel_url, api_token) as sdk:
        with pytest.raises(openai.BadRequestError) as too_hot:
            await sdk.chat.completions.create(model=CLAUDE, messages=question, temperature=1.5)
        with pytest.raises(openai.BadRequestError) as detailed:
            await sdk.chat.completions.create(model=CLAUDE, messages=image_question("high"))
        warm = await sdk.chat.completions.create(model=CLAUDE, messages=question, temperature=1)
        auto = await sdk.chat.completions.create(model=CLAUDE, messages=image_question("auto"))
        skipped = await sdk.chat.completions.create(
            model="claude-first", messages=question, temperature=1.5
        )
    assert too_hot.value.param == "temperature"
    assert "at most 1 (the request asks 1.5)" in too_hot.value.message
    assert detailed.value.param == "image_url.detail"
    assert "image detail (the request asks high)" in detailed.value.message
    assert warm.choices[0].message.content and auto.choices[0].message.content
    assert warm.model == CLAUDE and auto.model == CLAUDE and skipped.model == MODEL
    events = await audit_events(session_workflow_id(session_of(skipped)))
    (skip,) = [e for e in events if e.event_type == "llm.model_skipped"]
    assert skip.payload["model"] == CLAUDE and "temperature" in skip.payload["reason"]
