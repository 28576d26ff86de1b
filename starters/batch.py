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
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.approval_models import (
    ApproveDecision,
    EditDecision,
    RejectDecision,
)
from activities.batch_files import (
    BatchFileRefused,
    ParsedLine,
    ValidationReport,
    parse_file,
    parse_lines,
    validate,
)
from activities.batch_items import (
    BatchOptions,
    BatchReport,
    batch_report,
    batch_workflow_id,
    create_batch,
    insert_items,
    iter_items,
    list_batches,
    openai_output_line,
    refusal,
)
from infra.approval_client import DecisionRefused, DecisionSender
from infra.database import dispose_engines, session_factory
from infra.search_attributes import tenant_search_attributes
from infra.settings import KeelSettings, get_settings
from infra.tables import Batch
from infra.temporal_client import connect
from starters.approvals import EXIT_CODES
from starters.output import console, error_console, fail, workflow_link
from workflows.batch import (
    BatchInput,
    BatchResult,
    BatchWorkflow,
    ControlAck,
    ControlRequest,
    RetryFailedAck,
)

batch_app = typer.Typer(
    help="Run JSONL files of LLM requests as durable batches: concurrency caps, progress, "
    "pause/resume/cancel, budgets, schedules, exactly one result per item.",
    no_args_is_help=True,
)

BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
MAX_PROBLEMS_SHOWN = 20
SCHEDULE_MEMO_CRON, SCHEDULE_MEMO_FILE = "keel_cron", "keel_file"
T = TypeVar("T")


class BatchExistsError(Exception):
    pass


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


def _money(amount: Decimal | None) -> str:
    return "—" if amount is None else f"${amount:,.4f}"


# --- Starting -----------------------------------------------------------------------------------


async def submit_batch(
    client: Client,
    settings: KeelSettings,
    lines: Sequence[ParsedLine],
    *,
    batch_id: str,
    options: BatchOptions,
    source_name: str | None,
    history_event_limit: int | None = None,
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """Load validated lines into Postgres and start the batch's workflow on the batch queue."""
    async with session_factory().begin() as session:
        if not await create_batch(session, batch_id, options, source_name=source_name):
            raise BatchExistsError(batch_id)
        await insert_items(session, batch_id, lines)
    params = BatchInput(
        batch_id=batch_id,
        options=options,
        history_event_limit=history_event_limit or settings.batch_history_event_limit,
    )
    return await client.start_workflow(
        BatchWorkflow.run,
        params,
        id=batch_workflow_id(batch_id),
        task_queue=settings.batch_task_queue,
        search_attributes=tenant_search_attributes(options.tenant, "batch"),
    )


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


def _read_and_validate(file: Path, strict: bool) -> list[ParsedLine]:
    if not file.is_file():
        fail(f"no such file: {file}")
    try:
        with console.status(f"validating {file} …"):
            lines = list(parse_file(file))
            report = validate(lines)
    except BatchFileRefused as too_large:  # before anything was written
        fail(f"refused {file}: {too_large}")
    print_validation(report)
    reason = refusal(report, strict)
    if reason:
        fail(
            f"refused {file}: {reason}",
            "fix the lines above and run the command again"
            + ("" if strict else " (malformed lines alone do not refuse a file without --strict)"),
        )
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
    if route and model:
        fail("give either --route or --model, not both")
    if route and route not in settings.routes:
        fail(f"unknown route {route!r}", f"configured routes: {', '.join(sorted(settings.routes))}")
    return BatchOptions(
        tenant=tenant,
        concurrency=concurrency or settings.batch_concurrency,
        route=route,
        model=model,
        budget_usd=Decimal(str(budget_usd)) if budget_usd is not None else None,
        max_failure_rate=max_failure_rate,
        strict=strict,
        budget_role=settings.batch_budget_role,
        budget_gate_deadline=timedelta(hours=settings.batch_budget_gate_hours),
    )


def _print_next_steps(settings: KeelSettings, batch_id: str) -> None:
    workflow_id = batch_workflow_id(batch_id)
    console.print(f"[bold]batch[/] {batch_id}  workflow {workflow_id}")
    console.print(f"  {workflow_link(settings, workflow_id)}")
    console.print(f"progress: [cyan]keel batch status {batch_id} --watch[/]")
    console.print(
        f"steer:    [cyan]keel batch pause {batch_id}[/] · [cyan]keel batch cancel {batch_id}[/]"
    )


# The line format, where a person looks for it (`keel batch start --help`); README.md says the
# same under "Batches". activities/batch_files.py is what enforces it.
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
) -> None:
    """Validate FILE, load its items into Postgres and start the batch."""
    settings = get_settings()
    batch_id = batch_id or f"b-{uuid.uuid4().hex[:10]}"
    if not BATCH_ID_PATTERN.match(batch_id):
        fail(f"invalid batch id {batch_id!r}", "use letters, digits, '.', '_' and '-'")
    options = _options(
        settings, tenant, concurrency, route, model, budget_usd, max_failure_rate, strict
    )
    lines = _read_and_validate(file, strict)

    async def go() -> None:
        client = await connect(settings)
        try:
            await submit_batch(
                client,
                settings,
                lines,
                batch_id=batch_id,
                options=options,
                source_name=str(file),
            )
        except BatchExistsError:
            fail(
                f"batch {batch_id} already exists",
                f"choose another --id, or look at it: keel batch status {batch_id}",
            )
        _print_next_steps(settings, batch_id)
        if watch:
            await _watch(settings, batch_id)

    _run(go())


