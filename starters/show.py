"""``keel show WORKFLOW_ID``: where a workflow stands — status, steps done, cost so far, and what
it waits for (with the exact command) — from Temporal and Postgres, so it answers even when no
worker is running."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import typer
from sqlalchemy import func, select
from temporalio.api.failure.v1 import Failure
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import FailureError
from temporalio.service import RPCError, RPCStatusCode

from activities.approvals import gates_of
from activities.audit_trail import read_audit_trail
from contracts.approvals import GateStatus
from infra.database import dispose_engines, session_factory
from infra.payload_codec import PayloadDecryptionError
from infra.settings import get_settings
from infra.tables import AuditEvent, LlmCall, PublishedDocument
from infra.temporal_client import connect
from starters.approvals import EXIT_NO_SUCH_WORKFLOW, age, due
from starters.output import console, fail, workflow_link
from starters.review import approve_command, reject_command

# Audit events that describe a gate or a single LLM attempt, not a step of the process.
_DETAIL_PREFIXES = ("approval.", "llm.")


async def _show(workflow_id: str, show_text: bool) -> None:
    settings = get_settings()
    try:
        client = await connect(settings)
    except ConnectionError as error:
        fail(str(error))
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            fail(
                f"no such workflow: {workflow_id!r}",
                "pending reviews and their workflow ids: keel approvals",
                code=EXIT_NO_SUCH_WORKFLOW,
            )
        raise
    async with session_factory()() as session:
        events = await read_audit_trail(session, workflow_id)
        gates = [g for g in await gates_of(session, workflow_id) if g.run_id == description.run_id]
        calls, cost, unpriced, tokens_in, tokens_out = (
            await session.execute(
                select(
                    func.count(),
                    func.sum(LlmCall.cost_usd),
                    func.count().filter(LlmCall.cost_usd.is_(None)),
                    func.coalesce(func.sum(LlmCall.input_tokens), 0),
                    func.coalesce(func.sum(LlmCall.output_tokens), 0),
                ).where(LlmCall.workflow_id == workflow_id)
            )
        ).one()
        published = (
            await session.execute(
                select(PublishedDocument).where(PublishedDocument.workflow_id == workflow_id)
            )
        ).scalar_one_or_none()

    status = description.status or WorkflowExecutionStatus.RUNNING
    console.print(
        f"[bold]{workflow_id}[/] · {description.workflow_type} · [bold]{status.name}[/] · "
        f"started {age(description.start_time)} ago"
    )
    console.print(f"[dim]{workflow_link(settings, workflow_id)}[/]")
    handle = client.get_workflow_handle(workflow_id, run_id=description.run_id)
    if status == WorkflowExecutionStatus.FAILED:
        console.print(f"[bold red]failed:[/] {await _failure_of(handle)}", highlight=False)
    stuck = await _stuck_workflow_task(client, handle, description)

    steps = [e for e in events if not e.event_type.startswith(_DETAIL_PREFIXES)]
    console.print("[bold]steps done[/]")
    for event in steps or []:
        console.print(f"  {event.occurred_at:%H:%M:%S} {event.event_type}")
    if not steps:
        console.print("  none recorded yet")

    spent = f"${Decimal(cost or 0):.6f}" + (f" (+{unpriced} unpriced)" if unpriced else "")
    console.print(
        f"[bold]cost so far[/] {spent} over {calls} LLM call attempt(s) · tokens in {tokens_in}"
        f" / out {tokens_out}"
    )
    for gate in gates:
        if gate.status == GateStatus.PENDING:
            continue
        who = ", ".join(gate.decided_by) or "keel"
        console.print(
            f"[bold]gate {gate.gate}[/] {gate.status} by {who}"
            + (f": {gate.decision_reason}" if gate.decision_reason else ""),
            highlight=False,
        )

    waiting = next((g for g in reversed(gates) if g.status == GateStatus.PENDING), None)
    if status != WorkflowExecutionStatus.RUNNING:
        if published is not None:
            console.print(
                f"[bold]published[/] as document {published.id}"
                + (" [yellow](flagged: no human approved it)[/]" if published.flagged else "")
            )
            if show_text:
                console.print(published.content, markup=False, highlight=False)
        console.print(f"[dim]trail: keel audit {workflow_id}[/]")
        return
    if stuck is not None:
        console.print(f"[bold red]stuck:[/] {stuck}", highlight=False)
        console.print(
            "  Temporal retries the task until a worker can run it: fix the worker (its log "
            "says more), or end the workflow with `temporal workflow terminate`"
        )
        return
    if waiting is None:
        pause = budget_pause(events, description.run_id)
        if pause is not None:
            _print_budget_pause(pause)
            return
        console.print("[bold]waiting for[/] nothing from you: the workflow is working")
        return
    console.print(
        f"[bold yellow]waiting for[/] approval of gate [bold]{waiting.gate}[/]"
        + (f" ({waiting.subject})" if waiting.subject else "")
    )
    console.print(f"  why: {waiting.reason_requested}", markup=False, highlight=False)
    console.print(
        f"  who: role {waiting.required_role}"
        + (f" (escalated, level {waiting.escalation_level})" if waiting.escalation_level else "")
        + f" · {len(waiting.decided_by)} of {waiting.approvals_required} approvals"
        + (f" ({', '.join(waiting.decided_by)})" if waiting.decided_by else "")
        + f" · asked {age(waiting.requested_at)} ago · deadline {due(waiting.deadline_at)}"
    )
    if show_text:
        text = waiting.final if waiting.final is not None else waiting.draft
        label = "edited text under review" if waiting.final is not None else "draft under review"
        console.print(f"  [dim]{label}:[/]")
        console.print("    " + (text or "").replace("\n", "\n    "), markup=False, highlight=False)
    console.print(f"  approve: [cyan]{approve_command(workflow_id)}[/]")
    console.print(f"  reject:  [cyan]{reject_command(workflow_id)}[/]")


@dataclass(frozen=True)
class BudgetPause:
    """An LLM call of the workflow paused until a budget has room (budget policy ``pause``)."""

    since: datetime
    reason: str
    tenant: str | None
    period: str | None

    @property
    def release_command(self) -> str:
        return (
            f"keel budget set {self.tenant or 'TENANT'} --usd AMOUNT "
            f"--period {self.period or 'day|month'}"
        )


# Older pauses recorded only the reason, which names the budget: "budget acme/day: …".
_BUDGET_IN_REASON = re.compile(r"\bbudget (\S+)/(day|month)\b")
_PAUSE_EVENTS = ("llm.budget_paused", "llm.budget_resumed", "llm.budget_refused")


def budget_pause(events: list[AuditEvent], run_id: str | None) -> BudgetPause | None:
    """The pause the run's calls are in now: its last budget event is a pause."""
    last = next(
        (
            event
            for event in reversed(events)
            if event.event_type in _PAUSE_EVENTS and (run_id is None or event.run_id == run_id)
        ),
        None,
    )
    if last is None or last.event_type != "llm.budget_paused":
        return None
    reason = str(last.payload.get("reason") or "")
    budget = last.payload.get("budget")
    if isinstance(budget, dict) and budget.get("tenant") and budget.get("period"):
        tenant, period = str(budget["tenant"]), str(budget["period"])
    elif named := _BUDGET_IN_REASON.search(reason):
        tenant, period = named.group(1), named.group(2)
    else:
        return BudgetPause(last.occurred_at, reason, None, None)
    return BudgetPause(last.occurred_at, reason, tenant, period)


