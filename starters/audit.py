"""``keel audit WORKFLOW_ID``: the trail of one workflow, in order, with its LLM ledger and the
state of its approval gates; ``keel audit verify``: check trails' hash chains."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from typing import Any

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from typer.core import TyperGroup

from activities.approvals import gates_of
from activities.audit_trail import read_audit_trail
from infra.audit_chain import ChainReport, recorded_purges, trail_ids, verify_trail
from infra.database import DatabaseRoleError, dispose_engines, session_factory
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
    for column in ("at", "event", "actor"):
        trail.add_column(column, no_wrap=True)
    # Folded, never cut: a reason often ends with the command that fixes it.
    trail.add_column("details", overflow="fold")
    for event in events:
        trail.add_row(
            event.occurred_at.strftime("%H:%M:%S.%f")[:-3],
            event.event_type,
            event.actor,
            Text(json.dumps(event.payload, default=str)),
        )
    console.print(trail)
    commands = commands_in(event.payload for event in events)
    if commands:
        # Whole, one per line: a command folded across table cells cannot be copied.
        console.print("[bold]commands named in this trail[/]")
        for command in commands:
            console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
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


# A keel command inside a reason: quoted in backticks, or ending a sentence after "with: " or
# "run: " ("… Raise it with: keel budget set acme --usd <amount> --period day").
_QUOTED_COMMAND = re.compile(r"`(keel [^`\s]+ [^`]+)`")
_TRAILING_COMMAND = re.compile(r"(?:with|run|try): (keel [^`;\n]+?)(?=\.\s|;|\n|\.?$)")


def commands_in(payloads: Iterable[object]) -> list[str]:
    """The keel commands the payloads' texts name, in order of first mention, each once."""
    found: dict[str, None] = {}

    def walk(value: object) -> None:
        if isinstance(value, str):
            for pattern in (_QUOTED_COMMAND, _TRAILING_COMMAND):
                found.update((match.group(1).strip(), None) for match in pattern.finditer(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for payload in payloads:
        walk(payload)
    return list(found)


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


class _ShowByDefault(TyperGroup):
    """``keel audit WORKFLOW_ID`` (the first form, used in scripts) still shows the trail:
    a first argument that is not a subcommand is a workflow id for ``show``."""

    # ctx is typer's own (vendored) click Context: passed through untouched.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        first = next((arg for arg in args if not arg.startswith("-")), None)
        if first is not None and first not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


audit_app = typer.Typer(
    cls=_ShowByDefault,
    no_args_is_help=True,
    help="Show a workflow's audit trail (keel audit WORKFLOW_ID) or verify trails' hash chains "
    "(keel audit verify).",
)


@audit_app.command("show")
def audit(
    workflow_id: str = typer.Argument(..., help="The workflow whose trail to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per event."),
) -> None:
    """Show a workflow's audit trail and its LLM ledger, in order."""
    asyncio.run(_audit(workflow_id, as_json))


async def _audit(workflow_id: str, as_json: bool) -> None:
    try:
        await show_audit(workflow_id, as_json)
    except DatabaseRoleError as error:
        fail(str(error))
    finally:
        await dispose_engines()


EXIT_TAMPERED = 3


@audit_app.command("verify")
def verify(
    workflow_ids: list[str] = typer.Argument(None, help="Workflows whose trails to verify."),
    all_trails: bool = typer.Option(False, "--all", help="Verify every trail in the database."),
    tenant: str | None = typer.Option(None, help="Verify every trail of this tenant."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per trail."),
) -> None:
    """Check audit trails' hash chains: a changed, inserted or deleted row is named by its seq.

    Prints each trail's head (seq and hash): kept somewhere the database's administrators cannot
    write, it proves later that the trail up to it was not rewritten. Exit code 3 when a trail
    fails.
    """
    if not workflow_ids and not all_trails and tenant is None:
        fail(
            "say which trails to verify",
            "keel audit verify WORKFLOW_ID [WORKFLOW_ID …], or --tenant TENANT, or --all",
            code=2,
        )
    if workflow_ids and (all_trails or tenant is not None):
        fail("give workflow ids or --all/--tenant, not both", code=2)
    reports = asyncio.run(_verify(workflow_ids or [], all_trails, tenant))
    if not reports:
        selection = f"tenant {tenant!r}" if tenant is not None else "any workflow (--all)"
        fail(
            f"no audit trail for {', '.join(map(repr, workflow_ids or [])) or selection}",
            "check the id (keel prints it when a workflow starts), or that DATABASE_URL points "
            "at keel's database",
        )
    for report in reports:
        _print_report(report, as_json)
    failed = [report for report in reports if not report.ok]
    if len(reports) > 1 and not as_json:
        console.print(f"{len(reports)} trails verified, {len(failed)} failed")
    if failed:
        raise typer.Exit(EXIT_TAMPERED)


async def _verify(
    workflow_ids: list[str], all_trails: bool, tenant: str | None
) -> list[ChainReport]:
    try:
        async with session_factory()() as session:
            ids = workflow_ids or await trail_ids(session, tenant)
            purges = await recorded_purges(session)
            reports = [await verify_trail(session, workflow_id, purges) for workflow_id in ids]
    except DatabaseRoleError as error:
        fail(str(error))
    finally:
        await dispose_engines()
    # A workflow id with neither rows nor a head has no trail at all: not a verified one.
    return [report for report in reports if report.rows or report.head_seq is not None]


def _print_report(report: ChainReport, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "workflow_id": report.workflow_id,
                    "ok": report.ok,
                    "rows": report.rows,
                    "purged_rows": report.purged_rows,
                    "head_seq": report.head_seq,
                    "head_hash": report.head_hash,
                    "problem": None
                    if report.problem is None
                    else {
                        "seq": report.problem.seq,
                        "kind": str(report.problem.kind),
                        "detail": report.problem.detail,
                    },
                }
            )
        )
        return
    purged = f", {report.purged_rows} purged" if report.purged_rows else ""
    if report.problem is None:
        console.print(
            f"[green]OK[/]      {report.workflow_id}  {report.rows} rows{purged} · "
            f"head seq {report.head_seq} {report.head_hash}",
            soft_wrap=True,
        )
        return
    console.print(
        f"[bold red]FAILED[/]  {report.workflow_id}  seq {report.problem.seq} "
        f"{report.problem.kind}: {report.problem.detail}",
        soft_wrap=True,
    )
