"""``keel top``: the dashboard's figures, live in the terminal, for people without Grafana.

Read where the dashboard's metrics come from, not from Prometheus (which a small team may not
run): LLM calls from the ledger (Postgres), breakers, approvals and batches from their tables,
queue backlogs from Temporal. Refreshed every second; ``q`` or Ctrl-C quits with exit code 0.

The ledger is read by primary key from the first row of the window on (kept between refreshes),
never by a scan of its history: a refresh costs what the last five minutes of calls cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import text
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from infra.database import dispose_engines, session_factory
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import connect
from starters.output import console, fail

EXIT_QUIT = 0
REFRESH_SECONDS = 1.0
# Rates, error rate and latency over the last minute; cost per hour from the last five minutes.
RATE_WINDOW_S = 60
COST_WINDOW_S = 300
# How far back from the newest ledger row the first refresh looks for the window's first row.
_FIRST_LOOK_BACK_ROWS = 1_000_000

_WINDOW_START = text(
    """
    SELECT coalesce(min(id), (SELECT coalesce(max(id), 0) + 1 FROM llm_calls))
    FROM llm_calls
    WHERE id >= :floor AND created_at > now() - make_interval(secs => :seconds)
    """
)
_NEWEST_ID = text("SELECT coalesce(max(id), 0) FROM llm_calls")
_CALLS = text(
    """
    SELECT count(*) FILTER (WHERE recent AND outcome <> 'in_flight') AS finished,
           count(*) FILTER (WHERE recent AND outcome = 'error') AS errors,
           count(*) FILTER (WHERE outcome = 'in_flight') AS in_flight,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
               FILTER (WHERE recent AND outcome = 'ok') AS p50_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)
               FILTER (WHERE recent AND outcome = 'ok') AS p99_ms,
           coalesce(sum(cost_usd), 0) AS cost_usd
    FROM (
        SELECT *, created_at > now() - make_interval(secs => :rate_seconds) AS recent
        FROM llm_calls
        WHERE id >= :floor AND created_at > now() - make_interval(secs => :cost_seconds)
          AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)
    ) window_rows
    """
)
_BREAKERS = text("SELECT provider, model, state FROM circuit_breakers ORDER BY provider, model")
_APPROVALS_PENDING = text(
    """
    SELECT count(*) FROM approvals
    WHERE status = 'pending' AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)
    """
)
_BATCHES = text(
    """
    SELECT b.id, b.tenant, b.status,
           coalesce(sum(i.items) FILTER (WHERE i.status IN ('ok', 'failed', 'skipped')), 0) AS done,
           coalesce(sum(i.items), 0) AS total
    FROM batches b
    LEFT JOIN LATERAL (
        SELECT status, count(*) AS items FROM batch_items WHERE batch_id = b.id GROUP BY status
    ) i ON true
    WHERE b.status IN ('loading', 'running', 'paused')
      AND (CAST(:tenant AS text) IS NULL OR b.tenant = :tenant)
    GROUP BY b.id, b.tenant, b.status
    ORDER BY b.id
    """
)


@dataclass
class Figures:
    at: datetime
    calls_per_s: float = 0.0
    error_rate: float = 0.0
    in_flight: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cost_per_hour: float = 0.0
    breakers: list[tuple[str, str, str]] = field(default_factory=list)
    backlogs: dict[str, int | None] = field(default_factory=dict)
    approvals_pending: int = 0
    batches: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class FigureReader:
    def __init__(self, settings: KeelSettings, client: Client | None, tenant: str | None) -> None:
        self.settings, self.client, self.tenant = settings, client, tenant
        self.sessions = session_factory()
        self.floor: int | None = None  # the ledger window's first row id

    async def read(self) -> Figures:
        figures = Figures(at=datetime.now(UTC))
        try:
            await self._read_postgres(figures)
        except Exception as error:  # a blip shows on screen; the next second tries again
            figures.problems.append(f"postgres: {type(error).__name__}: {error}")
        if self.client is not None:
            try:
                figures.backlogs = await self._backlogs(self.client)
            except Exception as error:
                figures.problems.append(f"temporal: {type(error).__name__}: {error}")
        return figures

    async def _read_postgres(self, figures: Figures) -> None:
        async with self.sessions() as session:
            if self.floor is None:
                newest = int((await session.execute(_NEWEST_ID)).scalar_one())
                self.floor = max(newest - _FIRST_LOOK_BACK_ROWS, 0)
            window = {"floor": self.floor, "seconds": COST_WINDOW_S}
            self.floor = int((await session.execute(_WINDOW_START, window)).scalar_one())
            calls = (
                await session.execute(
                    _CALLS,
                    {
                        "floor": self.floor,
                        "rate_seconds": RATE_WINDOW_S,
                        "cost_seconds": COST_WINDOW_S,
                        "tenant": self.tenant,
                    },
                )
            ).one()
            figures.breakers = [tuple(row) for row in await session.execute(_BREAKERS)]
            figures.approvals_pending = int(
                (await session.execute(_APPROVALS_PENDING, {"tenant": self.tenant})).scalar_one()
            )
            batches = await session.execute(_BATCHES, {"tenant": self.tenant})
            figures.batches = [tuple(row) for row in batches]
        figures.calls_per_s = calls.finished / RATE_WINDOW_S
        figures.error_rate = calls.errors / calls.finished if calls.finished else 0.0
        figures.in_flight = calls.in_flight
        figures.p50_ms, figures.p99_ms = calls.p50_ms, calls.p99_ms
        figures.cost_per_hour = float(calls.cost_usd) * 3600 / COST_WINDOW_S

    async def _backlogs(self, client: Client) -> dict[str, int | None]:
        backlogs: dict[str, int | None] = {}
        for queue in (self.settings.interactive_task_queue, self.settings.batch_task_queue):
            for kind, queue_type in (
                ("workflow", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
                ("activity", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
            ):
                described = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=queue),
                        task_queue_type=queue_type,
                        report_stats=True,
                    ),
                    timeout=timedelta(seconds=2),
                )
                backlogs[f"{queue} {kind}"] = (
                    described.stats.approximate_backlog_count
                    if described.HasField("stats")
                    else None  # servers before 1.25 do not report it
                )
        return backlogs


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def render(figures: Figures, tenant: str | None = None) -> Group:
    calls = Table.grid(padding=(0, 3))
    for _ in range(6):
        calls.add_column()
    calls.add_row(
        "[bold]calls/s[/]",
        "[bold]errors[/]",
        "[bold]p50[/]",
        "[bold]p99[/]",
        "[bold]cost/hour[/]",
        "[bold]in flight[/]",
    )
    calls.add_row(
        f"{figures.calls_per_s:.2f}",
        f"{figures.error_rate:.1%}",
        _ms(figures.p50_ms),
        _ms(figures.p99_ms),
        f"${figures.cost_per_hour:,.4f}",
        str(figures.in_flight),
    )
    breakers = Table("breaker", "state", box=None, padding=(0, 2))
    for provider, model, state in figures.breakers:
        colour = {"closed": "green", "open": "red"}.get(state, "yellow")
        breakers.add_row(f"{provider}/{model}", f"[{colour}]{state}[/]")
    if not figures.breakers:
        breakers.add_row("(none yet)", "")
    queues = Table("task queue", "backlog", box=None, padding=(0, 2))
    for name, backlog in figures.backlogs.items():
        queues.add_row(name, "?" if backlog is None else str(backlog))
    batches = Table("batch", "tenant", "status", "progress", box=None, padding=(0, 2))
    for batch_id, tenant, status, done, total in figures.batches:
        batches.add_row(batch_id, tenant, status, f"{done}/{total}")
    if not figures.batches:
        batches.add_row("(none running)", "", "", "")
    parts: list[Text | Table] = [
        Text.from_markup(
            f"[bold]keel top[/]  {figures.at:%H:%M:%S} UTC  "
            + (f"tenant {tenant}  " if tenant else "")
            + f"(calls over the last {RATE_WINDOW_S} s, cost over {COST_WINDOW_S // 60} min)  "
            "q quits"
        ),
        calls,
        Text.from_markup(f"[bold]approvals pending[/] {figures.approvals_pending}"),
        breakers,
        queues,
        batches,
    ]
    parts.extend(Text(problem, style="red") for problem in figures.problems)
    return Group(*parts)


@contextlib.contextmanager
def _keys_without_echo() -> Iterator[int | None]:
    """stdin in cbreak mode (one key at a time, no echo; Ctrl-C still interrupts), restored on
    the way out. None when stdin is not a terminal: then only Ctrl-C or a signal stops it."""
    if not sys.stdin.isatty():
        yield None
        return
    descriptor = sys.stdin.fileno()
    saved = termios.tcgetattr(descriptor)
    tty.setcbreak(descriptor)
    try:
        yield descriptor
    finally:
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


async def _run(settings: KeelSettings, tenant: str | None) -> None:
    try:
        client: Client | None = await connect(settings)
    except ConnectionError as error:
        client = None
        console.print(f"[yellow]no queue backlogs: {error}[/]")
    reader = FigureReader(settings, client, tenant)
    quit_pressed = asyncio.Event()
    loop = asyncio.get_running_loop()
    with (
        _keys_without_echo() as keys,
        Live(
            render(await reader.read(), tenant), console=console, screen=False, auto_refresh=False
        ) as live,
    ):
        if keys is not None:

            def on_key() -> None:
                if os.read(keys, 1) in (b"q", b"Q"):
                    quit_pressed.set()

            loop.add_reader(keys, on_key)
        try:
            while not quit_pressed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(quit_pressed.wait(), REFRESH_SECONDS)
                if not quit_pressed.is_set():
                    live.update(render(await reader.read(), tenant), refresh=True)
        finally:
            if keys is not None:
                loop.remove_reader(keys)
    await dispose_engines()


def top(
    tenant: str | None = typer.Option(
        None, help="Only this tenant's calls, approvals and batches (breakers, queues: all)."
    ),
) -> None:
    """Live calls/s, error rate, p50/p99, cost per hour, breakers, queue backlogs, approvals
    pending and batch progress, refreshed every second (q or Ctrl-C quits, exit code 0)."""
    settings = get_settings()
    try:
        asyncio.run(_run(settings, tenant))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person leaves a live view: not a failure
    except OSError as error:
        fail(f"cannot read keel's figures: {error}")
    raise typer.Exit(EXIT_QUIT)
