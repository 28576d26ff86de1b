"""Batches and their items in Postgres: loading a file, claiming items, recording outcomes,
metering spend from the ledger, and the reads behind ``keel batch status | results | list``.

The batch workflow holds only counters and a handful of claimed items; everything else lives
here. Every write is idempotent, because every activity may run twice:

* a claim is named by a token (workflow run + claim number): running it again returns the items
  it took the first time instead of taking new ones;
* an outcome is written to the item's own row, keyed by (batch_id, custom_id), and only while
  the item is ``running``: writing it twice changes nothing, and one item has one result;
* loading inserts with ON CONFLICT DO NOTHING on (batch_id, custom_id).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.batch.files import (
    BatchFileLimits,
    BatchFileRefused,
    ParsedLine,
    ValidationReport,
    invalid_line_id,
    parse_file,
    validate,
)
from contracts.approvals import GateStatus
from contracts.batch import (
    BatchCounts,
    BatchOptions,
    BatchStatus,
    BeginRunInput,
    BeginRunResult,
    ClaimedItem,
    ClaimInput,
    ItemOutcome,
    ItemRequest,
    ItemStatus,
    LoadFileInput,
    LoadSummary,
    MeterInput,
    RecordOutcomesInput,
    RecordOutcomesResult,
    ReleaseInput,
    ResetFailedInput,
    StatusInput,
    batch_workflow_id,
)
from infra.tables import Approval, Batch, BatchItem, LlmCall

INSERT_CHUNK = 1000
INVALID_REQUEST = "invalid_request"


TERMINAL_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.ABORTED, BatchStatus.REFUSED}
)


# --- Loading ---------------------------------------------------------------------------------


def _item_row(batch_id: str, line: ParsedLine) -> dict[str, Any]:
    if line.request is not None:
        return {
            "batch_id": batch_id,
            "custom_id": line.custom_id,
            "line_no": line.line_no,
            "status": "pending",
            "request": line.request.model_dump(mode="json", exclude_none=True),
            "model": line.request.model,
        }
    return {
        "batch_id": batch_id,
        "custom_id": line.custom_id or invalid_line_id(line.line_no),
        "line_no": line.line_no,
        "status": "failed",
        "request": None,
        "model": None,
        "error_class": INVALID_REQUEST,
        "error_message": f"line {line.line_no}: {line.problem}",
    }


async def create_batch(
    session: AsyncSession,
    batch_id: str,
    options: BatchOptions,
    *,
    source_name: str | None,
    status: str = "queued",
    schedule_id: str | None = None,
) -> bool:
    """Insert the batch row; False when a batch with this id already exists."""
    created = await session.execute(
        insert(Batch)
        .values(
            id=batch_id,
            tenant=options.tenant,
            workflow_id=batch_workflow_id(batch_id),
            status=status,
            source_name=source_name,
            route=options.route,
            model=options.model,
            concurrency=options.concurrency,
            budget_usd=options.budget_usd,
            max_failure_rate=options.max_failure_rate,
            schedule_id=schedule_id,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Batch.id)
    )
    return created.first() is not None


async def insert_items(
    session: AsyncSession,
    batch_id: str,
    lines: Iterable[ParsedLine],
    on_chunk: Any = None,
) -> tuple[int, int]:
    """Insert the items in chunks (a retried load inserts nothing twice); (total, invalid)."""
    total = invalid = 0
    chunk: list[dict[str, Any]] = []

    async def flush() -> None:
        if chunk:
            await session.execute(
                insert(BatchItem).on_conflict_do_nothing(index_elements=["batch_id", "custom_id"]),
                chunk,
            )
            if on_chunk is not None:
                on_chunk(total)
            chunk.clear()

    for line in lines:
        total += 1
        invalid += 0 if line.valid else 1
        chunk.append(_item_row(batch_id, line))
        if len(chunk) >= INSERT_CHUNK:
            await flush()
    await flush()
    await session.execute(update(Batch).where(Batch.id == batch_id).values(total_items=total))
    return total, invalid


def refusal(report: ValidationReport, strict: bool) -> str | None:
    """Why a file must not run at all, or None."""
    if report.duplicates:
        first = report.duplicates[0]
        return (
            f"{len(report.duplicates)} duplicate custom_id(s), e.g. {first.custom_id!r} on lines "
            f"{', '.join(map(str, first.line_numbers))}: each custom_id must be unique"
        )
    if report.valid == 0:
        # Empty, or every line malformed: either way nothing could run, so nothing starts.
        return no_valid_items(report)
    if strict and report.problems:
        return f"{len(report.problems)} malformed line(s) and --strict is set"
    return None


# How many of a refused file's malformed lines its refusal quotes.
PROBLEMS_QUOTED = 3


def no_valid_items(report: ValidationReport) -> str:
    if not report.problems:
        return f"the file has no valid items: {report.lines} line(s)"
    first = "; ".join(
        f"line {problem.line_no}: {problem.reason}" for problem in report.problems[:PROBLEMS_QUOTED]
    )
    more = len(report.problems) - PROBLEMS_QUOTED
    return (
        f"the file has no valid items: {report.lines} line(s), {len(report.problems)} malformed "
        f"({first}{f'; and {more} more' if more > 0 else ''})"
    )


def _read_lines(path: Path, limits: BatchFileLimits) -> list[ParsedLine] | None:
    return list(parse_file(path, limits)) if path.is_file() else None


# --- Running -----------------------------------------------------------------------------------


async def count_items(session: AsyncSession, batch_id: str) -> BatchCounts:
    rows = await session.execute(
        select(
            BatchItem.status,
            func.count(),
            func.count().filter(BatchItem.error_class == INVALID_REQUEST),
        )
        .where(BatchItem.batch_id == batch_id)
        .group_by(BatchItem.status)
    )
    counts = BatchCounts()
    for status, count, invalid in rows:
        setattr(counts, status, count)
        counts.total += count
        counts.invalid += invalid
    return counts


async def ledger_spend(session: AsyncSession, workflow_id: str) -> Decimal:
    """What the batch's LLM attempts cost, from the ledger (every attempt, failed ones too)."""
    spent = await session.scalar(
        select(func.coalesce(func.sum(LlmCall.cost_usd), 0)).where(
            LlmCall.workflow_id == workflow_id
        )
    )
    return Decimal(spent or 0)


