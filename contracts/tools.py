"""Tools a workflow's model may call, each run as an activity (workflows/tool_loop.py): what a tool
activity takes and returns, and the example tool agent's input and output.

Plain pydantic models, no I/O: workflows import this module inside the sandbox.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ToolInput(BaseModel):
    """One call of a tool, as the model asked for it (arguments already validated against the
    tool's schema by the LLM activity)."""

    call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolOutput(BaseModel):
    """What the tool returns to the model (the content of the ``tool`` message)."""

    content: str


class ToolAgentInput(BaseModel):
    question: str = Field(min_length=1)
    tenant: str = "default"
    route: str | None = None
    models: list[str] | None = None
    max_steps: int = Field(default=6, ge=1, le=50)
    # Who approves a call of a sensitive tool (the example's send_email), and for how long.
    approver_role: str = "operator"
    approval_deadline_seconds: float = Field(default=3600, gt=0)


class ToolAgentOutput(BaseModel):
    answer: str
    steps: int
    # The tools called, in order; calls a reviewer refused are listed in ``refused``.
    tools_called: list[str] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
