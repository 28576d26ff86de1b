"""The example tool agent's tools (workflows/tool_agent.py): each tool is an activity taking a
``ToolInput`` and returning a ``ToolOutput``. Deterministic stand-ins: a real deployment calls a
weather service and a mail server here, which is why they are activities (retried, timed out,
recorded in history) and not workflow code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from contracts.tools import ToolInput, ToolOutput


class ExampleToolActivities:
    @activity.defn(name="look_up_weather")
    async def look_up_weather(self, call: ToolInput) -> ToolOutput:
        city = str(call.arguments.get("city") or "somewhere")
        return ToolOutput(content=f'{{"city": "{city}", "temp_c": 12, "sky": "light rain"}}')

    @activity.defn(name="send_email")
    async def send_email(self, call: ToolInput) -> ToolOutput:
        to = str(call.arguments.get("to") or "nobody")
        return ToolOutput(content=f"email queued for {to}")

    def all(self) -> list[Callable[..., Any]]:
        return [self.look_up_weather, self.send_email]
