"""``keel api``: serve keel's HTTP API (OpenAI-compatible chat, sessions, async jobs)."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import typer

from infra.database import DatabaseRole, explain_role_error, role_server_settings
from infra.settings import KeelSettings, get_settings
from infra.structured_logging import configure_logging
from infra.temporal_client import connect
from starters.output import console, fail


async def _preflight(settings: KeelSettings) -> str | None:
    """Why the API could not serve (Temporal or Postgres unreachable), or None."""
    try:
        await connect(settings)
    except ConnectionError as error:
        return str(error)
    try:
        connection = await asyncpg.connect(
            settings.effective_database_url.replace("postgresql+asyncpg://", "postgresql://"),
            server_settings=role_server_settings(DatabaseRole.APPLICATION, settings),
        )
        await connection.close()
    except (OSError, asyncpg.PostgresError) as error:
        return explain_role_error(error) or f"cannot reach Postgres: {type(error).__name__}"
    return None


def api(
    host: str | None = typer.Option(None, help="Interface to listen on (default: settings)."),
    port: int | None = typer.Option(None, help="Port (default: settings, 8300)."),
) -> None:
    """Serve the HTTP API until Ctrl-C / SIGTERM; point any OpenAI client at it."""
    from api.server import serve  # the web stack loads only for this command

    settings = get_settings()
    changes = {k: v for k, v in (("api_host", host), ("api_port", port)) if v is not None}
    settings = settings.model_copy(update=changes)
    configure_logging()
    base = f"http://{settings.api_host}:{settings.api_port}"
    console.print(f"[bold]keel api[/] on {base}  (OpenAPI: {base}/docs)")
    console.print(
        "[dim]every /v1 request needs a token: "
        "export KEEL_TOKEN=$(keel token create --tenant default --role client)[/]"
    )
    console.print(
        f'[dim]try: curl -N {base}/v1/chat/completions -H "Authorization: Bearer $KEEL_TOKEN" '
        "-H 'Content-Type: application/json' "
        '-d \'{"model": "keel", "stream": true, "messages": '
        '[{"role": "user", "content": "Hello"}]}\'[/]'
    )
    console.print(f'[dim]OpenAI SDK: OpenAI(base_url="{base}/v1", api_key=KEEL_TOKEN)[/]')
    console.print(
        f"[bold]Reviewer console[/]: {base}/console  (sign in with a reviewer token: keel token "
        "create --role reviewer --reviewer NAME)"
    )
    if os.environ.get("KEEL_API_KEY"):
        console.print(
            "[yellow]KEEL_API_KEY is no longer read: the API takes per-tenant tokens "
            "(keel token create); unset it[/]"
        )
    if settings.uses_simulator:
        console.print("[yellow]no provider key set: answers come from keel's simulator[/]")
    problem = asyncio.run(_preflight(settings))
    if problem is not None:
        fail(problem, "start the dev stack with `keel dev up`, or check TEMPORAL_ADDRESS and "
             "DATABASE_URL")  # fmt: skip
    try:
        serve(settings)
    except OSError as error:
        fail(f"cannot listen on {settings.api_host}:{settings.api_port}: {error.strerror}",
             "choose another --port, or stop what uses this one")  # fmt: skip
