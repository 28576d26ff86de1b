"""A request of either wire format (Chat Completions, Messages) as the turn of a chat session it
becomes, checked once for both: its text (system prompt, messages, tool results and tool
definitions) against keel's limits, what its models can honour, and whose session it names.

Everything here runs before anything is started, so a refused request leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import ValidationError

from activities.llm.capabilities import missing_capabilities, provider_refusals
from activities.sessions import chain_models
from api.errors import ApiError
from api.state import IDEMPOTENCY_HEADER
from api.wire_checks import refuse
from contracts.llm import (
    Capability,
    ChatMessage,
    LlmParameters,
    RequestPriority,
    required_capabilities,
)
from contracts.sessions import SESSION_ID_PATTERN
from infra.input_limits import (
    InputTooLarge,
    PromptLimits,
    UnstorableText,
    check_model_name,
    check_prompt,
    check_storable,
    first_unstorable,
)
from infra.prompt_tokens import prompt_texts
from infra.settings import KeelSettings
from services.chat_client import TurnRequest, new_session_id
from services.session_reports import session_tenant

DEFAULT_MODEL_NAMES = frozenset({"keel", "default"})
# The request field that asks for each capability, named in a refusal: in Chat Completions...
CHAT_CAPABILITY_PARAMETERS: dict[str, str] = {
    Capability.TOOLS: "tools",
    Capability.JSON_SCHEMA: "response_format",
    Capability.IMAGES: "messages",
    Capability.SEED: "seed",
}
# ...and in Messages (which has no seed).
MESSAGES_CAPABILITY_PARAMETERS: dict[str, str] = {
    Capability.TOOLS: "tools",
    Capability.JSON_SCHEMA: "output_config.format",
    Capability.IMAGES: "messages",
}


@dataclass
class AskedTurn:
    """What a request asks for, in keel's terms, whichever wire format it came in."""

    model: str
    messages: list[ChatMessage]
    parameters: LlmParameters
    session_id: str | None
    max_tokens: int | None
    temperature: float | None
    stream: bool
    # A system prompt given beside the messages (Anthropic's ``system``); Chat Completions
    # carries its system prompt as messages.
    system: list[str] = field(default_factory=list)
    # The request field that asks for each capability in this wire format, named in a refusal.
    capability_parameters: dict[str, str] = field(
        default_factory=lambda: CHAT_CAPABILITY_PARAMETERS
    )


async def checked_turn(
    asked: AskedTurn,
    request: Request,
    settings: KeelSettings,
    tenant: str,
    priority: RequestPriority,
) -> TurnRequest:
    """The turn ``asked`` becomes, or the ApiError (400, or 404 for another tenant's session)
    that refuses it."""
    check_request_text(asked, settings)
    turn = build_turn_request(
        asked, split_turn(asked.messages), request, settings, tenant, priority
    )
    if not turn.single_turn:
        # Another tenant's session answers as one that does not exist (the session workflow
        # refuses the turn too; this check keeps it from learning the session exists).
        owner = await session_tenant(turn.session_id)
        if owner is not None and owner != tenant:
            raise ApiError(404, f"no session {turn.session_id}", code="session_not_found")
    return turn


def _route_or_models(model: str, settings: KeelSettings) -> tuple[str | None, list[str] | None]:
    """``model`` names a keel route (its fallback chain answers), ``keel`` (the default route),
    or one model."""
    if model in settings.routes:
        return model, None
    if model in DEFAULT_MODEL_NAMES:
        return None, None
    return None, [model]


def check_request_text(asked: AskedTurn, settings: KeelSettings) -> None:
    """400 for a prompt over keel's limits — counted as a provider reads it: the system prompt,
    every message with its tool calls and tool results, and the tool definitions — or for text
    keel cannot store."""
    try:
        check_model_name(asked.model)
    except UnstorableText as error:
        raise ApiError(400, str(error), param="model", code="invalid_model") from None
    try:
        for position, text in enumerate(asked.system):
            check_storable(text, "system" if len(asked.system) == 1 else f"system[{position}]")
    except UnstorableText as error:
        raise ApiError(400, str(error), param="system", code="invalid_text") from None
    try:
        for position, message in enumerate(asked.messages):
            check_storable(message.content, f"messages[{position}].content")
            for text in (
                [message.tool_call_id or ""]
                + [image.url for image in message.images]
                + [f"{c.id}{c.name}{c.arguments}" for c in message.tool_calls]
            ):
                check_storable(text, f"messages[{position}]")
        unstorable = first_unstorable(
            [tool.model_dump() for tool in asked.parameters.tools], "tools"
        )
        if unstorable is not None:
            raise ApiError(400, unstorable, param="tools", code="invalid_text")
        texts = prompt_texts(asked.messages, asked.parameters, system=asked.system)
        check_prompt(
            texts,
            PromptLimits.from_settings(settings),
            "the prompt (system, messages and tools)",
            text_checked=True,
            message_count=len(asked.system) + len(asked.messages),
        )
    except InputTooLarge as error:
        raise ApiError(400, str(error), param="messages", code="prompt_too_large") from None
    except UnstorableText as error:
        raise ApiError(400, str(error), param="messages", code="invalid_text") from None


