"""A batch page asks for whole answers (``streamed=False``): what the provider returns in one
response must be exactly what its stream would have left — text, tool calls, usage, finish
reason — through the real openai SDK against the simulator (same seed and conversation, so the
same answer)."""

from __future__ import annotations

import pytest

from activities.llm.providers import Completion, ProviderClients
from contracts.llm import ChatMessage, LlmParameters, ToolChoice
from infra.settings import KeelSettings
from workflows.tool_agent import WEATHER


async def _no_delta(delta: str) -> None:
    pass


@pytest.mark.parametrize(
    "parameters",
    [
        LlmParameters(max_tokens=48),
        LlmParameters(max_tokens=48, tools=[WEATHER.spec], tool_choice=ToolChoice(mode="required")),
    ],
    ids=["text", "tool call"],
)
async def test_a_whole_answer_is_what_its_stream_would_have_left(
    keel_settings: KeelSettings, parameters: LlmParameters
) -> None:
    provider = ProviderClients(keel_settings).get("openai")
    assert provider.whole_answers
    messages = [ChatMessage(role="user", content="What is the weather in Lisbon?")]
    deltas: list[str] = []

    async def on_delta(delta: str) -> None:
        deltas.append(delta)

    streamed = await provider.complete(
        "gpt-4o-mini", messages, parameters, 30, on_delta, Completion()
    )
    whole = await provider.complete(
        "gpt-4o-mini", messages, parameters, 30, _no_delta, Completion(), streamed=False
    )

    assert (whole.text, whole.tool_calls, whole.finish_reason) == (
        streamed.text,
        streamed.tool_calls,
        streamed.finish_reason,
    )
    assert whole.usage == streamed.usage and whole.usage_reported
    assert whole.usage.output_tokens > 0
    if parameters.tools:
        assert whole.finish_reason == "tool_calls" and whole.tool_calls[0].name == WEATHER.spec.name
    else:
        assert whole.text and "".join(deltas) == whole.text
    # Nothing streamed: no first token to time.
    assert whole.first_token_ms is None and streamed.first_token_ms is not None
