"""``keel batch ...``: run a JSONL file of LLM requests as a durable batch, and steer it.

    keel batch start FILE.jsonl [--id ID] [--concurrency N] [--route R | --model M]
                     [--budget-usd X] [--max-failure-rate F] [--strict] [--watch]
    keel batch status ID [--watch]          keel batch list
    keel batch pause | resume | cancel ID   keel batch retry-failed ID
    keel batch budget ID --raise-to Y | --stop
    keel batch results ID [-o FILE]
    keel batch schedule FILE --cron "0 2 * * *"   (schedule-list | schedule-pause | schedule-delete)

The file is validated here, before anything is written; its items go to Postgres and the
workflow gets only the batch id. Reports read Postgres, so they work while workers are down.
The operations themselves are services/batches.py; this module reads options, prints and exits.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import NoReturn, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from temporalio.service import RPCError

from activities.batch.files import (
    BatchFileLimits,
    BatchFileRefused,
    ParsedLine,
    ValidationReport,
    parse_file,
    parse_lines,
    validate,
)
from activities.batch.items import BatchReport, refusal
from contracts.batch import BatchOptions, ControlAck, ControlRequest, batch_workflow_id
from infra.database import dispose_engines, session_factory
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import connect
from services.approval_client import DecisionRefused
from services.batches import (
    BATCH_ID_PATTERN,
    BatchControl,
    BatchError,
    BatchSchedule,
    BatchVia,
    BudgetDecision,
    ProviderChunkReport,
    ScheduleNotFound,
    batch_options,
    batch_schedules,
    check_budget_decision,
    control_batch,
    create_batch_schedule,
    delete_batch_schedule,
    money,
    parse_deadline,
    pause_batch_schedule,
    provider_chunks_of,
    recent_reports,
    report_of,
    retry_failed_items,
    send_budget_decision,
    submit_batch,
    submit_provider_batch,
    write_results,
)
from services.costs import batch_saving
from starters.approvals import EXIT_CODES
from starters.output import console, error_console, fail, workflow_link

batch_app = typer.Typer(
    help="Run JSONL files of LLM requests as durable batches: concurrency caps, progress, "
    "pause/resume/cancel, budgets, schedules, exactly one result per item.",
    no_args_is_help=True,
)

MAX_PROBLEMS_SHOWN = 20
T = TypeVar("T")


def _run(coroutine: Awaitable[T]) -> T:
    async def with_cleanup() -> T:
        try:
            return await coroutine
        finally:
            await dispose_engines()

    return asyncio.run(with_cleanup())


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fail(error: BatchError) -> NoReturn:
    fail(error.message, error.hint)


# --- Starting -----------------------------------------------------------------------------------


def print_validation(report: ValidationReport) -> None:
    problems, warnings = report.problems, report.warnings
    summary = f"{report.lines} line(s): {report.valid} valid"
    if problems:
        summary += f", [red]{len(problems)} malformed[/]"
    if warnings:
        summary += f", [yellow]{len(warnings)} with warnings[/]"
    console.print(summary)
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        console.print(f"  [red]line {problem.line_no}[/]: {problem.reason}", highlight=False)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        console.print(f"  … and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    for warning in warnings[:5]:
        console.print(f"  [yellow]line {warning.line_no}[/]: {warning.reason}", highlight=False)
    for duplicate in report.duplicates[:MAX_PROBLEMS_SHOWN]:
        console.print(
            f"  [red]duplicate custom_id {duplicate.custom_id!r}[/] on lines "
            f"{', '.join(map(str, duplicate.line_numbers))}",
            highlight=False,
        )


def _read_and_validate(file: Path, strict: bool, settings: KeelSettings) -> list[ParsedLine]:
    if not file.is_file():
        fail(f"no such file: {file}")
    try:
        with console.status(f"validating {file} …"):
            lines = list(parse_file(file, BatchFileLimits.from_settings(settings)))
            report = validate(lines)
    except BatchFileRefused as too_large:  # before anything was written
        fail(f"refused {file}: {too_large}")
    print_validation(report)
    reason = refusal(report, strict)
    if reason:
        if not report.problems and not report.duplicates:
            hint = "the file needs one JSON request per line; add some and run the command again"
        else:
            hint = "fix the lines above and run the command again" + (
                " (malformed lines alone do not refuse a file without --strict)"
                if report.valid and not strict
                else ""
            )
        fail(f"refused {file}: {reason}", hint)
    if report.problems:
        console.print(
            f"[yellow]{len(report.problems)} malformed line(s) become failed items; the rest "
            "run[/] (--strict refuses the file instead)"
        )
    return lines


def _options(
    settings: KeelSettings,
    tenant: str,
    concurrency: int | None,
    route: str | None,
    model: str | None,
    budget_usd: float | None,
    max_failure_rate: float | None,
    strict: bool,
) -> BatchOptions:
    try:
        return batch_options(
            settings,
            tenant=tenant,
            concurrency=concurrency,
            route=route,
            model=model,
            budget_usd=budget_usd,
            max_failure_rate=max_failure_rate,
            strict=strict,
        )
    except BatchError as refused:
        _fail(refused)


def _print_next_steps(settings: KeelSettings, batch_id: str) -> None:
    workflow_id = batch_workflow_id(batch_id)
    console.print(f"[bold]batch[/] {batch_id}  workflow {workflow_id}")
    console.print(f"  {workflow_link(settings, workflow_id)}")
    console.print(f"progress: [cyan]keel batch status {batch_id} --watch[/]")
    console.print(
        f"steer:    [cyan]keel batch pause {batch_id}[/] · [cyan]keel batch cancel {batch_id}[/]"
    )


# The line format, where a person looks for it (`keel batch start --help`); README.md says the
# same under "Batches". activities/batch/files.py is what enforces it.
BATCH_LINE_FORMAT = """\
FILE holds one JSON object per line, in either of two shapes (they may be mixed).

