"""``keel chat``: a terminal chat that streams tokens as they arrive; ``keel session show``: a
session's turns, summary, tokens and cost.

Both talk to Temporal and Postgres directly (no ``keel api`` needed): a turn is an update-with-
start on the session's workflow, its tokens arrive over Postgres LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import typer
from rich.table import Table
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from contracts.llm import RequestPriority
from contracts.sessions import session_workflow_id
from infra.database import dispose_engines
from infra.input_limits import (
    InputTooLarge,
    PromptLimits,
    UnstorableText,
    check_model_name,
    check_prompt_with_system,
    check_storable,
)
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import connect
from infra.token_streams import StreamEvent, StreamEventType, StreamHub
from services.chat_client import TurnRequest, new_session_id, start_turn
from services.session_reports import SessionReport, session_report
from starters.output import console, error_console, fail, workflow_link

session_app = typer.Typer(help="Inspect chat sessions.", no_args_is_help=True)
EXIT_WORDS = frozenset({"/exit", "/quit", "exit", "quit"})


def _cost(value: Decimal | None) -> str:
    return f"${value:.6f}" if value is not None else "unpriced"


def failure_message(error: BaseException) -> str:
    if isinstance(error, WorkflowUpdateFailedError):
        cause = error.cause
        return cause.message if isinstance(cause, ApplicationError) else str(cause or error)
    if isinstance(error, RPCError):
        return f"Temporal refused or is unreachable: {error.message}"
    return str(error)


class TerminalStream:
    """Prints one turn's events: text as it arrives, a visible break when an attempt is retried
    (the partial answer above it is discarded), and a one-line summary at the end."""

    def __init__(self) -> None:
        self.attempt: str | None = None
        self.printed = ""
        self.failed = False

    def show(self, event: StreamEvent) -> None:
        if event.type == StreamEventType.ATTEMPT:
            if self.printed:
                console.print(
                    f"\n[yellow]↻ attempt {event.data.get('attempt')} on "
                    f"{event.data.get('model')}: the text above is discarded[/]"
                )
            self.attempt, self.printed = event.attempt, ""
        elif event.type == StreamEventType.DELTA and event.attempt == self.attempt:
            text = str(event.data.get("text", ""))
            self.printed += text
            console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        elif event.type == StreamEventType.DONE:
            final = str(event.data.get("text", ""))
            if final != self.printed:  # cached, a fallback response, or a lost delta
                rest = final[len(self.printed) :] if final.startswith(self.printed) else final
                console.print(rest, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
            console.print(
                f"[dim]{event.data.get('model')} · tokens in {event.data.get('input_tokens')} / "
                f"out {event.data.get('output_tokens')} · cost "
                f"{event.data.get('cost_usd') or 'unpriced'}[/]"
            )
        elif event.type == StreamEventType.ERROR:
            self.failed = True
            console.print()
            error_console.print(f"[bold red]turn failed:[/] {event.data.get('message')}")


async def chat_turn(
    client: Client, settings: KeelSettings, hub: StreamHub, request: TurnRequest
) -> None:
    """Send one turn and print its answer as it streams."""
    try:
        handle = await start_turn(client, settings, request)
    except Exception as error:
        error_console.print(f"[bold red]error:[/] {failure_message(error)}")
        return
    printer = TerminalStream()
    async for event in hub.follow(request.stream_key):
        printer.show(event)
    try:
        await handle.result()
    except Exception as error:
        if not printer.failed:  # failed before its stream could say so
            error_console.print(f"[bold red]error:[/] {failure_message(error)}")


def turn_problem(text: str, system: str | None, settings: KeelSettings) -> str | None:
    """Why this message cannot be sent (over a limit, or text keel cannot store), or None."""
    try:
        check_prompt_with_system(text, system, PromptLimits.from_settings(settings), "the message")
    except (InputTooLarge, UnstorableText) as error:
        return str(error)
    return None


async def _chat(base: TurnRequest, message: str | None) -> None:
    settings = get_settings()
    client = await connect(settings)
    workflow_id = session_workflow_id(base.session_id)
    console.print(f"[bold]session[/] {base.session_id}  {workflow_link(settings, workflow_id)}")
    console.print(
        f"[dim]resume: keel chat --session {base.session_id} · "
        f"inspect: keel session show {base.session_id} · quit: Ctrl-D or /exit[/]"
    )
    try:
        async with StreamHub(settings.effective_database_url) as hub:
            while True:
                if message is not None:
                    text, message = message, None
                    console.print(f"[bold cyan]you>[/] {text}")
                    once = True
                else:
                    once = False
                    try:
                        text = await asyncio.to_thread(console.input, "[bold cyan]you>[/] ")
                    except (EOFError, KeyboardInterrupt):
                        console.print()
                        break
                if text.strip().lower() in EXIT_WORDS:
                    break
                problem = turn_problem(text, base.system_prompt, settings)
                if problem is not None:  # said here, never sent: the session is unchanged
                    error_console.print(f"[bold red]error:[/] {problem}", soft_wrap=True)
                elif text.strip():
                    turn_id = f"turn-{uuid.uuid4().hex}"
                    request = base.model_copy(update={"content": text, "turn_id": turn_id})
                    await chat_turn(client, settings, hub, request)
                if once:
                    break
    finally:
        await dispose_engines()
    console.print(f"[dim]session {base.session_id}: keel session show {base.session_id}[/]")


def chat(
    session: str | None = typer.Option(
        None, "--session", "-s", help="Continue this session (default: a new one)."
    ),
    message: str | None = typer.Option(
        None, "--message", help="Send this one message and exit (no prompt)."
    ),
    route: str | None = typer.Option(None, help="Named route (see `keel routes`)."),
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="Explicit model chain, in fallback order (repeatable)."
    ),
    system: str | None = typer.Option(None, help="System prompt (for a new session)."),
    tenant: str = typer.Option("default"),
    priority: RequestPriority = typer.Option(RequestPriority.NORMAL),
) -> None:
    """Chat in the terminal; the answer streams as it is generated, the history is durable."""
    settings = get_settings()
    if route and model:
        fail("give either --route or --model, not both")
    if route and route not in settings.routes:
        fail(f"unknown route {route!r}", f"configured routes: {', '.join(sorted(settings.routes))}")
    try:
        base = TurnRequest(
            session_id=session or new_session_id(),
            content="-",
            tenant=tenant,
            system_prompt=system,
            route=route,
            models=model or None,
            priority=priority,
        )
    except ValueError:
        fail(
            f"invalid session id {session!r}",
            "use 1-150 letters, digits, '_', '.', ':' or '-'",
        )
    problem = turn_problem(message, system, settings) if message is not None else None
    try:
        if system is not None:
            check_storable(system, "--system")
        for name in model or []:
            check_model_name(name, f"--model {name[:40]!r}")
    except UnstorableText as error:
        problem = str(error)
    if problem is not None:
        fail(problem, "nothing was sent")
    try:
        asyncio.run(_chat(base, message))
    except ConnectionError as error:
        fail(str(error))


def print_session(report: SessionReport, show_text: bool) -> None:
    workflow_id = session_workflow_id(report.session_id)
    console.print(
        f"[bold]session[/] {report.session_id} · tenant {report.tenant} · "
        f"{len([t for t in report.turns if not t.seeded])} turns · workflow {workflow_id}"
    )
    if report.system_prompt:
        console.print(f"[dim]system:[/] {report.system_prompt}", markup=True, highlight=False)
    turns = Table(title="turns", title_justify="left")
    for column in ("#", "question", "answer", "model", "in", "out", "cost", ""):
        turns.add_column(column)
    width = 2000 if show_text else 60
    for number, turn in enumerate(report.turns, start=1):
        turns.add_row(
            str(number),
            (turn.question or "")[:width],
            (turn.answer or "—")[:width],
            turn.model or "",
            str(turn.input_tokens),
            str(turn.output_tokens),
            _cost(turn.cost_usd) if turn.answer else "",
            ("summarized" if turn.summarized else "") + (" seeded" if turn.seeded else ""),
        )
    console.print(turns)
    if report.summary:
        console.print(
            f"[bold]summary[/] (through message {report.summarized_through_seq}, "
            f"{report.summary_tokens} tokens)"
        )
        console.print(report.summary, markup=False, highlight=False)
    console.print(
        f"[bold]totals[/] {report.llm_calls} LLM calls (answers, summaries, retries) · "
        f"tokens in {report.input_tokens} / out {report.output_tokens} · "
        f"cost {_cost(report.cost_usd)}"
    )
    console.print(
        f"[dim]continue: keel chat --session {report.session_id} · "
        f"calls: keel audit {workflow_id}[/]"
    )


async def _show(session_id: str, show_text: bool) -> None:
    try:
        report = await session_report(session_id)
    finally:
        await dispose_engines()
    if report is None:
        fail(f"no session {session_id!r}", "list recent ones in the Web UI (KeelKind = chat)")
    print_session(report, show_text)


@session_app.command("show")
def show_session(
    session_id: str = typer.Argument(..., help="The session id (keel chat prints it)."),
    text: bool = typer.Option(False, "--text", help="Print whole messages, not the start."),
) -> None:
    """A session's turns, running summary, tokens and cost."""
    asyncio.run(_show(session_id, text))