def check_capabilities(
    route: str | None,
    models: list[str] | None,
    messages: list[ChatMessage],
    parameters: LlmParameters,
    settings: KeelSettings,
    capability_parameters: dict[str, str] = CHAT_CAPABILITY_PARAMETERS,
) -> None:
    """400 naming the parameter when no model of the chain can honour the request (it lacks a
    capability, or its provider's API cannot carry a value); a chain with some models that can
    is served by those (the others are skipped, audited)."""
    needs = required_capabilities(messages, parameters)
    chain = chain_models(route, models, settings)
    if not chain:
        return
    problems: dict[str, tuple[list[str], list[str]]] = {}
    for model in chain:
        lacks = missing_capabilities(model, needs, settings)
        refusals = provider_refusals(model, messages, parameters)
        if not lacks and not refusals:
            return
        fields = [capability_parameters.get(c, c) for c in lacks]
        fields += [field for field, _ in refusals]
        reasons = [f"{model} does not support {', '.join(lacks)}"] if lacks else []
        reasons += [why for _, why in refusals]
        problems[model] = (fields, reasons)
    model = chain[0]
    fields, reasons = problems[model]
    where = f"route {route or settings.default_route}" if not models else f"model {model}"
    raise refuse(
        f"{where} cannot honour {', '.join(fields)}: {'; '.join(reasons)}"
        + (", nor does any model of its fallback chain" if len(chain) > 1 else ""),
        fields[0],
    )


@dataclass
class TurnShape:
    """A request's messages split as a turn takes them: the context it seeds a new session
    with, and what the turn adds (a question's text, or tool results and images)."""

    earlier: list[ChatMessage]
    content: str
    turn_messages: list[ChatMessage]


def split_turn(messages: list[ChatMessage]) -> TurnShape:
    last = messages[-1]
    if last.role == "tool":
        start = len(messages)
        while start > 0 and messages[start - 1].role == "tool":
            start -= 1
        results = messages[start:]
        caller = messages[start - 1] if start > 0 else None
        if caller is not None:
            asked = {call.id for call in caller.tool_calls}
            unknown = [m.tool_call_id for m in results if m.tool_call_id not in asked]
            if caller.role != "assistant" or unknown:
                raise ApiError(
                    400,
                    "tool messages must answer the tool calls of the assistant message before "
                    f"them (unknown tool_call_id: {', '.join(map(str, unknown)) or 'none'})",
                    param="messages",
                )
        return TurnShape(messages[:start], "", results)
    if last.role != "user" or not (last.content.strip() or last.images):
        raise ApiError(
            400,
            "the last message must be a non-empty user message, or tool results",
            param="messages",
        )
    if last.images:
        return TurnShape(messages[:-1], "", [last])
    return TurnShape(messages[:-1], last.content, [])


def build_turn_request(
    asked: AskedTurn,
    shape: TurnShape,
    request: Request,
    settings: KeelSettings,
    tenant: str,
    priority: RequestPriority,
) -> TurnRequest:
    """The turn of a chat session a request becomes (Chat Completions and Messages alike)."""
    session_id = asked.session_id
    if session_id is not None and not SESSION_ID_PATTERN.match(session_id):
        raise ApiError(
            400,
            "session id: 1-150 characters of letters, digits, '_', '.', ':' or '-'",
            param="session_id",
        )
    parameters = asked.parameters
    route, models = _route_or_models(asked.model, settings)
    check_capabilities(
        route,
        models,
        shape.earlier + shape.turn_messages,
        # The call's parameters as the provider gets them: with the turn's temperature.
        parameters.model_copy(update={"temperature": asked.temperature}),
        settings,
        asked.capability_parameters,
    )
    system = asked.system + [m.content for m in shape.earlier if m.role == "system"]
    seed: list[ChatMessage] = [m for m in shape.earlier if m.role != "system"]
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if session_id is None and idempotency_key:
        # A stateless request retried with its key must land on the same one-turn session.
        digest = hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).hexdigest()[:24]
        session_id_for_turn = f"oneshot-{digest}"
    else:
        session_id_for_turn = session_id or new_session_id()
    fields: dict[str, object] = {
        "session_id": session_id_for_turn,
        "content": shape.content,
        "turn_messages": shape.turn_messages,
        # A plain text turn carries no parameters: the same turn as before they existed.
        "parameters": parameters if parameters != LlmParameters() else None,
        "tenant": tenant,
        "seed_messages": seed,
        "system_prompt": "\n\n".join(system) or None,
        "route": route,
        "models": models,
        "max_tokens": asked.max_tokens,
        "temperature": asked.temperature,
        "stream": asked.stream,
        "priority": priority,
        "single_turn": session_id is None,
    }
    if idempotency_key:
        fields["turn_id"] = idempotency_key
    try:
        return TurnRequest.model_validate(fields)
    except ValidationError as error:
        problem = error.errors()[0]
        raise ApiError(400, f"{problem['loc'][0]}: {problem['msg']}") from None
