"""Batch operations: submit, steer, retry, decide a budget gate, read results, schedule.

Each takes what it needs (settings, a Temporal client, a session factory), returns a typed result
and raises a typed error; the CLI (starters/batch.py) formats them and exits with its codes.
Reports read Postgres only, so they work while Temporal or the workers are down.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
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

from activities.batch.files import ParsedLine
from activities.batch.items import (
    BatchOptions,
    BatchReport,
    batch_report,
    batch_workflow_id,
    create_batch,
    insert_items,
    iter_items,
    list_batches,
    openai_output_line,
)
from activities.batch.provider_batches import chunk_rows
from contracts.approvals import ApproveDecision, EditDecision, RejectDecision
from contracts.batch import (
    BatchInput,
    BatchResult,
    ControlAck,
    ControlRequest,
    RetryFailedAck,
)
from contracts.provider_batch import ProviderBatchInput, ProviderBatchSettings
from contracts.search_attributes import tenant_search_attributes
from infra.settings import KeelSettings
from infra.tables import Batch
from services.approval_client import DecisionSender, DecisionSent
from workflows.batch import PagedBatchWorkflow
from workflows.provider_batch import ProviderBatchWorkflow

BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
SCHEDULE_MEMO_CRON, SCHEDULE_MEMO_FILE = "keel_cron", "keel_file"

# Batches run as PagedBatchWorkflow; batch_v1's BatchWorkflow (started before pages) answers the
# same updates and queries by the same names, so one handle type steers both.
BatchHandle = WorkflowHandle[PagedBatchWorkflow, BatchResult]
BATCH_WORKFLOW_TYPES = frozenset({"PagedBatchWorkflow", "BatchWorkflow"})
Sessions = async_sessionmaker[AsyncSession]


# --- Errors -------------------------------------------------------------------------------------


class BatchError(Exception):
    """A batch operation refused: ``message`` says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InvalidBatchOptions(BatchError):
    pass


class BatchExistsError(BatchError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(
            f"batch {batch_id} already exists",
            f"choose another --id, or look at it: keel batch status {batch_id}",
        )
        self.batch_id = batch_id


class BatchNotFound(BatchError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r}", "list batches with: keel batch list")
        self.batch_id = batch_id


class BatchNotRunning(BatchError):
    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(
            f"batch {batch_id} is not running (status: {status})",
            f"see it with: keel batch status {batch_id}",
        )
        self.batch_id, self.status = batch_id, status


class BatchUpdateRefused(BatchError):
    """The running batch refused a control (its own words)."""

    def __init__(self, batch_id: str, error: WorkflowUpdateFailedError) -> None:
        cause = error.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or error)
        super().__init__(message, f"keel batch status {batch_id}")
        self.batch_id = batch_id


class NothingToRetry(BatchError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(
            f"batch {batch_id} has no failed items that can run again",
            f"malformed lines cannot run: see them with keel batch results {batch_id}, fix the "
            "file and start it as a new batch",
        )
        self.batch_id = batch_id


class NotAtBudgetGate(BatchError):
    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(
            f"batch {batch_id} is not waiting at a budget gate (status: {status})",
            f"keel batch status {batch_id}",
        )
        self.batch_id, self.status = batch_id, status


class BudgetBelowSpend(BatchError):
    def __init__(self, amount: Decimal, spent: str, proposed: str | None) -> None:
        super().__init__(
            f"${amount} does not cover what is already spent ({spent})",
            f"the gate proposes ${proposed}",
        )
        self.amount = amount


class ScheduleExists(BatchError):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(
            f"schedule {schedule_id} already exists; nothing was changed",
            f"see it: keel batch schedule-list · replace it: keel batch schedule-delete "
            f"{schedule_id}, then run this command again · or keep both: --id ANOTHER_ID",
        )
        self.schedule_id = schedule_id


class ScheduleNotFound(BatchError):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"no schedule {schedule_id!r}", "list them with: keel batch schedule-list")
        self.schedule_id = schedule_id


def money(amount: Decimal | None) -> str:
    return "—" if amount is None else f"${amount:,.4f}"


# --- Starting -----------------------------------------------------------------------------------


def batch_options(
    settings: KeelSettings,
    *,
    tenant: str,
    concurrency: int | None,
    route: str | None,
    model: str | None,
    budget_usd: float | None,
    max_failure_rate: float | None,
    strict: bool,
) -> BatchOptions:
    """A batch's options from what a person gave, the settings filling the rest."""
    if route and model:
        raise InvalidBatchOptions("give either --route or --model, not both")
    if route and route not in settings.routes:
        raise InvalidBatchOptions(
            f"unknown route {route!r}", f"configured routes: {', '.join(sorted(settings.routes))}"
        )
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


