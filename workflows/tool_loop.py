"""A durable tool-calling loop: the model asks for tools, each tool runs as an activity, and the
results go back to the model until it answers in text.

    WEATHER = WorkflowTool(
        spec=ToolSpec(name="look_up_weather", description="...", parameters={...}),
        activity=LOOK_UP_WEATHER,  # an ActivityRef[ToolInput, ToolOutput]
        options={"start_to_close_timeout": timedelta(seconds=10),
                 "retry_policy": RetryPolicy(maximum_attempts=3)},
    )
    result = await run_tool_loop(request, [WEATHER, EMAIL], max_steps=6,
                                 approval=ToolApproval(self.approval, role="operator"))

Every step is in history: each LLM call (``ask_llm``: retries, fallbacks, budgets, ledger) and
each tool call (an activity with its own timeout and retry policy), so a worker that dies
mid-loop resumes at the step it was on and no tool runs twice once it has succeeded. A tool
marked ``sensitive`` runs only after a person approves that call at an approval gate
(workflows/approval_gate.py, in the run's tenant); a refused call is answered to the model as
refused, and the model goes on; an edited call runs with the reviewer's arguments. The loop
ends when the model answers without calling a tool, or fails with ``ToolLoopStepLimit`` after
``max_steps`` model calls. Runs in workflow code: no I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import ActivityRef
    from contracts.approvals import GateRequest, GateStatus
    from contracts.llm import ChatMessage, LlmAnswer, LlmRequest, ToolCall, ToolSpec
    from contracts.tools import ToolInput, ToolOutput
    from workflows.activity_calls import ActivityOptions, call
    from workflows.approval_gate import ApprovalGate
    from workflows.llm_calls import ask_llm


@dataclass(frozen=True)
class WorkflowTool:
    """A tool the model may call: its schema, the activity that runs it, and how that activity
    is timed out and retried."""

    spec: ToolSpec
    activity: ActivityRef[ToolInput, ToolOutput]
    options: ActivityOptions = field(
        default_factory=lambda: ActivityOptions(start_to_close_timeout=timedelta(seconds=30))
    )
    # A person approves each call before it runs (needs ``approval`` in run_tool_loop).
    sensitive: bool = False


@dataclass(frozen=True)
class ToolApproval:
    """The workflow's approval gate, and who decides calls of sensitive tools, by when (past
    the deadline the call is refused)."""

    gate: ApprovalGate
    role: str
    deadline: timedelta = timedelta(hours=1)


@dataclass
class ToolLoopResult:
    answer: LlmAnswer
    steps: int
    messages: list[ChatMessage]
    tools_called: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class ToolLoopStepLimit(ApplicationError):
    """The model still wanted tools after ``max_steps`` calls."""


async def run_tool_loop(
    request: LlmRequest,
    tools: list[WorkflowTool],
    *,
    max_steps: int = 8,
    approval: ToolApproval | None = None,
) -> ToolLoopResult:
    """Ask ``request`` with ``tools`` offered, run the tools the model calls, until it answers."""
    by_name = {tool.spec.name: tool for tool in tools}
    if any(tool.sensitive for tool in tools) and approval is None:
        raise ValueError("a sensitive tool needs an approval gate (ToolApproval)")
    parameters = request.parameters.model_copy(update={"tools": [t.spec for t in tools]})
    messages = list(request.messages)
    result = ToolLoopResult(
        answer=LlmAnswer(text="", model="", provider=""), steps=0, messages=messages
    )
    for step in range(1, max_steps + 1):
        answer = await ask_llm(
            request.model_copy(update={"messages": messages, "parameters": parameters})
        )
        result.answer, result.steps = answer, step
        if not answer.tool_calls:
            return result
        messages.append(
            ChatMessage(role="assistant", content=answer.text, tool_calls=answer.tool_calls)
        )
        for position, tool_call in enumerate(answer.tool_calls):
            # The LLM activity validated the name and arguments against the offered tools.
            tool = by_name[tool_call.name]
            content = await _run(
                tool, tool_call, f"tool-{step}-{position}", approval, result, request.tenant
            )
            messages.append(ChatMessage(role="tool", tool_call_id=tool_call.id, content=content))
    raise ToolLoopStepLimit(
        f"the model still called tools after {max_steps} steps "
        f"({', '.join(result.tools_called) or 'no tool ran'}); raise max_steps or narrow the task",
        type="ToolLoopStepLimit",
        non_retryable=True,
    )


EDITED_ARGUMENTS_PATCH = "tool-loop-runs-edited-arguments"
GATE_TENANT_PATCH = "tool-loop-gate-in-run-tenant"


def tool_gate_draft(name: str, arguments: str) -> str:
    """What a reviewer sees at a tool call's gate: ``name({...arguments})``."""
    return f"{name}({arguments})"


def edited_arguments(name: str, text: str) -> dict[str, object] | None:
    """The arguments of a reviewer's edit: ``name({...})`` as the draft shows it, or the bare
    JSON object; None when the text is neither (the console refuses such an edit before it is
    sent; ``keel approve --edit`` does not know the text is a tool call's)."""
    text = text.strip()
    if text.startswith(f"{name}(") and text.endswith(")"):
        text = text[len(name) + 1 : -1]
    try:
        arguments = json.loads(text)
    except ValueError:
        return None
    return arguments if isinstance(arguments, dict) else None


async def _run(
    tool: WorkflowTool,
    tool_call: ToolCall,
    gate_name: str,
    approval: ToolApproval | None,
    result: ToolLoopResult,
    tenant: str,
) -> str:
    edited_by_reviewer = False
    if tool.sensitive and approval is not None:
        # Gates opened before this change were the default tenant's; replay keeps them so.
        tenant_of_gate = tenant if workflow.patched(GATE_TENANT_PATCH) else "default"
        outcome = await approval.gate.request(
            GateRequest(
                gate=gate_name,
                tenant=tenant_of_gate,
                draft=tool_gate_draft(tool_call.name, tool_call.arguments),
                reason=f"{tool_call.name} is a sensitive tool: a person approves each call",
                role=approval.role,
                subject=f"tool call {tool_call.name}",
                deadline=approval.deadline,
            )
        )
        if not outcome.approved:
            result.refused.append(tool_call.name)
            why = f": {outcome.reason}" if outcome.reason else ""
            return f"A reviewer refused this call of {tool_call.name}{why}. Do not retry it."
        # Runs that decided an edit before this change ran the model's arguments: replaying
        # them must schedule the same activity input, hence the patch.
        if (
            outcome.status == GateStatus.EDITED
            and outcome.final is not None
            and workflow.patched(EDITED_ARGUMENTS_PATCH)
        ):
            arguments = edited_arguments(tool_call.name, outcome.final)
            if arguments is None:
                result.refused.append(tool_call.name)
                return (
                    f"A reviewer's edit of this call of {tool_call.name} was not a JSON object "
                    "of arguments, so it did not run. Do not retry it."
                )
            tool_call = tool_call.model_copy(
                update={"arguments": json.dumps(arguments, ensure_ascii=False)}
            )
            edited_by_reviewer = True
    output = await call(
        tool.activity,
        ToolInput(
            call_id=tool_call.id, name=tool_call.name, arguments=json.loads(tool_call.arguments)
        ),
        summary=f"tool {tool_call.name}",
        **tool.options,
    )
    result.tools_called.append(tool_call.name)
    if edited_by_reviewer:
        # The model asked with other arguments: it must not take this result for its own call's.
        return f"A reviewer changed the arguments to {tool_call.arguments}. {output.content}"
    return output.content
