"""``keel cost [--by model|tenant|workflow|day|route] [--since DATE]``: spend from the ledger.

One row per group, totals that are the sum of the rows (the same numbers, added up). Every
attempt is a ledger row, so a retried call counts each attempt it was billed for (a stream cut
midway is billed for the tokens that arrived), a cached answer counts as a call that cost $0,
and a streamed call is metered from the usage its stream reported, like any other.
The report is services/costs.py; this module prints it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal

import typer
from rich.table import Table

from infra.database import dispose_engines, session_factory
from services.costs import CostGrouping, CostReport, cost_report, start_of_month
from starters.output import console, fail


def _money(value: Decimal) -> str:
    return f"{value:,.6f}"


def print_cost_report(report: CostReport) -> None:
    window = f"since {report.since:%Y-%m-%d %H:%M} UTC" + (
        f" until {report.until:%Y-%m-%d %H:%M} UTC" if report.until else ""
    )
    scope = f" · tenant {report.tenant}" if report.tenant else ""
    table = Table(title=f"LLM spend by {report.grouping} · {window}{scope}", title_justify="left")
    table.add_column(str(report.grouping))
    for column in ("attempts", "ok", "cached", "failed", "refused", "in tokens", "out tokens"):
        table.add_column(column, justify="right")
    table.add_column("cost $", justify="right")
    total = report.total
    for row in [*report.rows, total]:
        table.add_row(
            f"[bold]{row.key}[/]" if row is total else row.key,
            str(row.attempts),
            str(row.ok),
            str(row.cached),
            str(row.failed),
            str(row.refused),
            f"{row.input_tokens:,}",
            f"{row.output_tokens:,}",
            _money(row.cost_usd),
            end_section=row is report.rows[-1] if report.rows else False,
        )
    console.print(table)
    if total.unpriced:
        console.print(
            f"[yellow]{total.unpriced} attempt(s) used models genai-prices does not know: their "
            "tokens are counted, their cost is unknown (not guessed)[/]"
        )
    if total.in_flight:
        console.print(f"[dim]{total.in_flight} attempt(s) still in flight: not billed yet[/]")
    saving = report.batch_saving
    if saving is not None:
        share = saving.saved_usd / saving.live_cost_usd if saving.live_cost_usd else Decimal(0)
        console.print(
            f"provider batches: {saving.lines} line(s) cost ${_money(saving.batch_cost_usd)} "
            f"against ${_money(saving.live_cost_usd)} live for the same tokens — saved "
            f"${_money(saving.saved_usd)} ({share:.0%})",
            highlight=False,
        )
    if not report.rows:
        console.print("[dim]no LLM calls in this window; try --since 2020-01-01[/]")


def print_cost_json(report: CostReport) -> None:
    for row in [*report.rows, report.total]:
        print(json.dumps({"by": str(report.grouping), **asdict(row)}, default=str))


async def show_cost(
    grouping: CostGrouping = CostGrouping.MODEL,
    since: datetime | None = None,
    tenant: str | None = None,
) -> CostReport:
    """Print the cost table (the demo calls this; engines are left open for the caller)."""
    report = await cost_report(
        session_factory(), grouping, since or start_of_month(), tenant=tenant
    )
    print_cost_report(report)
    return report


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _cost(
    grouping: CostGrouping,
    since: datetime,
    until: datetime | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    try:
        report = await cost_report(session_factory(), grouping, since, until, tenant)
    except OSError as error:
        fail(f"cannot read the ledger: {error}", "is Postgres up? keel dev status")
    finally:
        await dispose_engines()
    if as_json:
        print_cost_json(report)
    else:
        print_cost_report(report)


DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def cost(
    by: CostGrouping = typer.Option(CostGrouping.MODEL, "--by", help="Group rows by this."),
    since: datetime | None = typer.Option(
        None, formats=DATE_FORMATS, help="From this UTC date/time (default: start of the month)."
    ),
    until: datetime | None = typer.Option(None, formats=DATE_FORMATS, help="Before this."),
    tenant: str | None = typer.Option(None, help="Only this tenant's calls."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per row, then the total."),
) -> None:
    """LLM spend from the ledger, by model, tenant, workflow, day or route.

    One row per group (attempts, tokens, dollars); the total is the sum of the rows. Retried
    and cut-off calls count every attempt billed; cached answers count at $0."""
    start = _utc(since) or start_of_month()
    asyncio.run(_cost(by, start, _utc(until), tenant, as_json))
