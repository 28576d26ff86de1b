"""Workflow runs whose histories are recorded for the replay test.

Each scenario starts one workflow against the fixtures' servers and returns its handle; adding a
workflow kind means adding a scenario here and re-recording (``python -m tests.replay.record``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from temporalio.client import Client, WorkflowHandle

from infra.settings import KeelSettings
from llmsim import SimServer
from workflows.ask import AskInput, AskWorkflow

Scenario = Callable[[Client, KeelSettings, SimServer], Awaitable[WorkflowHandle]]


async def ask_answered(client: Client, settings: KeelSettings, sim: SimServer) -> WorkflowHandle:
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="What is durable execution?", models=["gpt-4o-mini"]),
        id=f"replay-ask-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def ask_retried_then_fell_back(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    sim.add_faults("server_error", model="gpt-4o-mini", count=1)
    sim.add_faults("context_window", model="gpt-4o-mini", count=1)
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="Summarise this.", models=["gpt-4o-mini", "claude-3-5-haiku-latest"]),
        id=f"replay-ask-fallback-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def ask_fallback_response(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="Hello", models=["no-such-model"], fallback_policy="response"),
        id=f"replay-ask-fallback-response-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


SCENARIOS: dict[str, Scenario] = {
    "ask_answered": ask_answered,
    "ask_retried_then_fell_back": ask_retried_then_fell_back,
    "ask_fallback_response": ask_fallback_response,
}