async def _reset_failed(session: AsyncSession, batch_id: str) -> int:
    """Failed items that can run again (malformed lines cannot) go back to pending."""
    result = await session.execute(
        update(BatchItem)
        .where(
            BatchItem.batch_id == batch_id,
            BatchItem.status == ItemStatus.FAILED.value,
            BatchItem.request.is_not(None),
        )
        .values(status="pending", claim_token=None, finished_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


_CLAIM = text(
    """
    WITH page AS (
        SELECT id, line_no,
               SUM(octet_length(request::text)) OVER (ORDER BY line_no) AS running_bytes,
               ROW_NUMBER() OVER (ORDER BY line_no) AS position
          FROM (SELECT id, line_no, request FROM batch_items
                 WHERE batch_id = :batch_id AND status = 'pending'
                 ORDER BY line_no LIMIT :limit) pending
    )
    UPDATE batch_items AS item
       SET status = 'running', claim_token = :claim_token, run_count = item.run_count + 1,
           updated_at = now()
      FROM page
     WHERE item.id = page.id AND (page.running_bytes <= :max_bytes OR page.position = 1)
    RETURNING item.custom_id, item.line_no, item.request
    """
)


# One statement for many outcomes (one round trip, and a real row count), only while the items
# are running: a replayed write changes nothing, and no item has two results.
_RECORD = text(
    """
    UPDATE batch_items AS item
       SET status = o.status, response = o.response, model = o.model,
           error_class = o.error_class, error_message = o.error_message, cost_usd = o.cost_usd,
           finished_at = now(), updated_at = now()
      FROM jsonb_to_recordset(CAST(:outcomes AS jsonb)) AS o(
               custom_id text, status text, response jsonb, model text, error_class text,
               error_message text, cost_usd numeric)
     WHERE item.batch_id = :batch_id AND item.custom_id = o.custom_id
       AND item.status = 'running'
    """
)


def _outcome_row(outcome: ItemOutcome) -> dict[str, Any]:
    return {
        "custom_id": outcome.custom_id,
        "status": outcome.status,
        "response": outcome.response(),
        "model": outcome.model,
        "error_class": outcome.error_class,
        "error_message": outcome.error_message,
        "cost_usd": str(outcome.cost_usd) if outcome.cost_usd is not None else None,
    }


async def record_outcomes(session: AsyncSession, batch_id: str, outcomes: list[ItemOutcome]) -> int:
    """Write each outcome to its item's row (the writer activity's and a page's flush); how many
    items took theirs."""
    if not outcomes:
        return 0
    result = await session.execute(
        _RECORD,
        {"batch_id": batch_id, "outcomes": json.dumps([_outcome_row(o) for o in outcomes])},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- Reports (the CLI) --------------------------------------------------------------------------


class BatchReport(BaseModel):
    id: str
    tenant: str
    workflow_id: str
    status: str
    status_reason: str | None
    source_name: str | None
    concurrency: int
    budget_usd: Decimal | None
    max_failure_rate: float | None
    schedule_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: BatchCounts
    spent_usd: Decimal
    pending_gate: str | None = None
    pending_gate_reason: str | None = None
    # What the gate proposes: the budget that should finish the batch.
    pending_gate_draft: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


async def batch_report(session: AsyncSession, batch_id: str) -> BatchReport | None:
    batch = await session.get(Batch, batch_id)
    if batch is None:
        return None
    gate = (
        await session.execute(
            select(Approval.gate, Approval.reason_requested, Approval.draft)
            .where(
                Approval.workflow_id == batch.workflow_id,
                Approval.status == GateStatus.PENDING.value,
            )
            .order_by(Approval.id.desc())
            .limit(1)
        )
    ).first()
    return BatchReport(
        id=batch.id,
        tenant=batch.tenant,
        workflow_id=batch.workflow_id,
        status=batch.status,
        status_reason=batch.status_reason,
        source_name=batch.source_name,
        concurrency=batch.concurrency,
        budget_usd=batch.budget_usd,
        max_failure_rate=batch.max_failure_rate,
        schedule_id=batch.schedule_id,
        created_at=batch.created_at,
        started_at=batch.started_at,
        finished_at=batch.finished_at,
        counts=await count_items(session, batch_id),
        spent_usd=await ledger_spend(session, batch.workflow_id),
        pending_gate=gate.gate if gate else None,
        pending_gate_reason=gate.reason_requested if gate else None,
        pending_gate_draft=gate.draft if gate else None,
    )


async def list_batches(session: AsyncSession, limit: int = 50) -> list[Batch]:
    result = await session.execute(select(Batch).order_by(Batch.created_at.desc()).limit(limit))
    return list(result.scalars())


async def iter_items(session: AsyncSession, batch_id: str) -> AsyncIterator[BatchItem]:
    """Every item in file order, streamed (a 100k-item batch is never all in memory)."""
    result = await session.stream_scalars(
        select(BatchItem)
        .where(BatchItem.batch_id == batch_id)
        .order_by(BatchItem.line_no)
        .execution_options(yield_per=1000)
    )
    async for item in result:
        yield item


def openai_output_line(item: BatchItem) -> dict[str, Any]:
    """One line of the OpenAI Batch API's output file for an item."""
    line: dict[str, Any] = {"id": f"batch_req_{item.id}", "custom_id": item.custom_id}
    response = item.response
    if item.status == ItemStatus.OK and response is not None:
        usage = response.get("usage") or {}
        prompt_tokens = int(usage.get("input_tokens", 0))
        completion_tokens = int(usage.get("output_tokens", 0))
        created = int((item.finished_at or item.updated_at).timestamp())
        line["response"] = {
            "status_code": 200,
            "request_id": f"{item.batch_id}/{item.custom_id}",
            "body": {
                "id": f"chatcmpl-{item.batch_id}-{item.id}",
                "object": "chat.completion",
                "created": created,
                "model": response.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": response.get("text")},
                        "finish_reason": response.get("finish_reason") or "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        }
        line["error"] = None
    else:
        line["response"] = None
        line["error"] = {
            "code": item.error_class or item.status,
            "message": item.error_message
            or (
                "not run yet"
                if item.status in (ItemStatus.PENDING, ItemStatus.RUNNING)
                else item.status
            ),
        }
    return line


# --- Activities ------------------------------------------------------------------------------


class BatchItemActivities:
    """The batch activities, with the worker's database sessions and the batch-file limits
    its settings give (what a scheduled batch's file may hold)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], limits: BatchFileLimits) -> None:
        self._sessions = sessions
        self._limits = limits

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.load_batch_file,
            self.begin_batch_run,
            self.claim_batch_items,
            self.release_batch_items,
            self.record_batch_item_outcomes,
            self.reset_failed_batch_items,
            self.meter_batch_spend,
            self.set_batch_status,
        ]

    @activity.defn(name="load_batch_file")
    async def load_batch_file(self, params: LoadFileInput) -> LoadSummary:
        """For scheduled batches: read the file on the worker, validate it, load its items.

        A file with duplicate ids (or, with strict, any malformed line) is refused: the batch row
        records why, and the activity fails non-retryably (retrying cannot fix a file)."""
        path = Path(params.path)
        # Reading and parsing is blocking work: off the event loop, or every activity on this
        # worker would stall while a large file loads.
        reason: str | None
        try:
            lines = await asyncio.to_thread(_read_lines, path, self._limits)
        except BatchFileRefused as too_large:  # over a size limit: refused whole, like a bad file
            lines, reason = [], str(too_large)
        else:
            if lines is None:
                raise ApplicationError(
                    f"batch file {path} not found on the worker: a scheduled batch reads its file "
                    "at run time, so the path must exist where the keel-batch worker runs",
                    type="BatchFileMissing",
                    non_retryable=True,
                )
            reason = refusal(validate(lines), params.options.strict)
        async with self._sessions.begin() as session:
            created = await create_batch(
                session,
                params.batch_id,
                params.options,
                source_name=str(path),
                status="refused" if reason else "loading",
                schedule_id=params.schedule_id,
            )
            if reason:
                await session.execute(
                    update(Batch)
                    .where(Batch.id == params.batch_id)
                    .values(status="refused", status_reason=reason, finished_at=func.now())
                )
        if reason:
            raise ApplicationError(reason, type="BatchFileRefused", non_retryable=True)
        async with self._sessions.begin() as session:
            total, invalid = await insert_items(
                session, params.batch_id, lines, on_chunk=lambda done: activity.heartbeat(done)
            )
        return LoadSummary(total=total, invalid=invalid, created=created)

    @activity.defn(name="begin_batch_run")
    async def begin_batch_run(self, params: BeginRunInput) -> BeginRunResult:
        """Start (or continue) a batch run: items a previous run claimed but never started go back
        to pending, and the batch is marked running."""
        async with self._sessions.begin() as session:
            exists = await session.get(Batch, params.batch_id)
            if exists is None:
                raise ApplicationError(
                    f"batch {params.batch_id} does not exist (load it with `keel batch start`)",
                    type="BatchNotFound",
                    non_retryable=True,
                )
            released = await session.execute(
                update(BatchItem)
                .where(
                    BatchItem.batch_id == params.batch_id,
                    BatchItem.status == ItemStatus.RUNNING.value,
                )
                .values(status="pending", claim_token=None, run_count=BatchItem.run_count - 1)
            )
            retried = 0
            if params.retry_failed:
                retried = await _reset_failed(session, params.batch_id)
            await session.execute(
                update(Batch)
                .where(Batch.id == params.batch_id)
                .values(
                    status="running",
                    workflow_id=params.workflow_id,
                    status_reason=None,
                    started_at=func.coalesce(Batch.started_at, func.now()),
                    finished_at=None,
                )
            )
            return BeginRunResult(
                counts=await count_items(session, params.batch_id),
                spent_usd=await ledger_spend(session, params.workflow_id),
                retried=retried,
                released=released.rowcount,  # type: ignore[attr-defined]
            )

    @activity.defn(name="reset_failed_batch_items")
    async def reset_failed_batch_items(self, params: ResetFailedInput) -> int:
        async with self._sessions.begin() as session:
            return await _reset_failed(session, params.batch_id)

    @activity.defn(name="claim_batch_items")
    async def claim_batch_items(self, params: ClaimInput) -> list[ClaimedItem]:
        """Take the next pending items in file order; the same claim token returns the same
        items."""
        async with self._sessions.begin() as session:
            earlier = await session.execute(
                select(BatchItem.custom_id, BatchItem.line_no, BatchItem.request)
                .where(BatchItem.claim_token == params.claim_token)
                .order_by(BatchItem.line_no)
            )
            rows = list(earlier)
            if not rows:
                rows = sorted(
                    await session.execute(
                        _CLAIM,
                        {
                            "batch_id": params.batch_id,
                            "claim_token": params.claim_token,
                            "limit": params.limit,
                            "max_bytes": params.max_bytes,
                        },
                    ),
                    key=lambda row: row.line_no,
                )
        return [
            ClaimedItem(
                custom_id=row.custom_id,
                line_no=row.line_no,
                request=ItemRequest.model_validate(row.request),
            )
            for row in rows
        ]

    @activity.defn(name="release_batch_items")
    async def release_batch_items(self, params: ReleaseInput) -> int:
        """Claimed items the run will not answer go back: only those still running under the
        claim (ReleaseInput), never items another claim has taken since."""
        conditions = [
            BatchItem.batch_id == params.batch_id,
            BatchItem.status == ItemStatus.RUNNING.value,
        ]
        if params.claim_token is not None:
            conditions.append(BatchItem.claim_token == params.claim_token)
            if params.custom_ids:
                conditions.append(BatchItem.custom_id.in_(params.custom_ids))
        else:
            if not params.custom_ids:
                return 0
            # A legacy caller names items of several claims: those the calling run made.
            run_claims = f"{activity.info().workflow_run_id}/"
            conditions += [
                BatchItem.custom_id.in_(params.custom_ids),
                func.starts_with(BatchItem.claim_token, run_claims),
            ]
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(BatchItem)
                .where(*conditions)
                .values(status="pending", claim_token=None, run_count=BatchItem.run_count - 1)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    @activity.defn(name="record_batch_item_outcomes")
    async def record_batch_item_outcomes(self, params: RecordOutcomesInput) -> RecordOutcomesResult:
        """Write each item's outcome to its row. Only a ``running`` item takes an outcome, so a
        replayed write is a no-op and no item ever has two results."""
        async with self._sessions.begin() as session:
            recorded = await record_outcomes(session, params.batch_id, params.outcomes)
            spent = (
                await ledger_spend(session, params.meter_workflow_id)
                if params.meter_workflow_id
                else None
            )
        return RecordOutcomesResult(recorded=recorded, spent_usd=spent)

    @activity.defn(name="meter_batch_spend")
    async def meter_batch_spend(self, params: MeterInput) -> Decimal:
        async with self._sessions() as session:
            return await ledger_spend(session, params.workflow_id)

    @activity.defn(name="set_batch_status")
    async def set_batch_status(self, params: StatusInput) -> BatchCounts:
        async with self._sessions.begin() as session:
            if params.skip_pending:
                await session.execute(
                    update(BatchItem)
                    .where(
                        BatchItem.batch_id == params.batch_id,
                        BatchItem.status.in_(["pending", "running"]),
                    )
                    .values(
                        status="skipped",
                        error_class="skipped",
                        error_message=params.skip_reason or params.reason,
                        finished_at=func.now(),
                    )
                )
            values: dict[str, Any] = {"status": params.status, "status_reason": params.reason}
            if params.final:
                values["finished_at"] = func.now()
            if params.budget_usd is not None:
                values["budget_usd"] = params.budget_usd
            await session.execute(update(Batch).where(Batch.id == params.batch_id).values(**values))
            return await count_items(session, params.batch_id)