async def submit_batch(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    lines: Sequence[ParsedLine],
    *,
    batch_id: str,
    options: BatchOptions,
    source_name: str | None,
    history_event_limit: int | None = None,
) -> BatchHandle:
    """Load validated lines into Postgres and start the batch's workflow on the batch queue.

    Raises ``BatchExistsError`` (before writing anything) when the id is taken."""
    async with sessions.begin() as session:
        if not await create_batch(session, batch_id, options, source_name=source_name):
            raise BatchExistsError(batch_id)
        await insert_items(session, batch_id, lines)
    params = BatchInput(
        batch_id=batch_id,
        options=options,
        history_event_limit=history_event_limit or settings.batch_history_event_limit,
    )
    return await client.start_workflow(
        PagedBatchWorkflow.run,
        params,
        id=batch_workflow_id(batch_id),
        task_queue=settings.batch_task_queue,
        search_attributes=tenant_search_attributes(options.tenant, "batch"),
        static_summary=f"batch {batch_id} · {len(lines)} items · tenant {options.tenant}",
        static_details=batch_details(options, source_name),
    )


def batch_details(options: BatchOptions, source_name: str | None, *, retry: bool = False) -> str:
    """A batch's options as the Web UI shows them under its summary."""
    models = (
        (options.route and f"route {options.route}")
        or (options.model and f"model {options.model}")
        or "each line's model"
    )
    parts = [
        "Retry of the failed items." if retry else f"From {source_name or 'an uploaded file'}.",
        f"{options.concurrency} calls at a time, {models}.",
    ]
    if options.budget_usd is not None:
        parts.append(f"Budget ${options.budget_usd}.")
    if options.max_failure_rate is not None:
        parts.append(f"Stops above a {options.max_failure_rate:.0%} failure rate.")
    return " ".join(parts)


class BatchVia(StrEnum):
    """How a batch's items reach the models: live calls (full price, as fast as the window
    allows) or the providers' batch APIs (half price, results within 24 h)."""

    LIVE = "live"
    PROVIDER = "provider"


DEADLINE_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_deadline(text: str) -> timedelta:
    """``--deadline 6h`` (s, m, h or d); ``InvalidBatchOptions`` otherwise."""
    match = DEADLINE_PATTERN.match(text.strip())
    if match is None:
        raise InvalidBatchOptions(
            f"invalid deadline {text!r}", "give a number and a unit: 90m, 6h, 1.5d"
        )
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    seconds = float(match.group(1)) * unit
    if seconds <= 0:
        raise InvalidBatchOptions("the deadline must be in the future", "e.g. --deadline 6h")
    return timedelta(seconds=seconds)


async def submit_provider_batch(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    lines: Sequence[ParsedLine],
    *,
    batch_id: str,
    options: BatchOptions,
    source_name: str | None,
    deadline: timedelta | None = None,
    provider_settings: ProviderBatchSettings | None = None,
) -> WorkflowHandle[ProviderBatchWorkflow, BatchResult]:
    """Load validated lines into Postgres and start the batch through the providers' batch APIs
    (``keel batch start --via provider``); what they cannot finish (by ``deadline``) runs live.

    Raises ``BatchExistsError`` (before writing anything) when the id is taken."""
    async with sessions.begin() as session:
        if not await create_batch(session, batch_id, options, source_name=source_name):
            raise BatchExistsError(batch_id)
        await insert_items(session, batch_id, lines)
    params = ProviderBatchInput(
        batch_id=batch_id,
        options=options,
        settings=provider_settings or settings.provider_batch,
        deadline=datetime.now(UTC) + deadline if deadline is not None else None,
    )
    return await client.start_workflow(
        ProviderBatchWorkflow.run,
        params,
        id=batch_workflow_id(batch_id),
        task_queue=settings.batch_task_queue,
        search_attributes=tenant_search_attributes(options.tenant, "batch"),
    )


async def provider_chunks_of(sessions: Sessions, batch_id: str) -> list[ProviderChunkReport]:
    """The batch's provider batches (none for a live batch), oldest first."""
    async with sessions() as session:
        rows = await chunk_rows(session, batch_id)
    return [
        ProviderChunkReport(
            chunk_id=row.id,
            provider=row.provider,
            model=row.model,
            items=row.item_count,
            status=row.status,
            provider_batch_id=row.provider_batch_id,
            provider_status=row.provider_status,
            request_counts=row.request_counts or {},
            succeeded=row.succeeded,
            failed=row.failed,
            returned=row.returned,
            cost_usd=row.cost_usd,
        )
        for row in rows
    ]