# --- Progress -------------------------------------------------------------------------------


async def _report(batch_id: str) -> BatchReport:
    async with session_factory()() as session:
        report = await batch_report(session, batch_id)
    if report is None:
        fail(f"no batch {batch_id!r}", "list batches with: keel batch list")
    return report


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


def print_report(settings: KeelSettings, report: BatchReport) -> None:
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
    budget = f" of {_money(report.budget_usd)} budget" if report.budget_usd is not None else ""
    console.print(f"  cost   {_money(report.spent_usd)}{budget} (ledger, every attempt)")
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
            cost=_money(report.spent_usd),
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
                cost=_money(report.spent_usd),
            )
            if report.terminal or report.pending_gate is not None:
                break
            await asyncio.sleep(interval)
            report = await _report(batch_id)
    print_report(settings, report)
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
            print_report(settings, await _report(batch_id))

    _run(go())


@batch_app.command("list")
def list_(limit: int = typer.Option(30, min=1)) -> None:
    """The most recent batches."""

    async def go() -> None:
        async with session_factory()() as session:
            batches = await list_batches(session, limit)
            reports = [await batch_report(session, batch.id) for batch in batches]
        if not reports:
            console.print("no batches yet: [cyan]keel batch start FILE.jsonl[/]")
            return
        table = Table(title="batches", title_justify="left")
        for column in ("id", "status", "done", "failed", "total", "cost", "created", "source"):
            table.add_column(column)
        for report in reports:
            if report is None:
                continue
            table.add_row(
                report.id,
                report.status,
                str(report.counts.ok),
                str(report.counts.failed),
                str(report.counts.total),
                _money(report.spent_usd),
                report.created_at.strftime("%Y-%m-%d %H:%M"),
                (report.source_name or "")[-40:],
            )
        console.print(table)

    _run(go())


# --- Controls -----------------------------------------------------------------------------------


async def _running_handle(
    client: Client, batch_id: str
) -> WorkflowHandle[BatchWorkflow, BatchResult] | None:
    handle: WorkflowHandle[BatchWorkflow, BatchResult] = client.get_workflow_handle(
        batch_workflow_id(batch_id), result_type=BatchResult
    )
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return handle if description.status == WorkflowExecutionStatus.RUNNING else None


async def _update(
    batch_id: str,
    send: Callable[[WorkflowHandle[BatchWorkflow, BatchResult]], Awaitable[T]],
) -> T:
    settings = get_settings()
    client = await connect(settings)
    handle = await _running_handle(client, batch_id)
    if handle is None:
        report = await _report(batch_id)
        fail(
            f"batch {batch_id} is not running (status: {report.status})",
            f"see it with: keel batch status {batch_id}",
        )
    try:
        return await send(handle)
    except WorkflowUpdateFailedError as error:
        fail(_refusal_message(error), f"keel batch status {batch_id}")


def _refusal_message(error: WorkflowUpdateFailedError) -> str:
    cause = error.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or error)


def _print_ack(batch_id: str, ack: ControlAck) -> None:
    console.print(f"batch {batch_id}: {ack.status} — {ack.message}")
    console.print(f"follow: [cyan]keel batch status {batch_id} --watch[/]")


by_option = typer.Option(None, "--by", help="Who decides (default: your user name).")
reason_option = typer.Option(None, "--reason", help="Why (kept in the audit trail).")


@batch_app.command("pause")
def pause(batch_id: str, by: str | None = by_option, reason: str | None = reason_option) -> None:
    """Start no new items; what is in flight finishes."""
    request = ControlRequest(by=by or _whoami(), reason=reason)
    ack = _run(_update(batch_id, lambda h: h.execute_update(BatchWorkflow.pause, request)))
    _print_ack(batch_id, ack)
    console.print(f"resume: [cyan]keel batch resume {batch_id}[/]")


