"""``keel reviewers``: who may decide approval gates, by role. Every change is audited
(``keel audit keel/reviewers``); a waiting gate sees it at its next reminder or escalation."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Coroutine
from typing import Any

import typer
from rich.table import Table

from activities.approvals import add_reviewer, remove_reviewer, reviewer_roles
from infra.database import dispose_engines, session_factory
from infra.settings import get_settings
from starters.output import console, fail

reviewers_app = typer.Typer(help="Who may approve, by role.", no_args_is_help=True)

_BY = typer.Option(None, "--by", help="Who makes the change (default: your login name).")


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    async def main() -> None:
        try:
            await coroutine
        finally:
            await dispose_engines()

    asyncio.run(main())


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
    by: str | None = _BY,
) -> None:
    """Let NAME decide gates that ask for ROLE."""
    _run(_add(name, role, _actor(by)))


@reviewers_app.command("remove")
def remove(
    name: str = typer.Argument(...),
    role: str | None = typer.Option(None, "--role", help="Only this role (default: all)."),
    by: str | None = _BY,
) -> None:
    """Withdraw a role (or every role) from NAME."""
    _run(_remove(name, role, _actor(by)))


@reviewers_app.command("list")
def list_reviewers() -> None:
    """Every reviewer and role: the reviewers table plus KEEL_REVIEWERS."""
    _run(_list())
