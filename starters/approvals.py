"""Reviewers' commands: the review queue (``keel approvals``), the (draft, final) export, and the
decisions themselves (``keel approve`` / ``reject`` / ``edit``), sent as workflow Updates.

A decision the workflow refuses exits non-zero with its reason, and is recorded in the audit
trail here (a refused Update never reaches the workflow's history). Exit codes:
1 other error, 3 no such workflow, 4 not waiting for approval, 5 reviewer not authorized,
6 gate already decided, 7 invalid decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.table import Table
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.approval_models import (
    ApproveDecision,
    Decision,
    DecisionReceipt,
    EditDecision,
    GateStatus,
    RefusalType,
    RejectDecision,
)
from activities.approvals import decided_by_humans, gates_of, pending_gates, reviewer_roles
from activities.audit_trail import AuditEventInput, write_audit_event
from infra.database import dispose_engines, session_factory
from infra.search_attributes import KEEL_TENANT
from infra.settings import get_settings
from infra.tables import Approval
from infra.temporal_client import connect
from starters.output import console, error_console, fail
from starters.review import approve_command, wait_for_review

EXIT_NO_SUCH_WORKFLOW = 3
EXIT_CODES = {
    RefusalType.NOT_WAITING.value: 4,
    RefusalType.NOT_AUTHORIZED.value: 5,
    RefusalType.ALREADY_DECIDED.value: 6,
    RefusalType.INVALID.value: 7,
}
DECISION_TIMEOUT_SECONDS = 30.0

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
    _run(_list(tenant, as_json))


def _pair(gate: Approval) -> dict[str, object]:
    return {
        "workflow_id": gate.workflow_id,
        "gate": gate.gate,
        "tenant": gate.tenant,
        "subject": gate.subject,
        "decision": gate.status,
        "draft": gate.draft,
        "final": gate.final,
        "changed": gate.final is not None and gate.final != gate.draft,
        "reason_requested": gate.reason_requested,
        "reviewers": gate.decided_by,
        "reviewer_note": gate.decision_reason,
        "decided_at": gate.decided_at.isoformat() if gate.decided_at else None,
    }


async def _export(output: Path | None, changed_only: bool) -> None:
    async with session_factory()() as session:
        gates = await decided_by_humans(session, changed_only)
    lines = [json.dumps(_pair(gate), ensure_ascii=False) + "\n" for gate in gates]
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
    _run(_export(output, changed_only))


# --- Decisions ---------------------------------------------------------------------------


def _update_id(action: str, gate: str, decision: Decision) -> str:
    """Same reviewer, same gate, same decision: the same Update id, so Temporal answers a
    retried command with the first result instead of applying it again."""
    key = f"{action}/{gate}/{decision.reviewer}"
    if isinstance(decision, EditDecision):
        key += "/" + hashlib.sha256(decision.text.encode()).hexdigest()[:16]
    return key


async def _describe(handle: WorkflowHandle) -> WorkflowExecutionDescription:
    try:
        return await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            fail(
                f"no such workflow: {handle.id!r}",
                "pending reviews and their workflow ids: keel approvals",
                code=EXIT_NO_SUCH_WORKFLOW,
            )
        raise


async def _record_refusal(
    description: WorkflowExecutionDescription,
    gate: str | None,
    action: str,
    decision: Decision,
    refusal_type: str,
    message: str,
) -> None:
    tenant = description.typed_search_attributes.get(KEEL_TENANT) or "default"
    async with session_factory().begin() as session:
        await write_audit_event(
            session,
            AuditEventInput(
                event_key=f"{description.id}/refused/{uuid.uuid4()}",
                workflow_id=description.id,
                run_id=description.run_id,
                tenant=tenant,
                event_type="approval.refused",
                actor=decision.reviewer,
                payload={
                    "gate": gate,
                    "action": action,
                    "channel": "update",
                    "refusal": refusal_type,
                    "message": message,
                },
            ),
        )


async def _refuse(
    description: WorkflowExecutionDescription,
    gate: str | None,
    action: str,
    decision: Decision,
    refusal_type: str,
    message: str,
) -> NoReturn:
    await _record_refusal(description, gate, action, decision, refusal_type, message)
    hint = f"see the run: keel show {description.id}"
    if refusal_type == RefusalType.NOT_AUTHORIZED.value:
        async with session_factory()() as session:
            known = await reviewer_roles(session, get_settings().reviewers)
        held = known.get(decision.reviewer)
        hint = (
            f"{decision.reviewer} holds role {', '.join(held)}"
            if held
            else f"{decision.reviewer!r} is not a known reviewer (keel reviewers list)"
        )
    fail(message, hint, code=EXIT_CODES.get(refusal_type, 1))


async def _decide(
    workflow_id: str, action: str, decision: Decision, wait: bool, timeout: float
) -> None:
    try:
        client = await connect(get_settings())
    except ConnectionError as error:
        fail(str(error))
    handle = client.get_workflow_handle(workflow_id)
    description = await _describe(handle)
    async with session_factory()() as session:
        gates = [g for g in await gates_of(session, workflow_id) if g.run_id == description.run_id]
    open_gate = next((g for g in reversed(gates) if g.status == GateStatus.PENDING.value), None)

    if description.status != WorkflowExecutionStatus.RUNNING:
        last = gates[-1] if gates else None
        if last is not None and action == "approve" and decision.reviewer in last.decided_by:
            console.print(
                f"already recorded: {decision.reviewer} approved gate {last.gate!r} "
                f"({last.status}); the workflow has finished"
            )
            return
        status = (
            description.status.name.lower().replace("_", " ") if description.status else "closed"
        )
        await _refuse(
            description,
            last.gate if last else None,
            action,
            decision,
            RefusalType.NOT_WAITING.value,
            f"workflow {workflow_id} is not waiting for approval: it is {status}",
        )

    # The gate the reviewer can have seen: the open one, else the last one (a decision for it is
    # then refused as already decided, or answered as a repeat, instead of "no gate open").
    target = open_gate or (gates[-1] if gates else None)
    gate_name = target.gate if target is not None else None
    decision = decision.model_copy(update={"gate": gate_name})
    update_id = _update_id(action, gate_name, decision) if gate_name else str(uuid.uuid4())
    try:
        receipt = await asyncio.wait_for(
            handle.execute_update(action, decision, id=update_id, result_type=DecisionReceipt),
            timeout=DECISION_TIMEOUT_SECONDS,
        )
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type in EXIT_CODES:
            await _refuse(description, gate_name, action, decision, cause.type, cause.message)
        fail(f"the decision failed: {cause or error}", f"see the run: keel show {workflow_id}")
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            fail(
                f"workflow {workflow_id} finished before the decision arrived",
                f"see how it ended: keel show {workflow_id}",
                code=EXIT_CODES[RefusalType.NOT_WAITING.value],
            )
        raise
    except TimeoutError:
        fail(
            f"no worker answered within {DECISION_TIMEOUT_SECONDS:g}s; the decision was not "
            "confirmed",
            "is a worker running (keel worker)? then send the same command again: it is idempotent",
        )
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


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    async def main() -> None:
        try:
            await coroutine
        finally:
            await dispose_engines()

    asyncio.run(main())


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
    _run(
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
    _run(
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
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        fail(f"{file} is empty")
    _run(
        _decide(
            workflow_id,
            "edit",
            EditDecision(reviewer=reviewer, text=text, comment=comment),
            wait,
            timeout,
        )
    )
