"""Workflow runs whose histories are recorded for the replay test.

Each scenario starts one workflow against the fixtures' servers and returns its handle; adding a
workflow kind means adding a scenario here and re-recording (``python -m tests.replay.record``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)

from activities.approvals import add_reviewer
from activities.batch.files import BatchFileLimits, parse_lines
from contracts.approvals import ApprovalMode, ApproveDecision, EditDecision, GateView, ReviewPolicy
from contracts.batch import BatchOptions
from contracts.jobs import JobInput, JobKind
from contracts.llm import ChatMessage, LlmParameters, ToolSpec
from contracts.provider_batch import ProviderBatchSettings
from contracts.sessions import session_workflow_id
from contracts.tools import ToolAgentInput
from infra.database import session_factory
from infra.settings import KeelSettings, get_settings
from llmsim import SimServer
from services.batches import report_of, submit_batch, submit_provider_batch
from services.budgets import change_budget
from services.chat_client import TurnRequest, run_turn
from workflows.approval_gate import APPROVE, EDIT, STATUS_QUERY
from workflows.ask import AskInput, AskWorkflow
from workflows.document_review import DocumentReviewWorkflow, ReviewInput
from workflows.jobs import JobWorkflow
from workflows.tool_agent import ToolAgentWorkflow

Scenario = Callable[[Client, KeelSettings, SimServer], Awaitable[WorkflowHandle]]


async def ask_answered(client: Client, settings: KeelSettings, sim: SimServer) -> WorkflowHandle:
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="What is durable execution?", models=["gpt-4o-mini"]),
        id=f"replay-ask-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def ask_retried_then_fell_back(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    sim.add_faults("server_error", model="gpt-4o-mini", count=1)
    sim.add_faults("context_window", model="gpt-4o-mini", count=1)
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="Summarise this.", models=["gpt-4o-mini", "claude-3-5-haiku-latest"]),
        id=f"replay-ask-fallback-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def ask_rate_limited_then_answered(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """Two 429s waited out on one model, then its answer: the retry policy bounded by the
    deadline (patch ``rate-limits-bounded-by-deadline``)."""
    sim.add_faults("rate_limit", model="gpt-4o-mini", count=2, retry_after_s=0.5)
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="Name a river.", models=["gpt-4o-mini", "claude-3-5-haiku-latest"]),
        id=f"replay-ask-rate-limited-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def ask_fallback_response(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="Hello", models=["no-such-model"], fallback_policy="response"),
        id=f"replay-ask-fallback-response-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def chat_two_turns_then_continued_as_new(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """Two streamed turns (the second a retried idempotency key), then continue-as-new."""
    session_settings = settings.model_copy(update={"session_max_turns_per_run": 2})
    session_id = f"replay-{uuid.uuid4().hex[:8]}"
    first = TurnRequest(session_id=session_id, content="Hi, I am Ada.", models=["gpt-4o-mini"])
    await run_turn(client, session_settings, first)
    handle = client.get_workflow_handle(session_workflow_id(session_id))
    first_run = (await handle.describe()).run_id
    await run_turn(client, session_settings, first.model_copy(update={"content": "Hi, I am Ada."}))
    await run_turn(
        client,
        session_settings,
        TurnRequest(session_id=session_id, content="Who am I?", models=["gpt-4o-mini"]),
    )
    return client.get_workflow_handle(handle.id, run_id=first_run)


async def job_ask(client: Client, settings: KeelSettings, sim: SimServer) -> WorkflowHandle:
    handle = await client.start_workflow(
        JobWorkflow.run,
        JobInput(kind=JobKind.ASK, input={"prompt": "Name a river.", "models": ["gpt-4o-mini"]}),
        # The replay test replays under the id "replay-<scenario>": the child id derives from it.
        id="replay-job_ask",
        task_queue=settings.interactive_task_queue,
    )
    await handle.result()
    return handle


async def batch_pages_continued_as_new(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """A paged batch of 30 under a 200-event limit (so it continues as new), one item failing on
    its first model and answered by the next on the slow path; the first run is recorded: its
    pages, the slow path's fallback, the outcome write and the hand-over."""
    sim.add_faults("context_window", model="gpt-4o-mini", count=1)
    lines = [
        json.dumps({"custom_id": f"r{n}", "prompt": f"Item {n}", "max_tokens": 16})
        for n in range(30)
    ]
    handle = await submit_batch(
        client,
        settings,
        session_factory(),
        list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
        batch_id=f"replay-{uuid.uuid4().hex[:8]}",
        options=BatchOptions(concurrency=4, route="balanced"),
        source_name="replay.jsonl",
        history_event_limit=200,
    )
    first_run = (await handle.describe()).run_id
    await handle.result()
    return client.get_workflow_handle(handle.id, run_id=first_run)


