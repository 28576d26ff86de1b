"""``keel budget set TENANT --usd X --period day|month``, ``keel budget show``, ``keel budget
remove``: spend limits per tenant, enforced before every LLM call (activities/llm/budgets.py).

Every change is an audit row under the pseudo workflow id ``budget/TENANT``, so ``keel audit
budget/acme`` answers who raised acme's budget, when, and from what. The operations are
services/budgets.py; this module prints and exits.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any

import typer
from rich.table import Table

from contracts.llm import BudgetState
from infra.database import dispose_engines, session_factory
from infra.settings import get_settings
from services.budgets import (
    Period,
    budget_audit_id,
    change_budget,
    current_budgets,
    remove_tenant_budget,
)
from starters.output import console, fail

budget_app = typer.Typer(
    help="Spend limits per tenant and period, enforced before each LLM call.",
    no_args_is_help=True,
)


def print_budgets(states: list[BudgetState]) -> None:
    table = Table(title="budgets (current UTC period)", title_justify="left")
    table.add_column("tenant")
    table.add_column("period")
    for column in ("limit $", "spent $", "in flight $", "left $", "used"):
        table.add_column(column, justify="right")
    for state in states:
        used = (
            (state.spent_usd + state.reserved_usd) / state.limit_usd * 100
            if state.limit_usd > 0
            else Decimal(100)
        )
        left = state.left_usd
        table.add_row(
            state.tenant,
            state.period,
            f"{state.limit_usd:,.4f}",
            f"{state.spent_usd:,.4f}",
            f"{state.reserved_usd:,.4f}",
            f"[red]{left:,.4f}[/]" if left <= 0 else f"{left:,.4f}",
            f"{used:.1f}%",
        )
    console.print(table)
    if not states:
        console.print(
            "[dim]no budgets: every tenant may spend without limit. Set one with: "
            "keel budget set TENANT --usd 50 --period month[/]"
        )


async def _run(action: Coroutine[Any, Any, None]) -> None:
    try:
        await action
    except OSError as error:
        fail(f"cannot reach keel's database: {error}", "is Postgres up? keel dev status")
    finally:
        await dispose_engines()


@budget_app.command("set")
def set_command(
    tenant: str = typer.Argument(..., help="The tenant (workflows carry one; default 'default')."),
    usd: Decimal = typer.Option(..., "--usd", min=0, help="Limit in dollars for each period."),
    period: Period = typer.Option(Period.MONTH, help="day or month (UTC calendar periods)."),
    actor: str = typer.Option(getpass.getuser, "--by", help="Who decides (for the audit)."),
) -> None:
    """Set TENANT's spend limit per day or month (audited).

    Calls that would cross it are refused, downgraded or paused: each caller's budget policy."""

    async def action() -> None:
        previous = await change_budget(session_factory(), tenant, period.value, usd, actor)
        change = f" (was ${previous:,.4f})" if previous is not None else ""
        console.print(f"budget {tenant}/{period.value} set to ${usd:,.4f}{change}")
        print_budgets(await current_budgets(session_factory(), get_settings(), tenant))
        console.print(
            f"[dim]spend by workflow: keel cost --by workflow --tenant {tenant} · "
            f"changes: keel audit {budget_audit_id(tenant)}[/]"
        )

    asyncio.run(_run(action()))


@budget_app.command("show")
def show_command(
    tenant: str | None = typer.Option(None, help="Only this tenant."),
) -> None:
    """Each budget: its limit, spend this period, reserved by calls in flight, left."""

    async def action() -> None:
        print_budgets(await current_budgets(session_factory(), get_settings(), tenant))

    asyncio.run(_run(action()))


@budget_app.command("remove")
def remove_command(
    tenant: str = typer.Argument(...),
    period: Period = typer.Option(..., help="day or month"),
    actor: str = typer.Option(getpass.getuser, "--by", help="Who decides (for the audit)."),
) -> None:
    """Remove a budget: the tenant's calls are no longer limited for that period."""

    async def action() -> None:
        removed = await remove_tenant_budget(session_factory(), tenant, period.value, actor)
        if not removed:
            fail(f"no {period.value} budget for tenant {tenant!r}", "see: keel budget show")
        console.print(f"budget {tenant}/{period.value} removed")

    asyncio.run(_run(action()))