keel's line: custom_id (required, unique in the file), prompt or messages (exactly one),
and optionally system, model, max_tokens, temperature, metadata:

  {"custom_id": "q1", "prompt": "Name a river.", "model": "gpt-4o-mini", "max_tokens": 64}

  {"custom_id": "q2", "messages": [{"role": "user", "content": "Name a lake."}]}

An OpenAI Batch API line, as is (method POST, url /v1/chat/completions; body: model, messages,
max_tokens or max_completion_tokens, temperature, response_format, metadata):

  {"custom_id": "q3", "method": "POST", "url": "/v1/chat/completions", "body": {"model": \
"gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}}

A malformed line is reported with its number and reason and becomes a failed item (--strict
refuses the whole file instead); duplicate custom_ids always refuse the file.
"""


@batch_app.command("start", epilog=BATCH_LINE_FORMAT)
def start(
    file: Path = typer.Argument(..., help="JSONL: keel lines or OpenAI Batch API lines."),
    batch_id: str | None = typer.Option(None, "--id", help="Batch id (default: generated)."),
    concurrency: int | None = typer.Option(
        None, min=1, max=2000, help="Items in flight at most (default: settings, 50)."
    ),
    route: str | None = typer.Option(None, help="Run every item on this route (fallbacks)."),
    model: str | None = typer.Option(None, help="Run every item on this one model."),
    budget_usd: float | None = typer.Option(
        None, min=0.000001, help="Pause at an approval gate before spend would cross this."
    ),
    max_failure_rate: float | None = typer.Option(
        None, min=0, max=1, help="Abort once more than this share of the items that ran failed."
    ),
    strict: bool = typer.Option(False, help="Refuse the file if any line is malformed."),
    tenant: str = typer.Option("default"),
    watch: bool = typer.Option(False, "--watch", help="Follow progress until the batch ends."),
    via: BatchVia = typer.Option(
        BatchVia.LIVE,
        "--via",
        help="live: calls now, full price. provider: the providers' batch APIs, half price, "
        "within 24 h (what they cannot finish runs live).",
    ),
    deadline: str | None = typer.Option(
        None,
        help="--via provider: what the provider has not finished by then (e.g. 6h) is cancelled "
        "there and run live.",
    ),
) -> None:
    """Validate FILE, load its items into Postgres and start the batch."""
    settings = get_settings()
    batch_id = batch_id or f"b-{uuid.uuid4().hex[:10]}"
    if not BATCH_ID_PATTERN.match(batch_id):
        fail(f"invalid batch id {batch_id!r}", "use letters, digits, '.', '_' and '-'")
    options = _options(
        settings, tenant, concurrency, route, model, budget_usd, max_failure_rate, strict
    )
    if deadline is not None and via is not BatchVia.PROVIDER:
        fail("--deadline applies to --via provider only", "add --via provider, or drop it")
    try:
        provider_deadline = parse_deadline(deadline) if deadline is not None else None
    except BatchError as refused:
        _fail(refused)
    lines = _read_and_validate(file, strict, settings)

    async def go() -> None:
        client = await connect(settings)
        try:
            if via is BatchVia.PROVIDER:
                await submit_provider_batch(
                    client,
                    settings,
                    session_factory(),
                    lines,
                    batch_id=batch_id,
                    options=options,
                    source_name=str(file),
                    deadline=provider_deadline,
                )
            else:
                await submit_batch(
                    client,
                    settings,
                    session_factory(),
                    lines,
                    batch_id=batch_id,
                    options=options,
                    source_name=str(file),
                )
        except BatchError as refused:
            _fail(refused)
        _print_next_steps(settings, batch_id)
        if watch:
            await _watch(settings, batch_id)

    _run(go())


# --- Progress -------------------------------------------------------------------------------


async def _report(batch_id: str) -> BatchReport:
    try:
        return await report_of(session_factory(), batch_id)
    except BatchError as missing:
        _fail(missing)


def _eta(remaining: int, rate: float) -> str:
    if remaining <= 0:
        return "0s"
    if rate <= 0:
        return "—"
    return str(timedelta(seconds=round(remaining / rate)))


def _average_rate(report: BatchReport) -> float:
    if report.started_at is None:
        return 0.0
    end = report.finished_at or datetime.now(UTC)
    elapsed = (end - report.started_at).total_seconds()
    done = report.counts.ok + report.counts.failed - report.counts.invalid
    return done / elapsed if elapsed > 0 else 0.0


def _gate_hint(report: BatchReport) -> str | None:
    if report.pending_gate is None:
        return None
    if report.pending_gate.startswith("tenant-budget"):
        return (
            f"waiting at {report.pending_gate}: {report.pending_gate_reason}\n"
            f"  decide: keel approve {report.workflow_id} --reviewer NAME   or   "
            f"keel reject {report.workflow_id} --reviewer NAME --reason TEXT"
        )
    return (
        f"waiting at {report.pending_gate}: {report.pending_gate_reason}\n"
        f"  decide: keel batch budget {report.id} --raise-to AMOUNT   or   "
        f"keel batch budget {report.id} --stop"
    )


def print_report(
    settings: KeelSettings, report: BatchReport, chunks: list[ProviderChunkReport] | None = None
) -> None:
    counts = report.counts
    status = report.status + (f" — {report.status_reason}" if report.status_reason else "")
    console.print(f"[bold]batch {report.id}[/]  {status}", highlight=False)
    console.print(
        f"  items  {counts.ok} done · {counts.failed} failed · {counts.skipped} skipped · "
        f"{counts.pending + counts.running} to go · {counts.total} total"
        + (f"  ({counts.invalid} malformed lines)" if counts.invalid else "")
    )
    rate = _average_rate(report)
    remaining = counts.pending + counts.running
    console.print(
        f"  rate   {rate:.1f} items/s · ETA {_eta(remaining, rate) if not report.terminal else '—'}"
    )
    budget = f" of {money(report.budget_usd)} budget" if report.budget_usd is not None else ""
    console.print(f"  cost   {money(report.spent_usd)}{budget} (ledger, every attempt)")
    for chunk in chunks or []:
        counts_text = ", ".join(f"{k} {v}" for k, v in chunk.request_counts.items() if v)
        console.print(
            f"  provider batch {chunk.chunk_id}: {chunk.provider} {chunk.model} · "
            f"{chunk.items} items · {chunk.status}"
            + (
                f" · {chunk.provider_batch_id} {chunk.provider_status or ''}"
                if chunk.provider_batch_id
                else ""
            )
            + (f" ({counts_text})" if counts_text else "")
            + (f" · {money(chunk.cost_usd)}" if chunk.cost_usd is not None else ""),
            highlight=False,
        )
    console.print(f"  {workflow_link(settings, report.workflow_id)}")
    hint = _gate_hint(report)
    if hint:
        console.print(f"[yellow]{hint}[/]")
    if report.terminal:
        console.print(f"results: [cyan]keel batch results {report.id} -o results.jsonl[/]")
        if counts.failed - counts.invalid > 0:
            console.print(f"again:   [cyan]keel batch retry-failed {report.id}[/]")
    else:
        console.print(f"follow:  [cyan]keel batch status {report.id} --watch[/]")


async def _watch(settings: KeelSettings, batch_id: str, interval: float = 1.0) -> BatchReport:
    report = await _report(batch_id)
    samples: deque[tuple[float, int]] = deque(maxlen=15)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} done[/] · [red]{task.fields[failed]} failed[/]"),
        TextColumn("{task.fields[rate]} items/s"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[cost]}"),
    )
    with Progress(*columns, console=console, refresh_per_second=4) as progress:
        task = progress.add_task(
            batch_id,
            total=report.counts.total or None,
            ok=0,
            failed=0,
            rate="—",
            eta="—",
            cost=money(report.spent_usd),
        )
        while True:
            counts = report.counts
            samples.append((time.monotonic(), counts.finished))
            span = samples[-1][0] - samples[0][0]
            rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
            progress.update(
                task,
                description=f"{batch_id} {report.status}",
                total=counts.total,
                completed=counts.finished,
                ok=counts.ok,
                failed=counts.failed,
                rate=f"{rate:.1f}",
                eta=_eta(counts.total - counts.finished, rate),
                cost=money(report.spent_usd),
            )
            if report.terminal or report.pending_gate is not None:
                break
            await asyncio.sleep(interval)
            report = await _report(batch_id)
    print_report(settings, report, await provider_chunks_of(session_factory(), batch_id))
    return report


@batch_app.command("status")
def status(
    batch_id: str = typer.Argument(..., help="The batch id."),
    watch: bool = typer.Option(False, "--watch", help="A live progress bar until it ends."),
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between refreshes (--watch)."),
) -> None:
    """Progress of a batch: done / failed / total, items/s, ETA, cost so far."""
    settings = get_settings()

    async def go() -> None:
        if watch:
            await _watch(settings, batch_id, interval)
        else:
            report = await _report(batch_id)
            print_report(settings, report, await provider_chunks_of(session_factory(), batch_id))

    _run(go())


@batch_app.command("list")
def list_(limit: int = typer.Option(30, min=1)) -> None:
    """The most recent batches."""

    async def go() -> None:
        reports = await recent_reports(session_factory(), limit)
        if not reports:
            console.print("no batches yet: [cyan]keel batch start FILE.jsonl[/]")
            return
        table = Table(title="batches", title_justify="left")
        for column in ("id", "status", "done", "failed", "total", "cost", "created", "source"):
            table.add_column(column)
        for report in reports:
            table.add_row(
                report.id,
                report.status,
                str(report.counts.ok),
                str(report.counts.failed),
                str(report.counts.total),
                money(report.spent_usd),
                report.created_at.strftime("%Y-%m-%d %H:%M"),
                (report.source_name or "")[-40:],
            )
        console.print(table)

    _run(go())


# --- Controls -----------------------------------------------------------------------------------


async def _control(batch_id: str, control: BatchControl, request: ControlRequest) -> ControlAck:
    client = await connect(get_settings())
    try:
        return await control_batch(client, session_factory(), batch_id, control, request)
    except BatchError as refused:
        _fail(refused)


def _print_ack(batch_id: str, ack: ControlAck) -> None:
    console.print(f"batch {batch_id}: {ack.status} — {ack.message}")
    console.print(f"follow: [cyan]keel batch status {batch_id} --watch[/]")


by_option = typer.Option(None, "--by", help="Who decides (default: your user name).")
reason_option = typer.Option(None, "--reason", help="Why (kept in the audit trail).")


@batch_app.command("pause")
def pause(batch_id: str, by: str | None = by_option, reason: str | None = reason_option) -> None:
    """Start no new items; what is in flight finishes."""
    request = ControlRequest(by=by or _whoami(), reason=reason)
    ack = _run(_control(batch_id, BatchControl.PAUSE, request))
    _print_ack(batch_id, ack)
    console.print(f"resume: [cyan]keel batch resume {batch_id}[/]")


@batch_app.command("resume")
def resume(batch_id: str, by: str | None = by_option, reason: str | None = reason_option) -> None:
    """Resume a paused batch."""
    request = ControlRequest(by=by or _whoami(), reason=reason)
    _print_ack(batch_id, _run(_control(batch_id, BatchControl.RESUME, request)))


@batch_app.command("cancel")
def cancel(batch_id: str, by: str | None = by_option, reason: str | None = reason_option) -> None:
    """Cancel: pending items are skipped; items in flight finish (they are already paid for)."""
    request = ControlRequest(by=by or _whoami(), reason=reason)
    _print_ack(batch_id, _run(_control(batch_id, BatchControl.CANCEL, request)))


@batch_app.command("budget")
def budget(
    batch_id: str,
    raise_to: float | None = typer.Option(None, "--raise-to", min=0.000001, help="New budget."),
    stop: bool = typer.Option(False, "--stop", help="Stop the batch at the gate."),
    by: str | None = typer.Option(
        None, "--by", help="Reviewer deciding (a reviewer with the batch budget role)."
    ),
    reason: str | None = reason_option,
) -> None:
    """Decide a batch's budget gate: raise the budget to Y (--raise-to), or stop (--stop).

    The gate is an approval gate: approving its proposal raises the budget to it, an edit sets
    another amount, a rejection stops the batch (`keel approve batch-ID` works too)."""
    if (raise_to is None) == (not stop):
        fail("decide one way: --raise-to AMOUNT or --stop")
    reviewer = by or _whoami()

    decision = BudgetDecision(
        reviewer=reviewer,
        stop=stop,
        raise_to=None if raise_to is None else Decimal(str(raise_to)),
        reason=reason,
    )

    async def go() -> str:
        settings = get_settings()
        try:
            # Checked against Postgres before Temporal is needed.
            checked = await check_budget_decision(session_factory(), batch_id, decision)
            client = await connect(settings)
            sent = await send_budget_decision(client, settings, checked)
        except BatchError as refused:
            _fail(refused)
        except DecisionRefused as refused:
            fail(refused.message, refused.hint, code=EXIT_CODES.get(refused.kind, 1))
        return sent.message

    message = _run(go())
    console.print(f"batch {batch_id}: {message}")
    console.print(f"follow: [cyan]keel batch status {batch_id} --watch[/]")


@batch_app.command("retry-failed")
def retry_failed(
    batch_id: str, by: str | None = by_option, reason: str | None = reason_option
) -> None:
    """Run the failed items again (only those; malformed lines cannot run)."""
    settings = get_settings()
    request = ControlRequest(by=by or _whoami(), reason=reason)

    async def go() -> None:
        client = await connect(settings)
        try:
            message = await retry_failed_items(
                client, settings, session_factory(), batch_id, request
            )
        except BatchError as refused:
            _fail(refused)
        console.print(f"batch {batch_id}: {message}")
        console.print(f"follow: [cyan]keel batch status {batch_id} --watch[/]")

    _run(go())


# --- Results --------------------------------------------------------------------------------


@batch_app.command("results")
def results(
    batch_id: str,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here (default stdout)."),
) -> None:
    """One line per item in the OpenAI Batch API output shape (custom_id, response, error)."""

    async def go() -> dict[str, int]:
        await _report(batch_id)
        sink = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            return await write_results(session_factory(), batch_id, sink)
        finally:
            if output:
                sink.close()

    tally = _run(go())
    summary = ", ".join(f"{count} {status}" for status, count in sorted(tally.items()))
    where = f"to {output}" if output else "above"
    error_console.print(f"[dim]{sum(tally.values())} line(s) {where}: {summary}[/]")


# --- Schedules ----------------------------------------------------------------------------------


@batch_app.command("schedule")
def schedule(
    file: Path = typer.Argument(..., help="The JSONL file, read by the batch worker each run."),
    cron: str = typer.Option(..., "--cron", help='Cron expression, e.g. "0 2 * * *".'),
    schedule_id: str | None = typer.Option(None, "--id", help="Schedule id (default: file)."),
    concurrency: int | None = typer.Option(None, min=1, max=2000),
    route: str | None = typer.Option(None),
    model: str | None = typer.Option(None),
    budget_usd: float | None = typer.Option(None, min=0.000001),
    max_failure_rate: float | None = typer.Option(None, min=0, max=1),
    strict: bool = typer.Option(False),
    tenant: str = typer.Option("default"),
) -> None:
    """Run FILE as a batch on a cron schedule (a Temporal Schedule), e.g. nightly scoring."""
    settings = get_settings()
    schedule_id = schedule_id or re.sub(r"[^A-Za-z0-9_-]", "-", file.stem)
    if not BATCH_ID_PATTERN.match(schedule_id):
        fail(f"invalid schedule id {schedule_id!r}", "use letters, digits, '.', '_' and '-'")
    options = _options(
        settings, tenant, concurrency, route, model, budget_usd, max_failure_rate, strict
    )
    _read_and_validate(file, strict, settings)
    path = file.resolve()

    async def go() -> None:
        client = await connect(settings)
        await create_batch_schedule(client, settings, schedule_id, path, cron, options)

    try:
        _run(go())
    except BatchError as refused:
        _fail(refused)
    except RPCError as error:
        fail(f"could not create the schedule: {error.message}")
    console.print(f"[bold]schedule[/] {schedule_id}: {cron} → batch of {path}")
    console.print(
        "[yellow]each run reads the file then, on the keel-batch worker: the path must exist "
        "there[/]"
    )
    console.print(
        f"runs appear as batches {schedule_id}-<time>: [cyan]keel batch list[/] · "
        f"[cyan]keel batch schedule-list[/] · [cyan]keel batch schedule-pause {schedule_id}[/]"
    )


@batch_app.command("schedule-list")
def schedule_list() -> None:
    """keel's batch schedules."""

    async def go() -> list[BatchSchedule]:
        return await batch_schedules(await connect(get_settings()))

    schedules = _run(go())
    if not schedules:
        console.print('no batch schedules: [cyan]keel batch schedule FILE --cron "0 2 * * *"[/]')
        return
    table = Table(title="batch schedules", title_justify="left")
    for column in ("id", "cron", "file", "paused", "next run"):
        table.add_column(column)
    for entry in schedules:
        paused = "yes" if entry.paused else "no"
        table.add_row(entry.id, entry.cron, entry.file, paused, entry.next_run)
    console.print(table)


@batch_app.command("schedule-pause")
def schedule_pause(
    schedule_id: str,
    unpause: bool = typer.Option(False, "--unpause", help="Resume the schedule instead."),
) -> None:
    """Pause (or --unpause) a batch schedule."""

    async def go() -> None:
        client = await connect(get_settings())
        note = f"by keel batch schedule-pause ({_whoami()})"
        await pause_batch_schedule(client, schedule_id, note=note, unpause=unpause)

    _schedule_call(schedule_id, go)
    console.print(f"schedule {schedule_id} {'resumed' if unpause else 'paused'}")


@batch_app.command("schedule-delete")
def schedule_delete(schedule_id: str) -> None:
    """Delete a batch schedule (batches it already ran stay)."""

    async def go() -> None:
        client = await connect(get_settings())
        await delete_batch_schedule(client, schedule_id)

    _schedule_call(schedule_id, go)
    console.print(f"schedule {schedule_id} deleted")


def _schedule_call(schedule_id: str, call: Callable[[], Awaitable[None]]) -> None:
    try:
        _run(call())
    except ScheduleNotFound as missing:
        _fail(missing)
    except RPCError as error:
        fail(f"schedule {schedule_id}: {error.message}")


# --- The demo (`keel demo`, `make demo`) ----------------------------------------------------


DEMO_QUESTIONS = (
    "Classify the sentiment of: 'The update fixed my issue, thanks!'",
    "Classify the sentiment of: 'Still waiting for a refund after three weeks.'",
    "Translate to French: 'Your order has shipped.'",
    "Give a one-line title for a ticket about a broken login page.",
)


async def run_demo_batch(settings: KeelSettings, items: int = 40) -> str:
    """A small batch in both line formats, one malformed line among them, with the live
    progress bar; returns the batch id."""
    lines: list[str] = []
    for n in range(items):
        question = DEMO_QUESTIONS[n % len(DEMO_QUESTIONS)]
        if n % 2:
            lines.append(
                json.dumps({"custom_id": f"demo-{n}", "prompt": question, "max_tokens": 48})
            )
        else:
            lines.append(
                json.dumps(
                    {
                        "custom_id": f"demo-{n}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": question}],
                            "max_tokens": 48,
                        },
                    }
                )
            )
    lines.insert(items // 2, '{"custom_id": "demo-broken", "prompt": ')
    parsed = list(parse_lines(lines, BatchFileLimits.from_settings(settings)))
    print_validation(validate(parsed))
    batch_id = f"demo-{uuid.uuid4().hex[:6]}"
    client = await connect(settings)
    await submit_batch(
        client,
        settings,
        session_factory(),
        parsed,
        batch_id=batch_id,
        options=BatchOptions(concurrency=8, model="gpt-4o-mini"),
        source_name="demo.jsonl",
    )
    _print_next_steps(settings, batch_id)
    await _watch(settings, batch_id, interval=0.5)
    return batch_id


async def run_demo_provider_batch(settings: KeelSettings, items: int = 12) -> str:
    """A small batch through the providers' batch APIs (the simulator's), half on OpenAI and half
    on Anthropic; prints its provider batches and what it cost against live prices."""
    lines = [
        json.dumps(
            {
                "custom_id": f"pdemo-{n}",
                "prompt": DEMO_QUESTIONS[n % len(DEMO_QUESTIONS)],
                "model": "gpt-4o-mini" if n % 2 else "claude-3-5-haiku-latest",
                "max_tokens": 48,
            }
        )
        for n in range(items)
    ]
    parsed = list(parse_lines(lines, BatchFileLimits.from_settings(settings)))
    batch_id = f"pdemo-{uuid.uuid4().hex[:6]}"
    client = await connect(settings)
    handle = await submit_provider_batch(
        client,
        settings,
        session_factory(),
        parsed,
        batch_id=batch_id,
        options=BatchOptions(),
        source_name="demo-provider.jsonl",
        provider_settings=settings.provider_batch.model_copy(
            update={"poll_initial_seconds": 0.5, "poll_max_seconds": 2.0}
        ),
    )
    console.print(f"started {batch_id} --via provider: waiting on timers, no worker slot held")
    await handle.result()
    report = await _report(batch_id)
    print_report(settings, report, await provider_chunks_of(session_factory(), batch_id))
    async with session_factory()() as session:
        saving = await batch_saving(
            session, datetime(2000, 1, 1, tzinfo=UTC), workflow_id=report.workflow_id
        )
    if saving is not None:
        console.print(
            f"[bold]provider batch: ${saving.batch_cost_usd:.6f} for {saving.lines} items; the "
            f"same tokens live: ${saving.live_cost_usd:.6f} "
            f"({saving.batch_cost_usd / saving.live_cost_usd:.0%} of live)[/]",
            highlight=False,
        )
    return batch_id