@dataclass(frozen=True)
class ProviderChunkReport:
    chunk_id: str
    provider: str
    model: str
    items: int
    status: str
    provider_batch_id: str | None
    provider_status: str | None
    request_counts: dict[str, int]
    succeeded: int
    failed: int
    returned: int
    cost_usd: Decimal | None


# --- Progress -----------------------------------------------------------------------------------


async def report_of(sessions: Sessions, batch_id: str) -> BatchReport:
    """The batch's progress as Postgres has it; ``BatchNotFound`` when there is no such batch."""
    async with sessions() as session:
        report = await batch_report(session, batch_id)
    if report is None:
        raise BatchNotFound(batch_id)
    return report


async def recent_reports(sessions: Sessions, limit: int) -> list[BatchReport]:
    """The most recent batches' reports, newest first."""
    async with sessions() as session:
        batches = await list_batches(session, limit)
        reports = [await batch_report(session, batch.id) for batch in batches]
    return [report for report in reports if report is not None]


# --- Controls -----------------------------------------------------------------------------------


class BatchControl(StrEnum):
    """The Updates a running batch accepts from a person (their registered names)."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


async def running_handle(client: Client, batch_id: str) -> BatchHandle | None:
    """The batch's workflow if it is running now, else None."""
    handle: BatchHandle = client.get_workflow_handle(
        batch_workflow_id(batch_id), result_type=BatchResult
    )
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return handle if description.status == WorkflowExecutionStatus.RUNNING else None


async def control_batch(
    client: Client,
    sessions: Sessions,
    batch_id: str,
    control: BatchControl,
    request: ControlRequest,
) -> ControlAck:
    """Pause, resume or cancel a running batch; ``BatchNotRunning`` or ``BatchUpdateRefused``."""
    handle = await running_handle(client, batch_id)
    if handle is None:
        report = await report_of(sessions, batch_id)
        raise BatchNotRunning(batch_id, report.status)
    update = {
        BatchControl.PAUSE: PagedBatchWorkflow.pause,
        BatchControl.RESUME: PagedBatchWorkflow.resume,
        BatchControl.CANCEL: PagedBatchWorkflow.cancel,
    }[control]
    try:
        return await handle.execute_update(update, request)
    except WorkflowUpdateFailedError as error:
        raise BatchUpdateRefused(batch_id, error) from error


async def retry_failed_items(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    batch_id: str,
    request: ControlRequest,
) -> str:
    """Run the failed items again: in the running batch, or in a new run of a finished one.

    Returns what was done, in words; raises ``BatchUpdateRefused``, ``BatchNotFound`` or
    ``NothingToRetry``."""
    handle = await running_handle(client, batch_id)
    if handle is not None:
        try:
            ack: RetryFailedAck = await handle.execute_update(
                PagedBatchWorkflow.retry_failed, request
            )
        except WorkflowUpdateFailedError as error:
            raise BatchUpdateRefused(batch_id, error) from error
        return ack.message
    report = await report_of(sessions, batch_id)
    retryable = report.counts.failed - report.counts.invalid
    if retryable == 0:
        raise NothingToRetry(batch_id)
    await start_retry_run(client, settings, sessions, report)
    return f"{retryable} failed item(s) run again"


async def start_retry_run(
    client: Client, settings: KeelSettings, sessions: Sessions, report: BatchReport
) -> BatchHandle:
    """A finished batch's failed items run in a new execution of the same workflow id, so the
    ledger (keyed by workflow id + run) keeps metering one batch."""
    async with sessions() as session:
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
        PagedBatchWorkflow.run,
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
        static_summary=f"batch {report.id} · retry failed items · tenant {batch.tenant}",
        static_details=batch_details(options, batch.source_name, retry=True),
    )


@dataclass(frozen=True)
class BudgetDecision:
    """How a budget gate is decided: stop the batch, or raise its budget to ``raise_to``."""

    reviewer: str
    stop: bool = False
    raise_to: Decimal | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CheckedBudgetDecision:
    """A budget decision checked against the batch as Postgres has it, ready to send."""

    report: BatchReport
    action: str
    decision: ApproveDecision | EditDecision | RejectDecision


