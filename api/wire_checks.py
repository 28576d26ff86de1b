"""Checks both wire formats (Chat Completions, Messages) make of a request, written once: a
field keel does not know is refused by name, and the tools a request declares are named once
each, a tool choice naming one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from api.errors import ApiError
from contracts.llm import ToolChoice, ToolSpec


def refuse(message: str, param: str) -> ApiError:
    return ApiError(400, message, param=param, code="unsupported_parameter")


def refuse_unknown_parameters(
    extra: Mapping[str, Any] | None,
    harmless: frozenset[str],
    neutral: Mapping[str, tuple[Any, ...]],
) -> None:
    """400 naming the first top-level field keel does not honour: any but the ``harmless`` ones
    (they change nothing about the answer) and those sent at their ``neutral`` value."""
    for name, value in (extra or {}).items():
        if name in harmless:
            continue
        if name in neutral and value in neutral[name]:
            continue
        raise refuse(f"parameter {name!r} is not supported by keel", name)


def refuse_extra_fields(
    model: BaseModel | None, where: str, harmless: frozenset[str] = frozenset()
) -> None:
    """400 naming the first field of ``model`` (a model that allows extra fields) keel does not
    know, unless it is null or ``harmless``: a field keel does not know would be dropped."""
    for name, value in ((model.model_extra or {}) if model is not None else {}).items():
        if name not in harmless and value is not None:
            raise refuse(f"{where}.{name} is not supported by keel", f"{where}.{name}")


def check_tools(tools: list[ToolSpec], choice: ToolChoice | None) -> None:
    """400 for two tools of one name, or a tool choice naming no declared tool."""
    names = {tool.name for tool in tools}
    if len(names) != len(tools):
        raise ApiError(400, "tools: two tools have the same name", param="tools")
    if choice is not None and choice.mode == "tool" and choice.name not in names:
        raise ApiError(
            400, f"tool_choice names {choice.name!r}, which is not in tools", param="tool_choice"
        )
