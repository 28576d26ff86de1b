"""``keel reviewers``: who may decide approval gates, by role. Every change is audited
(``keel audit keel/reviewers``). A removal takes effect at once (decisions are checked against
this table before they are sent); an addition reaches a waiting gate at its next reminder or
escalation."""

from __future__ import annotations

import getpass

import typer
from rich.table import Table

from activities.approvals import add_reviewer, remove_reviewer, reviewer_roles
from infra.database import session_factory
from infra.settings import get_settings
from starters.database_command import BY_OPTION, run_then_close_database
from starters.output import console, fail

reviewers_app = typer.Typer(help="Who may approve, by role.", no_args_is_help=True)


def _actor(by: str | None) -> str:
    return by or getpass.getuser()


async def _add(name: str, roles: list[str], by: str) -> None:
    async with session_factory().begin() as session:
        added = [role for role in roles if await add_reviewer(session, name, role, by)]
    kept = sorted(set(roles) - set(added))
    if added:
        console.print(f"{name} may now decide gates for role {', '.join(added)}")
    if kept:
        console.print(f"[dim]{name} already held role {', '.join(kept)}[/]")


async def _remove(name: str, role: str | None, by: str) -> None:
    async with session_factory().begin() as session:
        removed = await remove_reviewer(session, name, role, by)
    if not removed:
        configured = get_settings().reviewers.get(name)
        fail(
            f"{name} holds no role {role!r} in the reviewers table"
            if role
            else f"{name} is not in the reviewers table",
            f"{name} is configured in KEEL_REVIEWERS ({', '.join(configured)}): change it there"
            if configured
            else "see who is: keel reviewers list",
        )
    console.print(f"{name} no longer holds role {', '.join(removed)}")


async def _list() -> None:
    configured = get_settings().reviewers
    async with session_factory()() as session:
        everyone = await reviewer_roles(session, configured)
    if not everyone:
        console.print("no reviewers yet: keel reviewers add NAME --role ROLE")
        return
    table = Table(title="reviewers", title_justify="left")
    for column in ("name", "roles", "from"):
        table.add_column(column)
    for name, roles in everyone.items():
        source = "config + table" if name in configured else "table"
        if name in configured and set(roles) == set(configured[name]):
            source = "config (KEEL_REVIEWERS)"
        table.add_row(name, ", ".join(roles), source)
    console.print(table)


@reviewers_app.command("add")
def add(
    name: str = typer.Argument(..., help="The reviewer's name, as they pass it to --reviewer."),
    role: list[str] = typer.Option(..., "--role", help="A role they may decide for (repeatable)."),
    by: str | None = BY_OPTION,
) -> None:
    """Let NAME decide gates that ask for ROLE."""
    run_then_close_database(_add(name, role, _actor(by)))


@reviewers_app.command("remove")
def remove(
    name: str = typer.Argument(...),
    role: str | None = typer.Option(None, "--role", help="Only this role (default: all)."),
    by: str | None = BY_OPTION,
) -> None:
    """Withdraw a role (or every role) from NAME."""
    run_then_close_database(_remove(name, role, _actor(by)))


@reviewers_app.command("list")
def list_reviewers() -> None:
    """Every reviewer and role: the reviewers table plus KEEL_REVIEWERS."""
    run_then_close_database(_list())
