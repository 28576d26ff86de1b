"""The OpenAI Batches API's operations (``api/batches.py``) on keel's durable batches.

A batch created here is an ordinary keel batch (``services/batches.py`` submits, reports and
cancels it; ``keel batch status`` shows it) plus an ``openai_batches`` row: the input file, the
endpoint, the completion window, the metadata, and — once the batch has finished — its output
and error files. Those files are made when a finished batch is first read (``retrieve`` or
``list``), once: a second reader finds them made.

keel's statuses become OpenAI's:

| keel batch | OpenAI batch |
|---|---|
| queued, loading (its workflow has not begun) | validating |
| running, paused (a pause or a budget gate) | in_progress; cancelling once cancel was asked |
| running, every item finished | finalizing |
| completed | completed |
| cancelled | cancelled; expired when its completion window passed first |
| aborted (failure rate), refused | failed, with ``errors`` saying why |

A batch still unfinished when its 24 h completion window has passed is cancelled the next time
it is read (what was in flight finishes; pending items are not run and go to the error file with
code ``batch_expired``), as OpenAI expires one. A batch nobody reads is not expired: it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from temporalio.client import Client

from activities.batch.files import BatchFileLimits, ParsedLine
from activities.batch.items import BatchReport
from contracts.batch import BatchStatus
from infra.settings import KeelSettings
from infra.tables import OpenAiBatch, OpenAiFile
from services.batches import (
    BatchControl,
    BatchExistsError,
    BatchNotFound,
    BatchNotRunning,
    BatchUpdateRefused,
    Sessions,
    batch_options,
    control_batch,
    report_of,
    submit_batch,
)
from services.openai_files import (
    FileContentPurged,
    FileNotFound,
    FilePurpose,
    FileRefused,
    checked_batch_lines,
    create_result_file,
)
from workflows.batch import ControlRequest

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
WINDOW = timedelta(hours=24)
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class BatchRequestInvalid(Exception):
    """A create request keel refuses; ``param`` names the field."""

    def __init__(self, message: str, *, param: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class OpenAiBatchNotFound(LookupError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r}")
        self.batch_id = batch_id


class BatchNotCancellable(Exception):
    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(
            f"batch {batch_id} is {status}: only a batch still running can be cancelled"
        )
        self.batch_id, self.status = batch_id, status


class BatchIdempotencyKeyReused(Exception):
    """The same Idempotency-Key came with another request."""


@dataclass(frozen=True)
class BatchErrorEntry:
    code: str
    message: str


@dataclass(frozen=True)
class OpenAiBatchView:
    """Everything OpenAI's Batch object says, as keel knows it."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    created_at: datetime
    expires_at: datetime
    metadata: dict[str, str] | None
    total: int
    completed: int
    failed: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
    errors: list[BatchErrorEntry] = field(default_factory=list)


def openai_status(report: BatchReport, row: OpenAiBatch) -> str:
    """OpenAI's status for a keel batch (the table in this module's docstring)."""
    status = report.status
    if status == BatchStatus.COMPLETED:
        return "completed"
    if status == BatchStatus.CANCELLED:
        return "expired" if row.expired_at is not None else "cancelled"
    if status in (BatchStatus.ABORTED, BatchStatus.REFUSED):
        return "failed"
    if status in (BatchStatus.RUNNING, BatchStatus.PAUSED):
        if row.cancelling_at is not None:
            return "cancelling"
        counts = report.counts
        return "finalizing" if counts.total and counts.finished == counts.total else "in_progress"
    return "validating"  # queued or loading: the workflow has not begun


def _view(report: BatchReport, row: OpenAiBatch) -> OpenAiBatchView:
    status = openai_status(report, row)
    counts = report.counts
    finished = report.finished_at
    errors = (
        [BatchErrorEntry(code=f"batch_{report.status}", message=report.status_reason or "")]
        if status == "failed"
        else []
    )
    return OpenAiBatchView(
        id=row.batch_id,
        input_file_id=row.input_file_id,
        endpoint=row.endpoint,
        completion_window=row.completion_window,
        status=status,
        created_at=row.created_at,
        expires_at=row.expires_at,
        metadata=row.request_metadata,
        total=counts.total,
        completed=counts.ok,
        # Items a cancelled or expired batch never ran are in the error file: they count here.
        failed=counts.failed + counts.skipped,
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        in_progress_at=report.started_at,
        finalizing_at=finished if status in ("completed", "failed") else None,
        completed_at=finished if status == "completed" else None,
        failed_at=finished if status == "failed" else None,
        expired_at=row.expired_at if status == "expired" else None,
        cancelling_at=row.cancelling_at,
        cancelled_at=finished if status == "cancelled" else None,
        errors=errors,
    )