async def provider_batch_expired_then_live(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """A provider batch on both providers whose batches expire part-way: a second round for the
    expired lines, then the rest continues as new as the live batch. The first run is recorded:
    plan, submit, timers, polls, collects, the hand-over."""
    before = sim.state.config.batch.model_dump()
    sim.configure(batch={"processing_s": 2.0, "expire_after_s": 1.0})
    lines = [
        json.dumps(
            {
                "custom_id": f"p{n}",
                "prompt": f"Item {n}",
                "max_tokens": 16,
                "model": "gpt-4o-mini" if n % 2 else "claude-3-5-haiku-latest",
            }
        )
        for n in range(8)
    ]
    try:
        handle = await submit_provider_batch(
            client,
            settings,
            session_factory(),
            list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
            batch_id=f"replay-{uuid.uuid4().hex[:8]}",
            options=BatchOptions(),
            source_name="replay.jsonl",
            provider_settings=ProviderBatchSettings(
                poll_initial_seconds=0.3, poll_max_seconds=0.6, max_rounds=2
            ),
        )
        first_run = (await handle.describe()).run_id
        await handle.result()
    finally:
        sim.configure(batch=before)
    return client.get_workflow_handle(handle.id, run_id=first_run)


async def provider_batch_tenant_gate_then_approved(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """A provider batch whose tenant's budget is spent: its chunk waits unsent at the
    tenant-budget-1 gate; the budget is raised and the owner approves; the chunk is submitted,
    collected, and the batch completes."""
    async with session_factory().begin() as session:
        await add_reviewer(session, "replay-owner", "batch-owner", added_by="replay")
    await change_budget(session_factory(), "replay-provider", "day", Decimal(0), "replay")
    before = sim.state.config.batch.model_dump()
    sim.configure(batch={"processing_s": 0.5})
    lines = [
        json.dumps({"custom_id": f"t{n}", "prompt": f"Item {n}", "max_tokens": 16})
        for n in range(4)
    ]
    batch_id = f"replay-{uuid.uuid4().hex[:8]}"
    try:
        handle = await submit_provider_batch(
            client,
            settings,
            session_factory(),
            list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
            batch_id=batch_id,
            options=BatchOptions(tenant="replay-provider", model="gpt-4o-mini"),
            source_name="replay.jsonl",
            provider_settings=ProviderBatchSettings(poll_initial_seconds=0.3, poll_max_seconds=0.6),
        )
        for _ in range(240):  # the gate opens once the chunk is refused
            report = await report_of(session_factory(), batch_id)
            if report.pending_gate == "tenant-budget-1":
                break
            await asyncio.sleep(0.25)
        await change_budget(session_factory(), "replay-provider", "day", Decimal(1), "replay")
        await handle.execute_update(
            APPROVE, ApproveDecision(reviewer="replay-owner", gate="tenant-budget-1")
        )
        await handle.result()
    finally:
        sim.configure(batch=before)
    return handle


@contextmanager
def _settings_env(**variables: str) -> Iterator[None]:
    """Settings the scenario's workers read at call time, restored afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


async def ask_refused_by_budget(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """The tenant's budget cannot cover the call: refused up front, audited, failed clearly."""
    await change_budget(session_factory(), "replay-broke", "day", Decimal(0), "replay")
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(
            prompt="Hello", models=["gpt-4o-mini"], tenant="replay-broke", budget_policy="refuse"
        ),
        id=f"replay-ask-refused-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    return handle


async def ask_downgraded_by_budget(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """Room for the cheap route only: the planner steps down, and says so in the audit."""
    routes = {"quality": ["gpt-4o"], "cheap": ["gpt-4o-mini"]}
    with _settings_env(
        KEEL_ROUTES=json.dumps(routes),
        KEEL_ROUTE_POLICIES=json.dumps({"quality": {"downgrade_to": "cheap"}}),
    ):
        await change_budget(session_factory(), "replay-lean", "day", Decimal("0.002"), "replay")
        handle = await client.start_workflow(
            AskWorkflow.run,
            AskInput(prompt="Plan it.", route="quality", max_tokens=500, tenant="replay-lean"),
            id=f"replay-ask-downgraded-{uuid.uuid4().hex[:8]}",
            task_queue=settings.interactive_task_queue,
        )
        await handle.result()
    return handle


async def ask_paused_by_budget(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """Paused on its budget, polled on timers, released by a raise: resumes and answers."""
    with _settings_env(KEEL_BUDGET_PAUSE_POLL_SECONDS="0.5"):
        await change_budget(session_factory(), "replay-paused", "day", Decimal(0), "replay")
        handle = await client.start_workflow(
            AskWorkflow.run,
            AskInput(
                prompt="Wait for it.",
                models=["gpt-4o-mini"],
                tenant="replay-paused",
                budget_policy="pause",
            ),
            id=f"replay-ask-paused-{uuid.uuid4().hex[:8]}",
            task_queue=settings.interactive_task_queue,
        )
        await asyncio.sleep(2)  # a few polls find no room
        await change_budget(session_factory(), "replay-paused", "day", Decimal(1), "replay")
        await handle.result()
    return handle


async def review_gated_then_approved(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """A review that always asks a human: the gate opens, an editor approves, it publishes."""
    with _settings_env(KEEL_REVIEWERS=json.dumps({"replay-editor": ["editor"]})):
        handle = await client.start_workflow(
            DocumentReviewWorkflow.run,
            ReviewInput(
                document="The vendor will deliver monitoring for 24 months at EUR 18,000 a month.",
                source_name="contract.md",
                policy=ReviewPolicy(mode=ApprovalMode.ALWAYS),
            ),
            id=f"replay-review-{uuid.uuid4().hex[:8]}",
            task_queue=settings.interactive_task_queue,
        )
        for _ in range(240):  # the gate opens after extract, draft and self-check
            with contextlib.suppress(Exception):
                await handle.execute_update(APPROVE, ApproveDecision(reviewer="replay-editor"))
                break
            await asyncio.sleep(0.25)
        await handle.result()
    return handle


async def review_gated_reviewer_added_then_approved(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """The gate opens with nobody holding its role; a decision is refused against the reviewers
    table as it is then; the reviewer is added; their approval counts at once."""
    handle = await client.start_workflow(
        DocumentReviewWorkflow.run,
        ReviewInput(
            document="The vendor will deliver monitoring for 24 months at EUR 18,000 a month.",
            source_name="contract.md",
            policy=ReviewPolicy(mode=ApprovalMode.ALWAYS),
        ),
        id=f"replay-review-added-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    for _ in range(240):  # the gate opens after extract, draft and self-check
        status = await handle.query(STATUS_QUERY, result_type=GateView)
        if status.open_gate is not None:
            break
        await asyncio.sleep(0.25)
    with contextlib.suppress(WorkflowUpdateFailedError):  # not a reviewer yet: refused
        await handle.execute_update(APPROVE, ApproveDecision(reviewer="replay-carol"))
    async with session_factory().begin() as session:
        await add_reviewer(session, "replay-carol", "editor", added_by="replay")
    await handle.execute_update(APPROVE, ApproveDecision(reviewer="replay-carol"))
    await handle.result()
    return handle


# Histories of workflow types no scenario starts any more, replayed until their executions drain:
# they cannot be recorded again.
FROZEN_HISTORIES: dict[str, str] = {
    "batch_v1_continued_as_new": "the per-item BatchWorkflow (workflows/batch_v1.py) that batches "
    "ran before pages: a batch started before the upgrade finishes on it",
}


async def chat_tool_call_then_result(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """A turn answered with a tool call (streamed), then a turn handing back its result."""
    lookup = ToolSpec(
        name="look_up_weather",
        description="Current weather of a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    session_id = f"replay-tools-{uuid.uuid4().hex[:8]}"
    asked = await run_turn(
        client,
        settings,
        TurnRequest(
            session_id=session_id,
            content="What is the weather in Oslo?",
            models=["gpt-4o-mini"],
            parameters=LlmParameters(tools=[lookup]),
        ),
    )
    await run_turn(
        client,
        settings,
        TurnRequest(
            session_id=session_id,
            content="",
            turn_messages=[
                ChatMessage(role="tool", tool_call_id=call.id, content="12 C, light rain")
                for call in asked.tool_calls
            ],
            models=["gpt-4o-mini"],
            parameters=LlmParameters(tools=[lookup]),
        ),
    )
    return client.get_workflow_handle(session_workflow_id(session_id))


async def tool_agent_approved(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """The example agent calls its sensitive tool: a person approves the call, it runs."""
    async with session_factory().begin() as session:
        await add_reviewer(session, "replay-operator", "operator", added_by="replay")
    handle = await client.start_workflow(
        ToolAgentWorkflow.run,
        ToolAgentInput(
            question="Send an email to Ana, my person of contact.", models=["gpt-4o-mini"]
        ),
        id=f"replay-agent-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    for _ in range(240):  # the gate opens after the first model call
        status = await handle.query(STATUS_QUERY, result_type=GateView)
        if status.open_gate is not None:
            break
        await asyncio.sleep(0.25)
    await handle.execute_update(APPROVE, ApproveDecision(reviewer="replay-operator"))
    await handle.result()
    return handle


async def tool_agent_arguments_edited(
    client: Client, settings: KeelSettings, sim: SimServer
) -> WorkflowHandle:
    """A person edits the sensitive tool's arguments (the console's tool approvals): the tool
    runs with them, behind the tool loop's patches (gate tenant, edited arguments)."""
    async with session_factory().begin() as session:
        await add_reviewer(session, "replay-operator-2", "operator", added_by="replay")
    handle = await client.start_workflow(
        ToolAgentWorkflow.run,
        ToolAgentInput(
            question="Send an email to Ana, my person of contact.",
            models=["gpt-4o-mini"],
            tenant="acme",
        ),
        id=f"replay-agent-{uuid.uuid4().hex[:8]}",
        task_queue=settings.interactive_task_queue,
    )
    for _ in range(240):  # the gate opens after the first model call
        status = await handle.query(STATUS_QUERY, result_type=GateView)
        if status.open_gate is not None:
            break
        await asyncio.sleep(0.25)
    edited = 'send_email({"to": "bob@example.com", "body": "Edited."})'
    await handle.execute_update(EDIT, EditDecision(reviewer="replay-operator-2", text=edited))
    await handle.result()
    return handle


SCENARIOS: dict[str, Scenario] = {
    # Recorded after "ask-audits-with-the-call" and "turn-planned-with-prepare" +
    # "turn-stored-by-the-call": the ask's plan beside its start audit, the turn's call planned
    # by prepare_turn, and the answer's records written by the call (the older histories of the
    # same scenarios keep the paths from before the patches).
    "ask_audited_with_the_call": ask_retried_then_fell_back,
    "chat_turns_planned_and_stored_with_the_call": chat_two_turns_then_continued_as_new,
    "tool_agent_arguments_edited": tool_agent_arguments_edited,
    "chat_tool_call_then_result": chat_tool_call_then_result,
    "tool_agent_approved": tool_agent_approved,
    "review_gated_then_approved": review_gated_then_approved,
    "review_gated_reviewer_added_then_approved": review_gated_reviewer_added_then_approved,
    "ask_answered": ask_answered,
    "ask_retried_then_fell_back": ask_retried_then_fell_back,
    "ask_rate_limited_then_answered": ask_rate_limited_then_answered,
    "ask_fallback_response": ask_fallback_response,
    "chat_two_turns_then_continued_as_new": chat_two_turns_then_continued_as_new,
    "job_ask": job_ask,
    "batch_pages_continued_as_new": batch_pages_continued_as_new,
    "provider_batch_expired_then_live": provider_batch_expired_then_live,
    "provider_batch_tenant_gate_then_approved": provider_batch_tenant_gate_then_approved,
    "ask_refused_by_budget": ask_refused_by_budget,
    "ask_downgraded_by_budget": ask_downgraded_by_budget,
    "ask_paused_by_budget": ask_paused_by_budget,
}
