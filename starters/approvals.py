"""Reviewers' commands: the review queue (``keel approvals``), the (draft, final) export, and the
decisions themselves (``keel approve`` / ``reject`` / ``edit``), sent as workflow Updates.

Decisions go through infra/approval_client.py (shared with the HTTP API): the reviewer is
checked against the current reviewers table before anything is sent, and a refused decision
exits non-zero with its reason and is recorded in the audit trail. Exit codes:
1 other error, 3 no such workflow, 4 not waiting for approval, 5 reviewer not authorized,
6 gate already decided, 7 invalid decision.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table
from temporalio.service import RPCError

from activities.approvals import decided_by_humans, pending_gates, reviewed_pair
from contracts.approvals import (
    ApproveDecision,
    Decision,
    EditDecision,
    GateStatus,
    RefusalType,
    RejectDecision,
)
from infra.database import session_factory
from infra.settings import get_settings
from infra.temporal_client import connect
from services.approval_client import DecisionProblem, DecisionRefused, DecisionSender
from services.reviews import running_reviews
from starters.database_command import run_then_close_database
from starters.output import console, error_console, fail
from starters.review import approve_command, wait_for_review

EXIT_NO_SUCH_WORKFLOW = 3
EXIT_CODES = {
    DecisionProblem.NO_SUCH_WORKFLOW: EXIT_NO_SUCH_WORKFLOW,
    RefusalType.NOT_WAITING.value: 4,
    DecisionProblem.FINISHED_BEFORE: 4,
    RefusalType.NOT_AUTHORIZED.value: 5,
    RefusalType.ALREADY_DECIDED.value: 6,
    RefusalType.INVALID.value: 7,
}

approvals_app = typer.Typer(
    help="The review queue: pending approval gates, oldest first (and `export`).",
    invoke_without_command=True,
)


# --- The queue ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def age(since: datetime) -> str:
    return _duration((datetime.now(UTC) - since).total_seconds())


def due(deadline: datetime | None) -> str:
    if deadline is None:
        return "—"
    left = (deadline - datetime.now(UTC)).total_seconds()
    return "due now" if left <= 0 else f"in {_duration(left)}"


_DRAFTING_SHOWN = 5


async def _running_reviews(tenant: str | None) -> list[str]:
    """Running document reviews; empty when Temporal cannot be reached (the queue itself comes
    from Postgres and stays useful without it)."""
    try:
        return await running_reviews(await connect(get_settings()), tenant)
    except (ConnectionError, RPCError):
        return []


async def _list(tenant: str | None, as_json: bool) -> None:
    async with session_factory()() as session:
        queue = await pending_gates(session, tenant)
    if as_json:
        for gate in queue:
            print(
                json.dumps(
                    {
                        "workflow_id": gate.workflow_id,
                        "gate": gate.gate,
                        "tenant": gate.tenant,
                        "subject": gate.subject,
                        "reason": gate.reason_requested,
                        "role": gate.required_role,
                        "approvals": len(gate.decided_by),
                        "approvals_required": gate.approvals_required,
                        "requested_at": gate.requested_at.isoformat(),
                        "deadline_at": gate.deadline_at.isoformat() if gate.deadline_at else None,
                        "approve": approve_command(gate.workflow_id),
                    }
                )
            )
        return
    if not queue:
        console.print("no reviews waiting" + (f" for tenant {tenant}" if tenant else ""))
        drafting = await _running_reviews(tenant)
        if drafting:
            # Just after `keel review start` the models are still drafting: the gate (if policy
            # asks for one) appears when they are done.
            console.print(
                f"{len(drafting)} document review(s) still running, not at a gate yet "
                "(drafting or checking); a gate appears here when one needs a person:"
            )
            for workflow_id in drafting[:_DRAFTING_SHOWN]:
                console.print(f"  [cyan]keel show {workflow_id}[/]")
            if len(drafting) > _DRAFTING_SHOWN:
                console.print(f"  … and {len(drafting) - _DRAFTING_SHOWN} more")
        return
    table = Table(title=f"pending approvals ({len(queue)}), oldest first", title_justify="left")
    for column in ("age", "gate", "workflow", "why", "role", "approvals", "deadline"):
        table.add_column(column)
    table.add_column("approve with", style="cyan", no_wrap=True)
    for gate in queue:
        table.add_row(
            age(gate.requested_at),
            gate.gate,
            gate.workflow_id,
            gate.reason_requested or "",
            gate.required_role
            + (f" (level {gate.escalation_level})" if gate.escalation_level else ""),
            f"{len(gate.decided_by)}/{gate.approvals_required}",
            due(gate.deadline_at),
            approve_command(gate.workflow_id),
        )
    console.print(table)
    console.print(
        "[dim]look first: keel show WORKFLOW_ID · reject: keel reject WORKFLOW_ID "
        "--reviewer NAME --reason TEXT[/]"
    )


@approvals_app.callback()
def approvals(
    ctx: typer.Context,
    tenant: str | None = typer.Option(None, help="Only this tenant's gates."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per gate."),
) -> None:
    """Pending approval gates, oldest first: age, gate, workflow and the approve command."""
    if ctx.invoked_subcommand is not None:
        return
    run_then_close_database(_list(tenant, as_json))


async def _export(output: Path | None, changed_only: bool) -> None:
    async with session_factory()() as session:
        gates = await decided_by_humans(session, changed_only)
    lines = [json.dumps(reviewed_pair(gate), ensure_ascii=False) + "\n" for gate in gates]
    if output is None:
        sys.stdout.writelines(lines)
        return
    await asyncio.to_thread(output.write_text, "".join(lines), encoding="utf-8")
    error_console.print(f"wrote {len(lines)} reviewed pairs to {output}")


@approvals_app.command("export")
def export(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="JSONL file (default: stdout)."
    ),
    changed_only: bool = typer.Option(
        False, "--changed-only", help="Only gates where the reviewer changed the draft."
    ),
) -> None:
    """Write each gate a person decided as JSONL: draft, final (their edit, or null when
    rejected), who, and why: ready for evaluation sets or fine-tuning."""
    run_then_close_database(_export(output, changed_only))


# --- Decisions ---------------------------------------------------------------------------


async def _decide(
    workflow_id: str, action: str, decision: Decision, wait: bool, timeout: float
) -> None:
    settings = get_settings()
    try:
        client = await connect(settings)
    except ConnectionError as error:
        fail(str(error))
    sender = DecisionSender(client, settings.reviewers, via="cli")
    try:
        sent = await sender.send(workflow_id, action, decision)
    except DecisionRefused as refused:
        fail(refused.message, refused.hint, code=EXIT_CODES.get(refused.kind, 1))
    receipt = sent.receipt
    if receipt is None:
        console.print(sent.message)
        return
    style = (
        "green"
        if receipt.status in (GateStatus.APPROVED, GateStatus.EDITED)
        else ("red" if receipt.status == GateStatus.REJECTED else "yellow")
    )
    console.print(f"[{style}]{receipt.message}[/]", highlight=False)
    if not wait:
        console.print(f"[dim]follow: keel show {workflow_id} · trail: keel audit {workflow_id}[/]")
        return
    if receipt.status != GateStatus.PENDING:
        await wait_for_review(client, workflow_id, timeout, after_gate=receipt.gate)


_WAIT = typer.Option(
    False, "--wait", help="Then wait until the workflow finishes or asks for approval again."
)
_TIMEOUT = typer.Option(300, help="Seconds --wait waits at most.")


def approve(
    workflow_id: str = typer.Argument(..., help="The workflow waiting for approval."),
    reviewer: str = typer.Option(..., "--reviewer", "-r", help="Who approves."),
    comment: str | None = typer.Option(None, help="A note for the trail."),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
) -> None:
    """Approve the draft a workflow's open gate waits on."""
    run_then_close_database(
        _decide(
            workflow_id,
            "approve",
            ApproveDecision(reviewer=reviewer, comment=comment),
            wait,
            timeout,
        )
    )


