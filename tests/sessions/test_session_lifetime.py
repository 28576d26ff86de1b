"""A session's workflow ends when idle and the conversation outlives it (time-skipping server:
the half-hour idle timeout passes without waiting)."""

from __future__ import annotations

import uuid

from temporalio.testing import WorkflowEnvironment

from contracts.sessions import ChatSessionInput, TurnInput, session_workflow_id
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.sessions.conftest import stored_messages
from workers.builder import build_worker
from workflows.chat_session import ChatSessionWorkflow

IDLE_SECONDS = 1800


async def test_an_idle_session_completes_and_a_new_run_continues_from_postgres(
    time_skipping_env: WorkflowEnvironment, keel_settings: KeelSettings, simulator: SimServer
) -> None:
    client = time_skipping_env.client
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    params = ChatSessionInput(
        session_id=session_id, models=["gpt-4o-mini"], idle_timeout_seconds=IDLE_SECONDS
    )
    async with build_worker(client, keel_settings.interactive_task_queue, keel_settings):
        handle = await client.start_workflow(
            ChatSessionWorkflow.run,
            params,
            id=session_workflow_id(session_id),
            task_queue=keel_settings.interactive_task_queue,
        )
        # Read before the turn: the idle timer starts in the workflow task that finishes the turn,
        # which the server's clock has passed by the time the update's result reaches us.
        started = await time_skipping_env.get_current_time()
        first = await handle.execute_update(
            ChatSessionWorkflow.turn, TurnInput(content="Hello there", stream=False), id="t1"
        )
        ended = await handle.result()  # half an hour of silence, skipped
        waited = (await time_skipping_env.get_current_time()) - started
        assert ended.turns == 1 and waited.total_seconds() >= IDLE_SECONDS

        # The next turn starts a new run; the history it builds on is in Postgres.
        again = await client.start_workflow(
            ChatSessionWorkflow.run,
            params,
            id=session_workflow_id(session_id),
            task_queue=keel_settings.interactive_task_queue,
        )
        replayed = await again.execute_update(
            ChatSessionWorkflow.turn, TurnInput(content="Hello there", stream=False), id="t1"
        )
        second = await again.execute_update(
            ChatSessionWorkflow.turn, TurnInput(content="And now?", stream=False), id="t2"
        )
    assert replayed.replayed and replayed.text == first.text
    assert second.message_seq == 4 and second.usage.input_tokens > first.usage.input_tokens
    assert [m.turn_id for m in await stored_messages(session_id)] == ["t1", "t1", "t2", "t2"]
    assert simulator.stats()["models"]["gpt-4o-mini"]["requests"] == 2