def _print_budget_pause(pause: BudgetPause) -> None:
    budget = f"{pause.tenant}/{pause.period}" if pause.tenant else "its tenant's budget"
    console.print(
        f"[bold yellow]paused[/] on budget [bold]{budget}[/] for {age(pause.since)}: "
        "an LLM call waits until the budget can cover it (budget policy pause)",
        highlight=False,
    )
    console.print(f"  why: {pause.reason}", markup=False, highlight=False)
    console.print(f"  release: [cyan]{pause.release_command}[/]", highlight=False)
    console.print(
        "  [dim]the call re-checks on a backing-off timer and goes on once the budget has room "
        "(or a new period begins); it gives up after KEEL_BUDGET_PAUSE_MAX_SECONDS[/]"
    )


def _messages(error: BaseException) -> str:
    """A failure and its causes, outermost first: "Activity task failed ← Failed decoding …"."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 5:
        parts.append(current.message if isinstance(current, FailureError) else str(current))
        current = current.cause if isinstance(current, FailureError) else current.__cause__
    return " ← ".join(part for part in parts if part)


def _unreadable(error: PayloadDecryptionError) -> str:
    return f"(its failure message cannot be read with this process's keys: {error})"


async def _failure_of(handle: WorkflowHandle[Any, Any]) -> str:
    """Why a failed workflow failed, from its close event."""
    try:
        await handle.result(follow_runs=False)
    except WorkflowFailureError as error:
        return _messages(error.cause or error)
    except PayloadDecryptionError as error:
        return _unreadable(error)
    return "(no failure recorded)"


async def _stuck_workflow_task(
    client: Client, handle: WorkflowHandle[Any, Any], description: WorkflowExecutionDescription
) -> str | None:
    """Why a running workflow makes no progress, when its workflow task keeps failing (a worker
    that cannot run it: a bug, a non-deterministic change, a payload it cannot read)."""
    if description.status not in (None, WorkflowExecutionStatus.RUNNING):
        return None
    pending = description.raw_description.pending_workflow_task
    if pending.attempt <= 1:
        return None
    last_failure: Failure | None = None
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_task_failed_event_attributes"):
            last_failure = event.workflow_task_failed_event_attributes.failure
    text = f"its workflow task has failed {pending.attempt - 1} time(s) in a row"
    if last_failure is None:
        return text
    try:
        reason = _messages(await client.data_converter.decode_failure(last_failure))
    except PayloadDecryptionError as error:
        reason = _unreadable(error)
    return f"{text}: {reason}"


def show(
    workflow_id: str = typer.Argument(..., help="The workflow to look at."),
    text: bool = typer.Option(True, "--text/--no-text", help="Print the text under review."),
) -> None:
    """Status, steps done, cost so far, and what the workflow waits for."""

    async def run() -> None:
        try:
            await _show(workflow_id, text)
        finally:
            await dispose_engines()

    asyncio.run(run())