def reject(
    workflow_id: str = typer.Argument(..., help="The workflow waiting for approval."),
    reviewer: str = typer.Option(..., "--reviewer", "-r", help="Who rejects."),
    reason: str = typer.Option(..., help="Why; a revision sees it in its prompt."),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
) -> None:
    """Reject the draft, with the reason (the workflow may revise it once and ask again)."""
    if not reason.strip():
        fail("a rejection needs a reason", "say what must change: --reason TEXT")
    run_then_close_database(
        _decide(
            workflow_id, "reject", RejectDecision(reviewer=reviewer, reason=reason), wait, timeout
        )
    )


def edit(
    workflow_id: str = typer.Argument(..., help="The workflow waiting for approval."),
    reviewer: str = typer.Option(..., "--reviewer", "-r", help="Who edits and approves."),
    file: Path = typer.Option(
        ..., "--file", "-f", exists=True, dir_okay=False, help="The changed draft."
    ),
    comment: str | None = typer.Option(None, help="A note for the trail."),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
) -> None:
    """Approve a changed draft: the text in FILE is what goes ahead (and what export pairs)."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(
            f"{file} is not UTF-8 text",
            "the changed draft must be a plain-text file; nothing was sent",
        )
    if not text.strip():
        fail(f"{file} is empty", "put the edited draft in the file; nothing was sent")
    run_then_close_database(
        _decide(
            workflow_id,
            "edit",
            EditDecision(reviewer=reviewer, text=text, comment=comment),
            wait,
            timeout,
        )
    )
