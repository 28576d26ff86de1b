"""``keel audit WORKFLOW_ID``: the trail of one workflow, in order, with its LLM ledger and the
state of its approval gates."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.table import Table
from sqlalchemy import select

from activities.approvals import gates_of
from activities.audit_trail import read_audit_trail
from infra.database import dispose_engines, session_factory
from infra.tables import Approval, LlmCall
from starters.output import console, fail


async def show_audit(workflow_id: str, as_json: bool = False) -> None:
    """Print the trail and the ledger of one workflow (engines are left open for the caller)."""
    async with session_factory()() as session:
        events = await read_audit_trail(session, workflow_id)
        calls = list(
            (
                await session.execute(
                    select(LlmCall).where(LlmCall.workflow_id == workflow_id).order_by(LlmCall.id)
                )
            ).scalars()
        )
        gates = await gates_of(session, workflow_id)
    if not events and not calls and not gates:
        fail(
            f"no audit trail for workflow {workflow_id!r}",
            "check the id (keel prints it when a workflow starts), or that DATABASE_URL points "
            "at keel's database",
        )
    if as_json:
        for event in events:
            print(
                json.dumps(
                    {
                        "at": event.occurred_at.isoformat(),
                        "event": event.event_type,
                        "actor": event.actor,
                        "payload": event.payload,
                    }
                )
            )
        return
    trail = Table(title=f"audit trail · {workflow_id}", title_justify="left")
    for column in ("at", "event", "actor", "details"):
        trail.add_column(column)
    for event in events:
        trail.add_row(
            event.occurred_at.strftime("%H:%M:%S.%f")[:-3],
            event.event_type,
            event.actor,
            json.dumps(event.payload, default=str)[:200],
        )
    console.print(trail)
    ledger = Table(title="LLM calls (one row per attempt)", title_justify="left")
    for column in ("attempt", "model", "outcome", "error", "in", "out", "cost $", "ms"):
        ledger.add_column(column)
    for call in calls:
        ledger.add_row(
            f"{call.activity_id}#{call.attempt}",
            call.model,
            call.outcome,
            call.error_class or "",
            str(call.input_tokens),
            str(call.output_tokens),
            f"{call.cost_usd:.6f}" if call.cost_usd is not None else "—",
            str(call.latency_ms),
        )
    console.print(ledger)
    if gates:
        console.print(_gates_table(gates))


def _gates_table(gates: list[Approval]) -> Table:
    table = Table(title="approval gates (current state)", title_justify="left")
    for column in (
        "gate",
        "status",
        "role",
        "approvals",
        "decided by",
        "note",
        "requested",
        "decided",
    ):
        table.add_column(column)
    for gate in gates:
        table.add_row(
            gate.gate,
            gate.status,
            gate.required_role
            + (f" (level {gate.escalation_level})" if gate.escalation_level else ""),
            f"{len(gate.decided_by)}/{gate.approvals_required}",
            ", ".join(gate.decided_by) or "—",
            (gate.decision_reason or "")[:80],
            gate.requested_at.strftime("%H:%M:%S"),
            gate.decided_at.strftime("%H:%M:%S") if gate.decided_at else "—",
        )
    return table


def audit(
    workflow_id: str = typer.Argument(..., help="The workflow whose trail to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per event."),
) -> None:
    """Show a workflow's audit trail and its LLM ledger, in order."""
    asyncio.run(_audit(workflow_id, as_json))


async def _audit(workflow_id: str, as_json: bool) -> None:
    try:
        await show_audit(workflow_id, as_json)
    finally:
        await dispose_engines()