async def check_budget_decision(
    sessions: Sessions, batch_id: str, decision: BudgetDecision
) -> CheckedBudgetDecision:
    """The gate decision a budget decision makes, checked against the batch's report (Postgres
    only): ``BatchNotFound``, ``NotAtBudgetGate``, ``BudgetBelowSpend``. Raising the budget to
    what the gate proposes approves the proposal; another amount is an edit; stopping rejects."""
    report = await report_of(sessions, batch_id)
    gate, proposed = report.pending_gate, report.pending_gate_draft
    if gate is None:
        raise NotAtBudgetGate(batch_id, report.status)
    if decision.stop:
        reason = decision.reason or "stop the batch at its budget"
        rejection = RejectDecision(reviewer=decision.reviewer, gate=gate, reason=reason)
        return CheckedBudgetDecision(report, "reject", rejection)
    amount = Decimal(str(decision.raise_to))
    if amount <= report.spent_usd:
        raise BudgetBelowSpend(amount, money(report.spent_usd), proposed)
    if proposed is not None and Decimal(proposed) == amount:
        approval = ApproveDecision(reviewer=decision.reviewer, gate=gate, comment=decision.reason)
        return CheckedBudgetDecision(report, "approve", approval)
    edit = EditDecision(
        reviewer=decision.reviewer, gate=gate, text=f"{amount}", comment=decision.reason
    )
    return CheckedBudgetDecision(report, "edit", edit)


async def send_budget_decision(
    client: Client, settings: KeelSettings, checked: CheckedBudgetDecision
) -> DecisionSent:
    """Send a checked budget decision through the same sender as `keel approve`: the reviewer
    is checked against the reviewers table as it is now, refusals are recorded, and a repeated
    decision counts once. Raises ``BatchNotRunning`` and
    ``infra.approval_client.DecisionRefused``."""
    handle = await running_handle(client, checked.report.id)
    if handle is None:
        raise BatchNotRunning(checked.report.id, checked.report.status)
    return await DecisionSender(client, settings.reviewers, via="cli").send(
        handle.id, checked.action, checked.decision
    )


async def decide_budget(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    batch_id: str,
    decision: BudgetDecision,
) -> DecisionSent:
    """``check_budget_decision`` then ``send_budget_decision``."""
    checked = await check_budget_decision(sessions, batch_id, decision)
    return await send_budget_decision(client, settings, checked)


# --- Results ------------------------------------------------------------------------------------


async def write_results(sessions: Sessions, batch_id: str, sink: TextIO) -> dict[str, int]:
    """One JSON line per item to ``sink`` in the OpenAI Batch API output shape (custom_id,
    response, error); returns how many items ended in each status. ``BatchNotFound`` first."""
    await report_of(sessions, batch_id)
    tally: dict[str, int] = {}
    async with sessions() as session:
        async for item in iter_items(session, batch_id):
            sink.write(json.dumps(openai_output_line(item), ensure_ascii=False) + "\n")
            tally[item.status] = tally.get(item.status, 0) + 1
    return tally


# --- Schedules ----------------------------------------------------------------------------------


async def create_batch_schedule(
    client: Client,
    settings: KeelSettings,
    schedule_id: str,
    path: Path,
    cron: str,
    options: BatchOptions,
) -> None:
    """A Temporal Schedule that runs the file at ``path`` as a batch on ``cron``; each run reads
    the file then, on the batch worker. ``ScheduleExists`` when the id is taken."""
    try:
        await client.create_schedule(
            schedule_id,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    PagedBatchWorkflow.run,
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
    except ScheduleAlreadyRunningError as error:  # what the SDK raises for a taken id
        raise ScheduleExists(schedule_id) from error


@dataclass(frozen=True)
class BatchSchedule:
    id: str
    cron: str
    file: str
    paused: bool
    next_run: str


async def batch_schedules(client: Client) -> list[BatchSchedule]:
    """keel's batch schedules (those whose action starts the batch workflow)."""
    found = []
    async for entry in await client.list_schedules():
        action = entry.schedule.action if entry.schedule else None
        workflow_type = getattr(action, "workflow", None)
        if workflow_type not in BATCH_WORKFLOW_TYPES:
            continue
        memo = await entry.memo()
        found.append(
            BatchSchedule(
                id=entry.id,
                cron=str(memo.get(SCHEDULE_MEMO_CRON, "—")),
                file=str(memo.get(SCHEDULE_MEMO_FILE, "—")),
                paused=bool(entry.schedule and entry.schedule.state.paused),
                next_run=entry.info.next_action_times[0].isoformat(timespec="seconds")
                if entry.info and entry.info.next_action_times
                else "—",
            )
        )
    return found


async def pause_batch_schedule(
    client: Client, schedule_id: str, *, note: str, unpause: bool = False
) -> None:
    """Pause (or unpause) a schedule; ``ScheduleNotFound`` when there is none."""
    handle = client.get_schedule_handle(schedule_id)
    try:
        if unpause:
            await handle.unpause(note=note)
        else:
            await handle.pause(note=note)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFound(schedule_id) from error
        raise


async def delete_batch_schedule(client: Client, schedule_id: str) -> None:
    """Delete a schedule (batches it already ran stay); ``ScheduleNotFound`` when there is none."""
    try:
        await client.get_schedule_handle(schedule_id).delete()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFound(schedule_id) from error
        raise
