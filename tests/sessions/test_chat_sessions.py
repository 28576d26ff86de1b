"""Chat sessions on the dev server with Postgres: turns are Updates, history lives in Postgres,
a retried turn is answered once, and the token stream ends with exactly the stored text."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from contracts.sessions import session_workflow_id
from infra.settings import KeelSettings
from infra.token_streams import StreamEventType, StreamHub
from llmsim import SimServer
from services.chat_client import TurnRequest, run_turn, start_turn
from tests.conftest import reconfigure
from tests.helpers import ledger_rows
from tests.sessions.conftest import stored_messages, stored_session

MODEL = "gpt-4o-mini"


def turn(session_id: str, content: str, **fields: object) -> TurnRequest:
    return TurnRequest.model_validate(
        {"session_id": session_id, "content": content, "models": [MODEL], **fields}
    )


def model_requests(simulator: SimServer) -> int:
    return int(simulator.stats()["models"].get(MODEL, {}).get("requests", 0))


async def test_turns_are_stored_in_postgres_and_the_workflow_keeps_no_history(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    first = await run_turn(client, keel_settings, turn(session_id, "My name is Ada.",
                                                        system_prompt="Be brief."))  # fmt: skip
    second = await run_turn(client, keel_settings, turn(session_id, "What is my name?"))
    assert first.text and second.text and second.message_seq == 4
    messages = await stored_messages(session_id)
    assert [(m.seq, m.role) for m in messages] == [
        (1, "user"), (2, "assistant"), (3, "user"), (4, "assistant")
    ]  # fmt: skip
    assert messages[1].content == first.text and messages[3].content == second.text
    assert messages[3].model == MODEL and messages[3].cost_usd == second.cost_usd
    session = await stored_session(session_id)
    assert session is not None and session.system_prompt == "Be brief."
    # The second call carried the first exchange: its prompt is larger than the first's.
    assert second.usage.input_tokens > first.usage.input_tokens
    # One workflow per session; both turns ran in it.
    description = await client.get_workflow_handle(session_workflow_id(session_id)).describe()
    assert description.status is not None and description.status.name == "RUNNING"


async def test_a_retried_turn_returns_the_first_answer_and_never_calls_the_model_twice(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    request = turn(session_id, "Tell me about rivers.", turn_id="idem-1")
    first = await run_turn(client, keel_settings, request)
    calls = model_requests(simulator)
    again = await run_turn(client, keel_settings, request)
    concurrent = await asyncio.gather(*(run_turn(client, keel_settings, request) for _ in range(3)))
    assert {r.text for r in [again, *concurrent]} == {first.text}
    assert model_requests(simulator) == calls == 1
    assert len(await stored_messages(session_id)) == 2
    assert len(await ledger_rows(session_workflow_id(session_id))) == 1


async def test_after_continue_as_new_postgres_still_answers_a_retried_turn_once(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(monkeypatch, KEEL_SESSION_MAX_TURNS_PER_RUN="1")
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    first = await run_turn(client, settings, turn(session_id, "First question", turn_id="k1"))
    handle = client.get_workflow_handle(session_workflow_id(session_id))
    first_run = (await handle.describe()).run_id
    second = await run_turn(client, settings, turn(session_id, "Second question"))
    assert (await handle.describe()).run_id != first_run  # continued as new after one turn
    # The new run never saw update "k1": Postgres answers it, without the model.
    replay = await run_turn(client, settings, turn(session_id, "First question", turn_id="k1"))
    assert replay.replayed and replay.text == first.text and replay.message_seq == 2
    assert model_requests(simulator) == 2
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await run_turn(client, settings, turn(session_id, "Another question", turn_id="k1"))
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "IdempotencyKeyReused"
    assert [m.seq for m in await stored_messages(session_id)] == [1, 2, 3, 4]
    assert second.message_seq == 4


async def test_the_stream_ends_with_the_stored_text_and_the_streamed_call_is_billed(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    stream_hub: StreamHub,
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    request = turn(session_id, "Describe the sea.")
    follower = stream_hub.follow(request.stream_key)
    handle = await start_turn(client, keel_settings, request)
    events = [event async for event in follower]
    result = await handle.result()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == StreamEventType.ATTEMPT and events[-1].type == StreamEventType.DONE
    streamed = "".join(e.data["text"] for e in events if e.type == StreamEventType.DELTA)
    (stored,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert streamed == events[-1].data["text"] == stored.content == result.text
    (row,) = await ledger_rows(session_workflow_id(session_id))
    assert row.streamed and row.cost_usd is not None and row.cost_usd > 0


async def test_a_retried_attempt_is_marked_so_the_client_discards_its_partial_text(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    stream_hub: StreamHub,
) -> None:
    simulator.add_faults("stream_reset", model=MODEL, count=1, after_chunks=3)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    request = turn(session_id, "Name three mountains.")
    follower = stream_hub.follow(request.stream_key)
    handle = await start_turn(client, keel_settings, request)
    events = [event async for event in follower]
    result = await handle.result()
    attempts = [e for e in events if e.type == StreamEventType.ATTEMPT]
    assert [a.data["attempt"] for a in attempts] == [1, 2]
    first_attempt_text = "".join(
        e.data["text"] for e in events if e.type == "delta" and e.attempt == attempts[0].attempt
    )
    assert first_attempt_text  # the cut attempt did stream something before it broke
    # A client that keeps only the text after the last attempt marker has the stored answer.
    last_marker = events.index(attempts[-1])
    kept = "".join(e.data["text"] for e in events[last_marker:] if e.type == "delta")
    assert kept == events[-1].data["text"] == result.text
    rows = await ledger_rows(session_workflow_id(session_id))
    assert [r.outcome for r in rows] == ["error", "ok"]
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in rows)