def check_request(endpoint: str, completion_window: str, metadata: dict[str, Any] | None) -> None:
    """``BatchRequestInvalid`` naming the field keel cannot honour."""
    if endpoint != ENDPOINT:
        raise BatchRequestInvalid(
            f"endpoint {endpoint!r} is not supported: keel runs {ENDPOINT} batches",
            param="endpoint",
            code="unsupported_endpoint",
        )
    if completion_window != COMPLETION_WINDOW:
        raise BatchRequestInvalid(
            f"completion_window must be {COMPLETION_WINDOW!r} (got {completion_window!r})",
            param="completion_window",
        )
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BatchRequestInvalid(
            f"metadata has {len(metadata)} keys; at most {MAX_METADATA_PAIRS}", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise BatchRequestInvalid(
                f"metadata key {key[:20]!r}… is longer than {MAX_METADATA_KEY} characters",
                param="metadata",
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise BatchRequestInvalid(
                f"metadata[{key!r}] must be a string of at most {MAX_METADATA_VALUE} characters",
                param="metadata",
            )


def _batch_id(tenant: str, idempotency_key: str | None) -> str:
    """A new batch's id; with an Idempotency-Key, the same id for the same tenant and key, so a
    retried create finds the batch its first attempt made, even one it made without answering."""
    if idempotency_key is None:
        return f"batch_{secrets.token_hex(12)}"
    digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
    return f"batch_{digest[:24]}"


def _parsed(content: bytes, limits: BatchFileLimits) -> list[ParsedLine]:
    # Checked again, in the one parse: the limits may have changed since the upload, and a bad
    # line never runs.
    return checked_batch_lines(content, limits)


async def create_openai_batch(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    *,
    tenant: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    idempotency_key: str | None,
) -> OpenAiBatchView:
    """Start a keel batch from an uploaded file. ``FileNotFound``, ``BatchRequestInvalid``,
    ``FileRefused``, ``BatchIdempotencyKeyReused``."""
    check_request(endpoint, completion_window, metadata)
    batch_id = _batch_id(tenant, idempotency_key)
    async with sessions() as session:
        earlier = await session.get(OpenAiBatch, batch_id)
        if earlier is not None:
            if earlier.tenant != tenant or earlier.input_file_id != input_file_id:
                raise BatchIdempotencyKeyReused(
                    f"Idempotency-Key already created batch {batch_id} from another file"
                )
            return await retrieve_openai_batch(client, settings, sessions, tenant, batch_id)
        file = await session.get(OpenAiFile, input_file_id)
        if file is None or file.tenant != tenant or file.deleted_at is not None:
            raise FileNotFound(input_file_id)
        if file.purpose != FilePurpose.BATCH:
            raise BatchRequestInvalid(
                f"file {input_file_id} has purpose {file.purpose!r}; a batch runs a file "
                "uploaded with purpose 'batch'",
                param="input_file_id",
            )
        content = await session.scalar(
            select(OpenAiFile.content).where(OpenAiFile.id == input_file_id)
        )
        filename = file.filename
    if content is None:
        raise BatchRequestInvalid(str(FileContentPurged(input_file_id)), param="input_file_id")
    lines = await asyncio.to_thread(_parsed, content, BatchFileLimits.from_settings(settings))
    options = batch_options(
        settings,
        tenant=tenant,
        concurrency=None,
        route=None,
        model=None,
        budget_usd=None,
        max_failure_rate=None,
        strict=True,
    )
    # BatchExistsError: a retry (same Idempotency-Key) of a create whose first attempt stored
    # the batch but not its OpenAI row. The batch is the answer.
    with contextlib.suppress(BatchExistsError):
        await submit_batch(
            client,
            settings,
            sessions,
            lines,
            batch_id=batch_id,
            options=options,
            source_name=f"{filename} ({input_file_id})",
        )
    async with sessions.begin() as session:
        await session.execute(
            insert(OpenAiBatch)
            .values(
                batch_id=batch_id,
                tenant=tenant,
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=completion_window,
                request_metadata=metadata,
                idempotency_key=idempotency_key,
                expires_at=func.now() + WINDOW,
            )
            .on_conflict_do_nothing(index_elements=["batch_id"])
        )
    return await retrieve_openai_batch(client, settings, sessions, tenant, batch_id)


async def _row(sessions: Sessions, tenant: str, batch_id: str) -> OpenAiBatch:
    async with sessions() as session:
        row = await session.get(OpenAiBatch, batch_id)
    if row is None or row.tenant != tenant:
        raise OpenAiBatchNotFound(batch_id)
    return row


async def retrieve_openai_batch(
    client: Client, settings: KeelSettings, sessions: Sessions, tenant: str, batch_id: str
) -> OpenAiBatchView:
    """The batch as OpenAI describes it; ``OpenAiBatchNotFound`` for another tenant's too."""
    row = await _row(sessions, tenant, batch_id)
    return await _current_view(client, sessions, row)


async def _current_view(client: Client, sessions: Sessions, row: OpenAiBatch) -> OpenAiBatchView:
    try:
        report = await report_of(sessions, row.batch_id)
    except BatchNotFound:
        raise OpenAiBatchNotFound(row.batch_id) from None
    if not report.terminal and row.expired_at is None and await _window_passed(sessions, row):
        row = await _expire(client, sessions, row)
    if report.terminal and row.finalized_at is None:
        row = await _finalize(sessions, row, report)
    return _view(report, row)


async def _window_passed(sessions: Sessions, row: OpenAiBatch) -> bool:
    async with sessions() as session:
        now = await session.scalar(select(func.now()))
    assert now is not None
    return bool(now >= row.expires_at)


async def _expire(client: Client, sessions: Sessions, row: OpenAiBatch) -> OpenAiBatch:
    """The completion window passed: stop the batch (in-flight items finish) and say so."""
    async with sessions.begin() as session:
        updated = await session.scalar(
            update(OpenAiBatch)
            .where(OpenAiBatch.batch_id == row.batch_id)
            .values(
                expired_at=func.coalesce(OpenAiBatch.expired_at, func.now()),
                cancelling_at=func.coalesce(OpenAiBatch.cancelling_at, func.now()),
            )
            .returning(OpenAiBatch)
        )
    assert updated is not None
    request = ControlRequest(
        by="keel (OpenAI batch window)",
        reason=f"its {row.completion_window} completion window passed",
    )
    # BatchNotRunning, BatchUpdateRefused: it finished, or is already stopping, meanwhile.
    with contextlib.suppress(BatchNotRunning, BatchUpdateRefused):
        await control_batch(client, sessions, row.batch_id, BatchControl.CANCEL, request)
    return updated


async def _finalize(sessions: Sessions, row: OpenAiBatch, report: BatchReport) -> OpenAiBatch:
    """Make a finished batch's output and error files, once (the row lock makes concurrent
    readers wait for the first, who makes them)."""
    async with sessions.begin() as session:
        locked = await session.scalar(
            select(OpenAiBatch).where(OpenAiBatch.batch_id == row.batch_id).with_for_update()
        )
        assert locked is not None
        if locked.finalized_at is not None:
            return locked
        expired = locked.expired_at is not None
        counts = report.counts
        if counts.ok:
            locked.output_file_id = await create_result_file(
                session, sessions, row.tenant, row.batch_id, FilePurpose.BATCH_OUTPUT,
                expired=expired,
            )  # fmt: skip
        if counts.failed + counts.skipped:
            locked.error_file_id = await create_result_file(
                session, sessions, row.tenant, row.batch_id, FilePurpose.BATCH_ERROR,
                expired=expired,
            )  # fmt: skip
        locked.finalized_at = await session.scalar(select(func.now()))
        return locked


async def list_openai_batches(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    tenant: str,
    *,
    after: str | None,
    limit: int,
) -> tuple[list[OpenAiBatchView], bool]:
    """A page of the tenant's batches created through the API, newest first, and whether more
    follow (cursor: the last batch's id)."""
    query = select(OpenAiBatch).where(OpenAiBatch.tenant == tenant)
    if after is not None:
        cursor = await _row(sessions, tenant, after)
        query = query.where(
            tuple_(OpenAiBatch.created_at, OpenAiBatch.batch_id)
            < tuple_(cursor.created_at, cursor.batch_id)
        )
    async with sessions() as session:
        rows: Sequence[OpenAiBatch] = (
            await session.scalars(
                query.order_by(OpenAiBatch.created_at.desc(), OpenAiBatch.batch_id.desc()).limit(
                    limit + 1
                )
            )
        ).all()
    views = [await _current_view(client, sessions, row) for row in rows[:limit]]
    return views, len(rows) > limit


async def cancel_openai_batch(
    client: Client,
    settings: KeelSettings,
    sessions: Sessions,
    tenant: str,
    batch_id: str,
    *,
    requested_by: str,
) -> OpenAiBatchView:
    """Stop the batch: pending items are not run, those in flight finish (already paid for).
    Cancelling a batch already cancelling or cancelled answers it as it is;
    ``BatchNotCancellable`` for one that has finished otherwise."""
    row = await _row(sessions, tenant, batch_id)
    view = await _current_view(client, sessions, row)
    if view.status in ("cancelling", "cancelled", "expired"):
        return view
    if view.status in ("completed", "failed", "finalizing"):
        raise BatchNotCancellable(batch_id, view.status)
    async with sessions.begin() as session:
        await session.execute(
            update(OpenAiBatch)
            .where(OpenAiBatch.batch_id == batch_id)
            .values(cancelling_at=func.coalesce(OpenAiBatch.cancelling_at, func.now()))
        )
    request = ControlRequest(by=requested_by, reason="cancelled through the Batches API")
    # Refused: already stopping. Not running: it finished between the read and the cancel.
    # Either way the batch's status says how it ends.
    with contextlib.suppress(BatchUpdateRefused, BatchNotRunning):
        await control_batch(client, sessions, batch_id, BatchControl.CANCEL, request)
    return await retrieve_openai_batch(client, settings, sessions, tenant, batch_id)


__all__ = [
    "BatchIdempotencyKeyReused",
    "BatchNotCancellable",
    "BatchRequestInvalid",
    "FileNotFound",
    "FileRefused",
    "OpenAiBatchNotFound",
    "OpenAiBatchView",
    "cancel_openai_batch",
    "create_openai_batch",
    "list_openai_batches",
    "retrieve_openai_batch",
]
