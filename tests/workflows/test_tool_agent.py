"""The durable tool loop (workflows/tool_loop.py) through its example, ToolAgentWorkflow, on a real
dev server, worker, Postgres and simulator: the model calls a tool, the tool runs as an
activity, the model answers with its result; a sensitive tool waits for a person's decision; the
loop stops at its step limit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from contracts.approvals import ApproveDecision, RejectDecision
from contracts.tools import ToolAgentInput, ToolAgentOutput
from infra.settings import KeelSettings
from llmsim import SimServer
from starters.agent_demo import demo_tool_agent
from tests.approvals.records import pending_gate, seed_reviewers
from tests.conftest import reconfigure
from tests.helpers import ledger_rows
from workflows.tool_agent import ToolAgentWorkflow

MODEL = "gpt-4o-mini"


async def start(
    client: Client, settings: KeelSettings, question: str, **fields: object
) -> WorkflowHandle[ToolAgentWorkflow, ToolAgentOutput]:
    return await client.start_workflow(
        ToolAgentWorkflow.run,
        ToolAgentInput(question=question, models=[MODEL], **fields),
        id=f"agent-{uuid.uuid4().hex[:10]}",
        task_queue=settings.interactive_task_queue,
    )


async def activity_types(handle: WorkflowHandle[Any, Any]) -> list[str]:
    names = []
    async for event in handle.fetch_history_events():
        attributes = event.activity_task_scheduled_event_attributes
        if event.HasField("activity_task_scheduled_event_attributes"):
            names.append(attributes.activity_type.name)
    return names


async def test_the_model_calls_a_tool_activity_and_answers_with_its_result(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    handle = await start(client, keel_settings, "What is the weather in Paris?")
    result = await handle.result()
    assert result.steps == 2 and result.tools_called == ["look_up_weather"]
    assert result.answer and not result.refused
    # Each model call and the tool are activities in history; the ledger has both model calls.
    assert await activity_types(handle) == ["complete_chat", "look_up_weather", "complete_chat"]
    assert [row.outcome for row in await ledger_rows(handle.id)] == ["ok", "ok"]


async def test_a_sensitive_tool_runs_only_after_a_person_approves_the_call(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    await seed_reviewers(ana="operator")
    approved = await start(client, keel_settings, "Send an email to Ana, my person of contact.")
    gate = await pending_gate(approved.id, "tool-1-0")
    assert gate.draft is not None and gate.draft.startswith("send_email(")
    assert "send_email" not in await activity_types(approved)  # nothing sent before the decision
    await approved.execute_update("approve", ApproveDecision(reviewer="ana", gate="tool-1-0"))
    assert (await approved.result()).tools_called == ["send_email"]

    refused = await start(client, keel_settings, "Send an email to Ana, my person of contact.")
    await pending_gate(refused.id, "tool-1-0")
    await refused.execute_update("reject", RejectDecision(reviewer="ana", reason="not now"))
    result = await refused.result()
    assert result.refused == ["send_email"] and result.tools_called == [] and result.answer
    assert "send_email" not in await activity_types(refused)


async def test_the_loop_stops_at_its_step_limit(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    handle = await start(client, keel_settings, "What is the weather in Paris?", max_steps=1)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert "still called tools after 1 steps" in str(failed.value.cause)


async def test_the_demo_shows_the_agent_calling_its_tool(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = reconfigure(monkeypatch, TEMPORAL_ADDRESS=client.service_client.config.target_host)
    workflow_id = await demo_tool_agent(settings)
    shown = capsys.readouterr().out
    assert "2 model calls" in shown and "look_up_weather" in shown
    assert await activity_types(client.get_workflow_handle(workflow_id)) == [
        "complete_chat",
        "look_up_weather",
        "complete_chat",
    ]