@batch_app.command("resume")
def resume(batch_id: str, by: str | None = by_option, reason: str | None = reason_option) -> None:
    """Resume a paused batch."""
    request = ControlRequest(by=by or _whoami(), reason=reason)
    _print_ack(
        batch_id, _run(_update(batch_id, lambda h: h.execute_update(BatchWorkflow.resume, request)))
    )


@batch_app.command("cancel")
def cancel(batch_id: str, by: str | None = by_option, reason: str | None = reason_option) -> None:
    """Cancel: pending items are skipped; items in flight finish (they are already paid for)."""
    request = ControlRequest(by=by or _whoami(), reason=reason)
    _print_ack(
        batch_id, _run(_update(batch_id, lambda h: h.execute_update(BatchWorkflow.cancel, request)))
    )


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

    async def go() -> str:
        report = await _report(batch_id)
        gate, proposed = report.pending_gate, report.pending_gate_draft
        if gate is None:
            fail(
                f"batch {batch_id} is not waiting at a budget gate (status: {report.status})",
                f"keel batch status {batch_id}",
            )
        action: str
        decision: ApproveDecision | EditDecision | RejectDecision
        if stop:
            action = "reject"
            decision = RejectDecision(
                reviewer=reviewer, gate=gate, reason=reason or "stop the batch at its budget"
            )
        else:
            amount = Decimal(str(raise_to))
            if amount <= report.spent_usd:
                fail(
                    f"${amount} does not cover what is already spent ({_money(report.spent_usd)})",
                    f"the gate proposes ${proposed}",
                )
            if proposed is not None and Decimal(proposed) == amount:
                action, decision = (
                    "approve",
                    ApproveDecision(reviewer=reviewer, gate=gate, comment=reason),
                )
            else:
                action, decision = (
                    "edit",
                    EditDecision(reviewer=reviewer, gate=gate, text=f"{amount}", comment=reason),
                )
        # The same sender as `keel approve`: the reviewer is checked against the reviewers table
        # as it is now, refusals are recorded, and a repeated decision counts once.
        settings = get_settings()
        client = await connect(settings)
        handle = await _running_handle(client, batch_id)
        if handle is None:
            fail(
                f"batch {batch_id} is not running (status: {report.status})",
                f"see it with: keel batch status {batch_id}",
            )
        try:
            sent = await DecisionSender(client, settings.reviewers, via="cli").send(
                handle.id, action, decision
            )
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
        handle = await _running_handle(client, batch_id)
        if handle is not None:
            try:
                ack: RetryFailedAck = await handle.execute_update(
                    BatchWorkflow.retry_failed, request
                )
            except WorkflowUpdateFailedError as error:
                fail(_refusal_message(error), f"keel batch status {batch_id}")
            console.print(f"batch {batch_id}: {ack.message}")
        else:
            report = await _report(batch_id)
            retryable = report.counts.failed - report.counts.invalid
            if retryable == 0:
                fail(f"batch {batch_id} has no failed items that can run again")
            await start_retry_run(client, settings, report)
            console.print(f"batch {batch_id}: {retryable} failed item(s) run again")
        console.print(f"follow: [cyan]keel batch status {batch_id} --watch[/]")

    _run(go())


async def start_retry_run(
    client: Client, settings: KeelSettings, report: BatchReport
) -> WorkflowHandle[BatchWorkflow, BatchResult]:
    """A finished batch's failed items run in a new execution of the same workflow id, so the
    ledger (keyed by workflow id + run) keeps metering one batch."""
    async with session_factory()() as session:
        batch = await session.get(Batch, report.id)
    assert batch is not None
    options = BatchOptions(
        tenant=batch.tenant,
        concurrency=batch.concurrency,
        route=batch.route,
        model=batch.model,
        budget_usd=batch.budget_usd,
        max_failure_rate=batch.max_failure_rate,
        budget_role=settings.batch_budget_role,
        budget_gate_deadline=timedelta(hours=settings.batch_budget_gate_hours),
    )
    return await client.start_workflow(
        BatchWorkflow.run,
        BatchInput(
            batch_id=report.id,
            options=options,
            retry_failed=True,
            history_event_limit=settings.batch_history_event_limit,
        ),
        id=report.workflow_id,
        task_queue=settings.batch_task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=tenant_search_attributes(batch.tenant, "batch"),
    )


# --- Results --------------------------------------------------------------------------------


@batch_app.command("results")
def results(
    batch_id: str,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here (default stdout)."),
) -> None:
    """One line per item in the OpenAI Batch API output shape (custom_id, response, error)."""

    async def go() -> dict[str, int]:
        await _report(batch_id)
        tally: dict[str, int] = {}
        sink = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            async with session_factory()() as session:
                async for item in iter_items(session, batch_id):
                    sink.write(json.dumps(openai_output_line(item), ensure_ascii=False) + "\n")
                    tally[item.status] = tally.get(item.status, 0) + 1
        finally:
            if output:
                sink.close()
        return tally

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
    _read_and_validate(file, strict)
    path = file.resolve()

    async def go() -> None:
        client = await connect(settings)
        await create_batch_schedule(client, settings, schedule_id, path, cron, options)

    try:
        _run(go())
    except RPCError as error:
        if error.status == RPCStatusCode.ALREADY_EXISTS:
            fail(
                f"schedule {schedule_id} already exists",
                f"delete it first: keel batch schedule-delete {schedule_id}",
            )
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


