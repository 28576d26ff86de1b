"""``keel demo``'s durable agent: the model calls a tool, the tool runs as an activity, the model
answers with its result (workflows/tool_agent.py)."""

from __future__ import annotations

import uuid

from contracts.tools import ToolAgentInput
from infra.settings import KeelSettings
from infra.temporal_client import connect
from starters.output import console, workflow_link
from workflows.tool_agent import ToolAgentWorkflow


async def demo_tool_agent(settings: KeelSettings) -> str:
    client = await connect(settings)
    workflow_id = f"demo-agent-{uuid.uuid4().hex[:6]}"
    question = "What is the weather in Paris?"
    handle = await client.start_workflow(
        ToolAgentWorkflow.run,
        ToolAgentInput(question=question),
        id=workflow_id,
        task_queue=settings.interactive_task_queue,
    )
    result = await handle.result()
    console.print(f"[bold]workflow[/] {workflow_id}  {workflow_link(settings, workflow_id)}")
    console.print(f"[bold]asked[/] {question}")
    console.print(
        f"[bold]steps[/] {result.steps} model calls; tools run as activities: "
        f"{', '.join(result.tools_called) or 'none'}"
    )
    console.print(f"[bold]answer[/] {result.answer}")
    console.print(
        "[dim]Each model call and each tool call is an activity in the Web UI; a tool marked "
        "sensitive (send_email) waits at an approval gate: `keel approvals`.[/]"
    )
    return workflow_id
