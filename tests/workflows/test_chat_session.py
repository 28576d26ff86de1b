"""ChatSessionWorkflow's orchestration: turns as Updates, the context each call gets, summarizing
the oldest turns, a failed turn, idling out, and continue-as-new."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError

from contracts.llm import (
    ChatMessage,
    ErrorClass,
    TurnToStore,
)
from contracts.sessions import (
    ChatSessionInput,
    StoredAnswer,
    TurnInput,
    TurnOutput,
    summary_message,
    turn_stream_key,
)
from tests.workflows.conftest import Rig, eventually, timers
from tests.workflows.mocks import (
    FAIL_TURN,
    FINISH_TURN,
    PLAN_LLM_ROUTE,
    PREPARE_TURN,
    STORE_SUMMARY,
)
from workflows.chat_session import ChatSessionWorkflow

IDLE_SECONDS = 1800


async def start_session(rig: Rig, session_id: str, **options: object) -> WorkflowHandle:
    params = ChatSessionInput.model_validate(
        {"session_id": session_id, "idle_timeout_seconds": IDLE_SECONDS, **options}
    )
    return await rig.start(ChatSessionWorkflow.run, params, workflow_id=f"chat-{session_id}")


async def turn(handle: WorkflowHandle, turn_id: str, content: str, **options: object) -> TurnOutput:
    return await handle.execute_update(
        ChatSessionWorkflow.turn,
        TurnInput.model_validate({"content": content, "stream": False, **options}),
        id=turn_id,
    )


async def test_turns_carry_the_conversation_and_the_session_ends_when_idle(rig: Rig) -> None:
    handle = await start_session(rig, "s-basic", system_prompt="Be brief.", models=["model-a"])

    first = await turn(handle, "t1", "Hello")
    second = await turn(handle, "t2", "And now?")
    ended = await handle.result()

    assert (first.turn_id, first.text, first.model) == ("t1", "model-a answers: Hello", "model-a")
    assert (first.message_seq, second.message_seq) == (2, 4)
    assert first.usage.output_tokens == 5 and not first.summarized and not first.replayed
    prepared = rig.mocks.inputs(PREPARE_TURN)
    assert [(p.turn_id, p.content, p.workflow_id) for p in prepared] == [
        ("t1", "Hello", "chat-s-basic"),
        ("t2", "And now?", "chat-s-basic"),
    ]
    # The second call sees the system prompt and the whole conversation so far.
    assert rig.mocks.llm.attempts()[1].request.messages == [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hello"),
        ChatMessage(role="assistant", content="model-a answers: Hello"),
        ChatMessage(role="user", content="And now?"),
    ]
    assert rig.mocks.llm.attempts()[1].request.purpose == "chat"
    # Each answer is stored by its call, with its ledger row: no finish_turn local activity.
    stored = rig.mocks.sessions.stored_turns
    assert [(f.turn_id, f.text) for f in stored] == [("t1", first.text), ("t2", second.text)]
    assert rig.mocks.inputs(FINISH_TURN) == []
    assert [a.records and a.records.turn for a in rig.mocks.llm.attempts()] == [
        TurnToStore(session_id="s-basic", turn_id="t1"),
        TurnToStore(session_id="s-basic", turn_id="t2"),
    ]
    # Each call was planned by prepare_turn, for exactly the request then sent: no planning
    # local activity of its own.
    assert rig.mocks.inputs(PLAN_LLM_ROUTE) == []
    assert rig.mocks.sessions.planned == [a.request for a in rig.mocks.llm.attempts()]
    # Half an hour without a turn (skipped): the run completes, the conversation stays stored.
    assert ended.turns == 2
    # Each wait for a turn is an idle timer (one more when the first turn came after the start's
    # task); the last one fired.
    durations, fired = await timers(handle)
    assert set(durations) == {timedelta(seconds=IDLE_SECONDS)} and fired == 1


async def test_the_oldest_turns_are_folded_into_a_summary_first(rig: Rig) -> None:
    sessions = rig.mocks.sessions
    sessions.fold_before.add("t3")
    handle = await start_session(rig, "s-fold", models=["model-a"])

    await turn(handle, "t1", "My name is Ada.")
    await turn(handle, "t2", "I like graphs.")
    third = await turn(handle, "t3", "What do I like?")

    assert third.summarized and third.text == "model-a answers: What do I like?"
    summarize, answer = rig.mocks.llm.attempts()[2:]
    assert summarize.request.purpose == "session.summarize"
    assert (summarize.route, summarize.model) == ("cheap", "cheap-model")
    assert "My name is Ada." in summarize.request.messages[-1].content
    stored = rig.mocks.inputs(STORE_SUMMARY)
    assert len(stored) == 1
    assert (stored[0].summary, stored[0].through_seq) == (summarize_text := sessions.summary, 4)
    assert summarize_text is not None and summarize_text.startswith("cheap-model answers:")
    # A fold changes the context after prepare_turn: that turn's call is planned on its own
    # (the fold's and the turn's plans are local activities), the first two in prepare_turn.
    planned = [p.purpose for p in rig.mocks.inputs(PLAN_LLM_ROUTE)]
    assert planned == ["session.summarize", "chat"] and len(sessions.planned) == 2
    # The turn's own call gets the summary in place of the folded turns.
    assert answer.request.messages == [
        summary_message(summarize_text),
        ChatMessage(role="user", content="What do I like?"),
    ]


async def test_a_turn_answered_before_is_replayed_without_a_model_call(rig: Rig) -> None:
    rig.mocks.sessions.answered["t1"] = StoredAnswer(
        text="stored answer", model="model-a", message_seq=2, output_tokens=7
    )
    handle = await start_session(rig, "s-replay", models=["model-a"])

    again = await turn(handle, "t1", "Hello")

    assert again.replayed and again.text == "stored answer" and again.message_seq == 2
    assert again.usage.output_tokens == 7
    assert rig.mocks.llm.attempts() == [] and rig.mocks.sessions.stored_turns == []


async def test_a_failed_turn_fails_its_update_and_stream_and_the_session_goes_on(
    rig: Rig,
) -> None:
    rig.mocks.llm.failures["model-a"] = [ErrorClass.AUTHENTICATION]
    handle = await start_session(rig, "s-fail", models=["model-a"])

    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await turn(handle, "t1", "Hello", stream=True)

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmChainExhausted"
    [fail] = rig.mocks.inputs(FAIL_TURN)
    assert fail.stream_key == turn_stream_key("s-fail", "t1")
    assert fail.error_type == "LlmChainExhausted" and "authentication" in fail.message
    assert rig.mocks.sessions.stored_turns == []

    retried = await turn(handle, "t2", "Hello again")
    assert retried.text == "model-a answers: Hello again"


async def test_an_empty_turn_is_refused_before_anything_runs(rig: Rig) -> None:
    handle = await start_session(rig, "s-empty", models=["model-a"])

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await turn(handle, "t1", "   ")

    assert "non-empty message" in str(refused.value.cause)
    assert rig.mocks.inputs(PREPARE_TURN) == []
    await turn(handle, "t2", "Hello")
    assert (await handle.result()).turns == 1


async def test_a_run_continues_as_new_after_its_turn_limit(rig: Rig) -> None:
    handle = await start_session(rig, "s-long", models=["model-a"], max_turns_per_run=2)
    first_run = (await handle.describe()).run_id

    await turn(handle, "t1", "one")
    await turn(handle, "t2", "two")

    async def continued() -> bool:
        return (await handle.describe()).run_id != first_run

    await eventually(continued, "the session to continue as new")
    third = await turn(handle, "t3", "three")
    ended = await handle.result()

    assert third.message_seq == 6
    assert [p.workflow_id for p in rig.mocks.inputs(PREPARE_TURN)] == ["chat-s-long"] * 3
    # The new run counts the turns before it.
    assert ended.turns == 3


async def test_a_single_turn_session_completes_with_its_turn(rig: Rig) -> None:
    handle = await start_session(rig, "s-single", models=["model-a"], single_turn=True)

    answer = await turn(handle, "t1", "Hello")

    # Completed in the same workflow task as the turn: no idle wait.
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert answer.text == "model-a answers: Hello"
    assert (await handle.result()).turns == 1
