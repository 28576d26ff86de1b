"""``keel dev up | down | status``: the zero-setup local stack (registered by the keel CLI)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from devstack import stack
from devstack.errors import DevStackError
from infra.settings import get_settings
from infra.structured_logging import configure_logging

dev_app = typer.Typer(
    help="Run keel's local stack with zero setup: Temporal dev server (with Web UI), embedded "
    "Postgres, the LLM simulator (when no provider key is set) and one worker per task queue. "
    "State lives under keel's home: KEEL_HOME, else .keel/ of the checkout keel is installed from "
    "(`keel dev status` prints it).",
    no_args_is_help=True,
)

console = Console()
err_console = Console(stderr=True)


@dev_app.callback()
def _configure() -> None:
    configure_logging(get_settings())


def _fail(error: DevStackError) -> typer.Exit:
    err_console.print(f"[bold red]✗ {escape(error.problem)}[/]")
    if error.hint:
        err_console.print(f"[yellow]What to do:[/] {escape(error.hint)}")
    if error.log_tail:
        err_console.print("[dim]Last lines of the log:[/]")
        err_console.print(escape(error.log_tail), highlight=False)
    return typer.Exit(code=1)


@dev_app.command()
def up(
    sim_profile: Annotated[
        str | None,
        typer.Option("--sim-profile", help="LLM simulator profile (e.g. flaky), passed to llmsim."),
    ] = None,
    workers: Annotated[
        bool,
        typer.Option(
            "--workers/--no-workers",
            help="Start one worker per task queue (--no-workers to run your own).",
        ),
    ] = True,
) -> None:
    """Start whatever part of the stack is not running yet (idempotent)."""
    settings = get_settings()
    try:
        result = stack.up(settings, sim_profile=sim_profile, workers=workers, console=console)
    except DevStackError as error:
        failure = _fail(error)
        if any(p.state == "running" for p in stack.status(settings).parts):
            err_console.print(
                "[dim]Parts that did start are still running: `keel dev status` shows them, "
                "`keel dev down` stops them.[/]"
            )
        raise failure from None
    console.print()
    stack.print_status(result, console)
    console.print(
        "HTTP API: [bold]keel api[/]; its requests need a token: "
        "[bold]export KEEL_TOKEN=$(keel token create --tenant default --role client)[/]"
    )
    console.print("Stop everything with [bold]keel dev down[/] (data is kept).")


@dev_app.command()
def down(
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Also delete the stack's data (Temporal db, Postgres, logs)."),
    ] = False,
    grace: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = 10.0,
) -> None:
    """Stop what `keel dev up` started (only processes recorded in its pid files)."""
    try:
        stack.down(get_settings(), purge=purge, grace=grace, console=console)
    except DevStackError as error:
        raise _fail(error) from None


@dev_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show each part: state, address, pid, log file; plus the Web UI link."""
    result = stack.status(get_settings())
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    stack.print_status(result, console)


if __name__ == "__main__":  # `python -m starters.dev …` (before it is registered as `keel dev`)
    dev_app()
