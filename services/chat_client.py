"""Sending a turn to a chat session from outside Temporal: the HTTP API and `keel chat` both
come through here.

Every turn is an update-with-start: the session workflow starts on its first turn and is reused
afterwards (``USE_EXISTING``). The update id is the turn id, i.e. the client's idempotency key.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from contracts.llm import MAX_OUTPUT_TOKENS, ChatMessage, LlmParameters, RequestPriority
from contracts.search_attributes import KEEL_TENANT, KEEL_WORKFLOW_KIND
from contracts.sessions import SESSION_ID_PATTERN, session_workflow_id, turn_stream_key
from infra.settings import KeelSettings
from workflows.chat_session import ChatSessionInput, ChatSessionWorkflow, TurnInput, TurnOutput


class TurnRequest(BaseModel):
    session_id: str = Field(pattern=SESSION_ID_PATTERN.pattern)
    turn_id: str = Field(default_factory=lambda: f"turn-{uuid.uuid4().hex}", max_length=200)
    content: str
    tenant: str = "default"
    seed_messages: list[ChatMessage] = Field(default_factory=list)
    # Tool results (or a user message with images) as this turn's input; ``content`` is "".
    turn_messages: list[ChatMessage] = Field(default_factory=list)
    # Tools, tool choice, response format, stop, top_p, seed (TurnInput.parameters).
    parameters: LlmParameters | None = None
    system_prompt: str | None = None
    route: str | None = None
    models: list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = None
    stream: bool = True
    priority: RequestPriority = RequestPriority.NORMAL
    # Stateless: the session exists for this one turn (its workflow completes after it).
    single_turn: bool = False

    @property
    def stream_key(self) -> str:
        return turn_stream_key(self.session_id, self.turn_id)


def new_session_id() -> str:
    return f"s-{uuid.uuid4().hex[:16]}"


def _start_operation(
    request: TurnRequest, settings: KeelSettings
) -> WithStartWorkflowOperation[ChatSessionWorkflow, object]:
    return WithStartWorkflowOperation(
        ChatSessionWorkflow.run,
        ChatSessionInput(
            session_id=request.session_id,
            tenant=request.tenant,
            route=request.route,
            models=request.models,
            system_prompt=request.system_prompt,
            answer_tokens=settings.session_answer_tokens,
            idle_timeout_seconds=settings.session_idle_timeout_seconds,
            max_turns_per_run=settings.session_max_turns_per_run,
            single_turn=request.single_turn,
        ),
        id=session_workflow_id(request.session_id),
        task_queue=settings.interactive_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(KEEL_TENANT, request.tenant),
                SearchAttributePair(KEEL_WORKFLOW_KIND, "chat"),
            ]
        ),
        priority=Priority(priority_key=request.priority.priority_key),
        static_summary=f"chat session {request.session_id}",
    )


def _turn_input(request: TurnRequest) -> TurnInput:
    return TurnInput(
        content=request.content,
        seed_messages=request.seed_messages,
        turn_messages=request.turn_messages,
        parameters=request.parameters,
        route=request.route,
        models=request.models,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        stream=request.stream,
        priority_key=request.priority.priority_key,
    )


async def start_turn(
    client: Client, settings: KeelSettings, request: TurnRequest
) -> WorkflowUpdateHandle[TurnOutput]:
    """Send the turn and return once the session accepted it (the answer streams meanwhile)."""
    return await client.start_update_with_start_workflow(
        ChatSessionWorkflow.turn,
        _turn_input(request),
        start_workflow_operation=_start_operation(request, settings),
        id=request.turn_id,
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )


async def run_turn(client: Client, settings: KeelSettings, request: TurnRequest) -> TurnOutput:
    """Send the turn and wait for its answer."""
    return await client.execute_update_with_start_workflow(
        ChatSessionWorkflow.turn,
        _turn_input(request),
        start_workflow_operation=_start_operation(request, settings),
        id=request.turn_id,
    )
