"""Answers a caller can rely on: a structured answer validates against the requested JSON schema,
and every tool call names a tool the request offered, with arguments valid against its schema.

An answer that fails is ``invalid_output``: the attempt is billed and recorded, then retried
(a model's next sample usually passes), then the chain's next model; a caller never receives it.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from activities.llm.errors import ClassifiedError
from activities.llm.providers import Completion
from contracts.llm import ErrorClass, LlmParameters


def _invalid(message: str) -> ClassifiedError:
    return ClassifiedError(ErrorClass.INVALID_OUTPUT, message[:500])


def _schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    try:
        validator = Draft202012Validator(schema)
        error = next(iter(validator.iter_errors(value)), None)
    except SchemaError as problem:  # the caller's schema, not the answer, is at fault
        return f"the schema itself is invalid: {problem.message}"
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    return f"at {where}: {error.message}"


def check_output(parameters: LlmParameters, completion: Completion) -> ClassifiedError | None:
    """Why the answer cannot be handed to the caller, or None."""
    if not parameters.check_output:
        return None
    calls = completion.tool_calls
    if calls and parameters.tool_choice is not None and parameters.tool_choice.mode == "none":
        return _invalid("the model called a tool although tool_choice was 'none'")
    for call in calls:
        tool = parameters.tool(call.name)
        if tool is None:
            return _invalid(f"the model called {call.name!r}, a tool the request did not offer")
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            return _invalid(f"the arguments of the call to {call.name!r} are not JSON")
        if not isinstance(arguments, dict):
            return _invalid(f"the arguments of the call to {call.name!r} are not a JSON object")
        problem = _schema_problem(arguments, tool.parameters)
        if problem is not None:
            return _invalid(
                f"the arguments of the call to {call.name!r} do not validate: {problem}"
            )
    if calls or (parameters.json_schema is None and not parameters.json_object):
        return None
    try:
        answer = json.loads(completion.text)
    except ValueError:
        return _invalid("the answer is not JSON, and the request asked for JSON")
    if parameters.json_schema is not None:
        problem = _schema_problem(answer, parameters.json_schema)
        if problem is not None:
            return _invalid(f"the answer does not validate against the JSON schema: {problem}")
    elif not isinstance(answer, dict):
        return _invalid("the answer is not a JSON object, and the request asked for one")
    return None
