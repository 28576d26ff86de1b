"""ToolAgentWorkflow: the example of a durable tool-calling agent (workflows/tool_loop.py).

The model may look up the weather (an activity, retried 3 times within 10 s each) and send an
email (sensitive: a person with the ``approver_role`` approves each call at an approval gate,
``keel approve``; refused or timed out, the model is told and answers without it). Start it with
``temporal workflow start --type ToolAgentWorkflow --task-queue keel-interactive --input
'{"question": "What is the weather in Paris?"}'``.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from contracts.activities import LOOK_UP_WEATHER, SEND_EMAIL
    from contracts.llm import ChatMessage, LlmRequest, ToolSpec
    from contracts.tools import ToolAgentInput, ToolAgentOutput
    from workflows.approval_gate import ApprovalGate
    from workflows.tool_loop import ToolApproval, WorkflowTool, run_tool_loop

WEATHER = WorkflowTool(
    spec=ToolSpec(
        name="look_up_weather",
        description="Current weather of a city",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    ),
    activity=LOOK_UP_WEATHER,
    options={
        "start_to_close_timeout": timedelta(seconds=10),
        "retry_policy": RetryPolicy(maximum_attempts=3),
    },
)
EMAIL = WorkflowTool(
    spec=ToolSpec(
        name="send_email",
        description="Send an email to a person",
        parameters={
            "type": "object",
            "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "body"],
            "additionalProperties": False,
        },
    ),
    activity=SEND_EMAIL,
    options={
        "start_to_close_timeout": timedelta(seconds=30),
        # An email must not go out twice: one attempt, and a person decides again if it fails.
        "retry_policy": RetryPolicy(maximum_attempts=1),
    },
    sensitive=True,
)


@workflow.defn
class ToolAgentWorkflow:
    def __init__(self) -> None:
        self.approval = ApprovalGate()

    @workflow.run
    async def run(self, params: ToolAgentInput) -> ToolAgentOutput:
        result = await run_tool_loop(
            LlmRequest(
                messages=[
                    ChatMessage(role="system", content="Use the tools when they help."),
                    ChatMessage(role="user", content=params.question),
                ],
                route=params.route,
                models=params.models,
                tenant=params.tenant,
                purpose="tool_agent",
            ),
            [WEATHER, EMAIL],
            max_steps=params.max_steps,
            approval=ToolApproval(
                self.approval,
                role=params.approver_role,
                deadline=timedelta(seconds=params.approval_deadline_seconds),
            ),
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ToolAgentOutput(
            answer=result.answer.text,
            steps=result.steps,
            tools_called=result.tools_called,
            refused=result.refused,
        )