async def create_batch_schedule(
    client: Client,
    settings: KeelSettings,
    schedule_id: str,
    path: Path,
    cron: str,
    options: BatchOptions,
) -> None:
    await client.create_schedule(
        schedule_id,
        Schedule(
            action=ScheduleActionStartWorkflow(
                BatchWorkflow.run,
                BatchInput(
                    options=options,
                    source_path=str(path),
                    schedule_id=schedule_id,
                    history_event_limit=settings.batch_history_event_limit,
                ),
                # Temporal appends the scheduled time: batch-<schedule>-<time>.
                id=batch_workflow_id(schedule_id),
                task_queue=settings.batch_task_queue,
                typed_search_attributes=tenant_search_attributes(options.tenant, "batch"),
            ),
            spec=ScheduleSpec(cron_expressions=[cron]),
            # A run still going when the next is due: the next is skipped, never stacked.
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        ),
        # The server keeps cron as calendars: the memo keeps what the person typed.
        memo={SCHEDULE_MEMO_CRON: cron, SCHEDULE_MEMO_FILE: str(path)},
    )


@batch_app.command("schedule-list")
def schedule_list() -> None:
    """keel's batch schedules."""

    async def go() -> list[dict[str, Any]]:
        client = await connect(get_settings())
        found = []
        async for entry in await client.list_schedules():
            action = entry.schedule.action if entry.schedule else None
            workflow_type = getattr(action, "workflow", None)
            if workflow_type != "BatchWorkflow":
                continue
            memo = await entry.memo()
            found.append(
                {
                    "id": entry.id,
                    "cron": str(memo.get(SCHEDULE_MEMO_CRON, "—")),
                    "file": str(memo.get(SCHEDULE_MEMO_FILE, "—")),
                    "paused": bool(entry.schedule and entry.schedule.state.paused),
                    "next": entry.info.next_action_times[0].isoformat(timespec="seconds")
                    if entry.info and entry.info.next_action_times
                    else "—",
                }
            )
        return found

    schedules = _run(go())
    if not schedules:
        console.print('no batch schedules: [cyan]keel batch schedule FILE --cron "0 2 * * *"[/]')
        return
    table = Table(title="batch schedules", title_justify="left")
    for column in ("id", "cron", "file", "paused", "next run"):
        table.add_column(column)
    for entry in schedules:
        paused = "yes" if entry["paused"] else "no"
        table.add_row(entry["id"], entry["cron"], entry["file"], paused, entry["next"])
    console.print(table)


@batch_app.command("schedule-pause")
def schedule_pause(
    schedule_id: str,
    unpause: bool = typer.Option(False, "--unpause", help="Resume the schedule instead."),
) -> None:
    """Pause (or --unpause) a batch schedule."""

    async def go() -> None:
        client = await connect(get_settings())
        handle = client.get_schedule_handle(schedule_id)
        note = f"by keel batch schedule-pause ({_whoami()})"
        if unpause:
            await handle.unpause(note=note)
        else:
            await handle.pause(note=note)

    _schedule_call(schedule_id, go)
    console.print(f"schedule {schedule_id} {'resumed' if unpause else 'paused'}")


@batch_app.command("schedule-delete")
def schedule_delete(schedule_id: str) -> None:
    """Delete a batch schedule (batches it already ran stay)."""

    async def go() -> None:
        client = await connect(get_settings())
        await client.get_schedule_handle(schedule_id).delete()

    _schedule_call(schedule_id, go)
    console.print(f"schedule {schedule_id} deleted")


def _schedule_call(schedule_id: str, call: Callable[[], Awaitable[None]]) -> None:
    try:
        _run(call())
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            fail(f"no schedule {schedule_id!r}", "list them with: keel batch schedule-list")
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
    parsed = list(parse_lines(lines))
    print_validation(validate(parsed))
    batch_id = f"demo-{uuid.uuid4().hex[:6]}"
    client = await connect(settings)
    await submit_batch(
        client,
        settings,
        parsed,
        batch_id=batch_id,
        options=BatchOptions(concurrency=8, model="gpt-4o-mini"),
        source_name="demo.jsonl",
    )
    _print_next_steps(settings, batch_id)
    await _watch(settings, batch_id, interval=0.5)
    return batch_id
