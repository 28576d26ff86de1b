"""Sessions with tools: tool calls and their results are stored as messages, and folding the
oldest turns into the summary never separates a call from its result (the simulator, like
OpenAI, refuses a tool message without its call, and a call without its result)."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client

from activities.sessions import plan_fold
from contracts.llm import ChatMessage, LlmParameters, ToolCall, ToolChoice, ToolSpec
from infra.settings import KeelSettings
from llmsim import SimServer
from services.chat_client import TurnRequest, run_turn
from tests.conftest import KeelWorkers, reconfigure
from tests.sessions.conftest import stored_messages, stored_session

MODEL = "gpt-4o-mini"
LOOKUP = ToolSpec(
    name="lookup_river",
    description="Facts about a river",
    parameters={
        "type": "object",
        "properties": {"river": {"type": "string"}},
        "required": ["river"],
    },
)


def call(call_id: str) -> ChatMessage:
    return ChatMessage(
        role="assistant", tool_calls=[ToolCall(id=call_id, name="lookup_river", arguments="{}")]
    )


def result(call_id: str, text: str = "a long river") -> ChatMessage:
    return ChatMessage(role="tool", tool_call_id=call_id, content=text)


def test_a_fold_keeps_the_tool_exchange_the_turn_continues(keel_settings: KeelSettings) -> None:
    history = [
        ChatMessage(role="user", content="Tell me about the Nile " * 20),
        ChatMessage(role="assistant", content="It is long. " * 20),
        ChatMessage(role="user", content="And the Amazon, and the Danube?"),
        call("c1"),
        result("c1", "the Amazon " * 30),
        result("c2", "the Danube " * 30),
    ]
    history[3].tool_calls.append(ToolCall(id="c2", name="lookup_river", arguments="{}"))
    numbered = list(enumerate(history, start=1))
    folded, kept = plan_fold(0, numbered, budget=120, settings=keel_settings)
    # The kept part starts at the question that led to the calls: call and results stay together.
    assert [m.role for _, m in kept] == ["user", "assistant", "tool", "tool"]
    assert [m.role for _, m in folded] == ["user", "assistant"]


async def test_a_long_tool_using_session_folds_without_splitting_a_call_from_its_result(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_MODEL_CONTEXT_WINDOWS=f'{{"{MODEL}": 900}}',
        KEEL_SESSION_ANSWER_TOKENS="150",
        KEEL_ROUTES=f'{{"cheap": ["{MODEL}"], "balanced": ["{MODEL}"]}}',
    )
    await keel_workers.start(settings)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    tools = LlmParameters(tools=[LOOKUP])
    forced = tools.model_copy(update={"tool_choice": ToolChoice(mode="tool", name=LOOKUP.name)})
    outputs = []
    for number in range(1, 9):
        base = {"session_id": session_id, "models": [MODEL], "stream": False}
        asked = await run_turn(
            client,
            settings,
            TurnRequest.model_validate(
                {**base, "content": f"Look up river number {number}.", "parameters": forced}
            ),
        )
        assert asked.tool_calls and asked.finish_reason == "tool_calls"
        results = [
            result(c.id, f"river {number} is {number * 100} km long") for c in asked.tool_calls
        ]
        answered = await run_turn(
            client,
            settings,
            TurnRequest.model_validate(
                {**base, "content": "", "turn_messages": results, "parameters": tools}
            ),
        )
        assert answered.text and not answered.tool_calls
        outputs += [asked, answered]

    assert any(o.summarized for o in outputs)  # folds happened, and every call still succeeded
    stored = await stored_messages(session_id)
    assert [m.role for m in stored[:4]] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].tool_calls and stored[2].tool_call_id == stored[1].tool_calls[0]["id"]
    session = await stored_session(session_id)
    assert session is not None and session.summary
    # The summary's cursor never stops between a call and its result.
    cursor = next(m for m in stored if m.seq == session.summarized_through_seq)
    after = next(m for m in stored if m.seq == session.summarized_through_seq + 1)
    assert not cursor.tool_calls and after.role == "user"
