"""``keel purge --older-than 90d [--tenant T]``: remove message and prompt content older than the
cutoff, keeping the ledger and the audit metadata (infra/retention.py says what goes)."""

from __future__ import annotations

import asyncio
import getpass
import sys
from datetime import timedelta

import typer
from rich.table import Table

from infra.audit_chain import PURGE_AUDIT_ID
from infra.database import DatabaseRole, DatabaseRoleError, dispose_engines, session_factory
from services.retention import PurgeResult, parse_duration, purge_content
from starters.output import console, fail

EXIT_USAGE = 2


def purge(
    older_than: str = typer.Option(
        ..., "--older-than", help="Age of the content to remove: 90d, 12h, 2w."
    ),
    tenant: str | None = typer.Option(None, help="Only this tenant's content (default: all)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Purge without asking."),
    by: str | None = typer.Option(None, help="Who asked for it (recorded; default: your login)."),
) -> None:
    """Remove message and prompt content older than a cutoff (privacy requests, retention).

    Keeps the LLM ledger (tokens, cost, models) and the audit metadata (who, what, when, hashes):
    audit trails still verify. The purge itself is recorded under `keel audit keel/purge`.
    """
    try:
        age = parse_duration(older_than)
    except ValueError as error:
        fail(f"--older-than: {error}", code=EXIT_USAGE)
    actor = by or getpass.getuser()
    scope = f"tenant {tenant!r}" if tenant else "every tenant"
    preview = asyncio.run(_run(age, older_than, tenant, dry_run=True, actor=actor))
    _print(preview, f"would remove ({scope}, older than {older_than})")
    if dry_run:
        console.print("[dim]dry run: nothing changed · purge: drop --dry-run[/]")
        return
    if preview.total == 0:
        console.print(
            f"nothing to purge (nothing recorded: keel audit {PURGE_AUDIT_ID} lists purges that "
            "removed content)"
        )
        return
    if not yes:
        if not sys.stdin.isatty():
            fail("purging needs a confirmation", "add --yes (or -y) to purge without a prompt",
                 code=EXIT_USAGE)  # fmt: skip
        typer.confirm(f"remove this content of {scope} for good?", abort=True)
    result = asyncio.run(_run(age, older_than, tenant, dry_run=False, actor=actor))
    _print(result, f"removed ({scope}, older than {result.cutoff:%Y-%m-%d %H:%M} UTC)")
    console.print(
        f"[dim]recorded: keel audit {PURGE_AUDIT_ID} · trails still verify: "
        "keel audit verify --all[/]"
    )


async def _run(
    age: timedelta, older_than: str, tenant: str | None, *, dry_run: bool, actor: str
) -> PurgeResult:
    try:
        async with session_factory(purpose=DatabaseRole.RETENTION).begin() as session:
            return await purge_content(
                session,
                age,
                tenant=tenant,
                dry_run=dry_run,
                actor=actor,
                older_than_text=older_than,
            )
    except OSError as error:
        fail(f"cannot reach Postgres: {error}", "check DATABASE_URL, or start `keel dev up`")
    except DatabaseRoleError as error:
        fail(str(error))
    finally:
        await dispose_engines()


def _print(result: PurgeResult, title: str) -> None:
    console.print(title, soft_wrap=True)
    table = Table()
    table.add_column("content")
    table.add_column("rows", justify="right")
    for name, count in result.counts.items():
        table.add_row(name, str(count))
    table.add_row("[bold]total[/]", f"[bold]{result.total}[/]")
    console.print(table)
