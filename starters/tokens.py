"""``keel token``: bearer tokens for the HTTP API, each scoped to one tenant and one role.

``create`` prints the token alone on stdout (so ``KEEL_TOKEN=$(keel token create …)`` works) and
everything else on stderr; it is shown once and stored only as a hash. Rotate by creating a new
token, moving clients to it, then revoking the old one. Every create and revoke is audited
(``keel audit keel/tokens``).
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

import typer
from rich.markup import escape
from rich.table import Table

from infra.database import session_factory
from infra.settings import get_settings
from services.api_tokens import (
    TOKENS_AUDIT_ID,
    TokenNotFound,
    TokenRole,
    TokenSpecError,
    TokenState,
    create_token,
    list_tokens,
    parse_expiry,
    revoke_token,
    token_state,
)
from starters.approvals import age
from starters.database_command import BY_OPTION, run_then_close_database
from starters.output import console, error_console, fail

token_app = typer.Typer(
    help="API bearer tokens, scoped to a tenant and a role (client, reviewer, admin).",
    no_args_is_help=True,
)


async def _create(
    tenant: str,
    role: TokenRole,
    reviewer: str | None,
    expires: str,
    description: str | None,
    by: str,
) -> None:
    settings = get_settings()
    try:
        async with session_factory().begin() as session:
            issued = await create_token(
                session,
                tenant=tenant,
                role=role,
                reviewer=reviewer,
                description=description,
                created_by=by,
                expires_in=parse_expiry(expires),
                configured_reviewers=settings.reviewers,
            )
    except TokenSpecError as error:
        fail(str(error))
    print(issued.secret, flush=True)  # stdout: the token alone
    acting = f", deciding as reviewer {issued.reviewer}" if issued.reviewer else ""
    until = (
        f"expires {issued.expires_at:%Y-%m-%d %H:%M} UTC"
        if issued.expires_at
        else "does not expire"
    )
    base = f"http://{settings.api_host}:{settings.api_port}"
    error_console.print(
        f"created {issued.id}: tenant {escape(issued.tenant)}, role {issued.role.value}"
        f"{escape(acting)}; {until}",
        highlight=False,
    )
    error_console.print(
        "[yellow]the token above is shown once and stored only as a hash: keep it in a secret "
        "store now[/]"
    )
    error_console.print(
        f'[dim]use: curl -H "Authorization: Bearer $KEEL_TOKEN" {base}/v1/… · '
        f'OpenAI(base_url="{base}/v1", api_key=KEEL_TOKEN) · '
        f"revoke: keel token revoke {issued.id}[/]",
        soft_wrap=True,
    )


async def _list(tenant: str | None) -> None:
    async with session_factory()() as session:
        tokens = await list_tokens(session, tenant)
    if not tokens:
        console.print(
            "no API tokens"
            + (f" for tenant {tenant}" if tenant else "")
            + ": keel token create --tenant T --role client"
        )
        return
    now = datetime.now(UTC)
    table = Table(title=f"API tokens ({len(tokens)})", title_justify="left")
    for column in ("id", "tenant", "role", "reviewer", "state", "created", "expires", "last used"):
        table.add_column(column)
    table.add_column("description")
    for token in tokens:
        state = token_state(token, now)
        style = {
            TokenState.ACTIVE: "green",
            TokenState.REVOKED: "red",
            TokenState.EXPIRED: "yellow",
        }[state]
        table.add_row(
            # The id is the token's public prefix (keel_tok_…_): enough to recognise it.
            token.id,
            escape(token.tenant),
            token.role,
            escape(token.reviewer or ""),
            f"[{style}]{state}[/]",
            f"{token.created_at:%Y-%m-%d %H:%M} by {escape(token.created_by or '?')}",
            f"{token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never",
            f"{age(token.last_used_at)} ago" if token.last_used_at else "never",
            escape(token.description or ""),
        )
    console.print(table)
    console.print(f"[dim]revoke: keel token revoke ID · history: keel audit {TOKENS_AUDIT_ID}[/]")


async def _revoke(token_id: str, by: str) -> None:
    try:
        async with session_factory().begin() as session:
            token, revoked_now = await revoke_token(session, token_id, by)
    except TokenNotFound:
        fail(f"no API token {token_id!r}", "see the tokens: keel token list")
    assert token.revoked_at is not None
    if not revoked_now:
        console.print(f"{token.id} was already revoked ({token.revoked_at:%Y-%m-%d %H:%M} UTC)")
        return
    console.print(
        f"{token.id} (tenant {escape(token.tenant)}, role {token.role}) is revoked: "
        "requests with it now get 401",
        highlight=False,
    )


@token_app.command("create")
def create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the token acts for."),
    role: TokenRole = typer.Option(..., "--role", help="client | reviewer | admin."),
    reviewer: str | None = typer.Option(
        None, "--reviewer", help="The reviewer it decides as (required for --role reviewer)."
    ),
    expires: str = typer.Option("never", "--expires", help="e.g. 30d, 12h, 2w, or never."),
    description: str | None = typer.Option(None, "--description", help="What it is for."),
    by: str | None = BY_OPTION,
) -> None:
    """Create a token; it is printed once (stdout) and stored only as a hash."""
    run_then_close_database(
        _create(tenant, role, reviewer, expires, description, by or getpass.getuser())
    )


@token_app.command("list")
def list_command(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's tokens."),
) -> None:
    """Every token: id, tenant, role, state, expiry, last use. Never the secrets."""
    run_then_close_database(_list(tenant))


@token_app.command("revoke")
def revoke(
    token_id: str = typer.Argument(..., help="The token's id (tok_…), from `keel token list`."),
    by: str | None = BY_OPTION,
) -> None:
    """Revoke a token at once: its next request gets 401."""
    run_then_close_database(_revoke(token_id, by or getpass.getuser()))
