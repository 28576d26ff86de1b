"""The OpenAI Files API's operations (``api/files.py``), one tenant at a time.

A batch input file is checked line by line *before* it is stored: every line must be an OpenAI
batch line (``custom_id``, ``method``, ``url``, ``body``) that keel can run, ``custom_id``s must
be unique, and the file must fit keel's batch limits. A file that fails is refused whole, with
the numbers of its first bad lines, so ``POST /v1/batches`` never meets a bad line.

Stored files live in ``openai_files``: an upload's bytes in the row (Postgres holds the data;
a batch's workflow only ever gets ids), a batch's output and error files as rows without bytes
whose lines are made from ``batch_items`` on each read (``result_lines``). Another tenant's file
is "not found", exactly as a file that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.batch.files import (
    OPENAI_CHAT_URL,
    BatchFileLimits,
    BatchFileRefused,
    ParsedLine,
    parse_lines,
    read_bounded_lines,
)
from activities.batch.items import openai_output_line
from contracts.batch import ItemStatus
from infra.input_limits import setting_name
from infra.tables import BatchItem, OpenAiBatch, OpenAiFile

Sessions = async_sessionmaker[AsyncSession]

# Body fields OpenAI's batch lines may carry that change nothing about the answer: accepted and
# not sent on. Every other field keel's batch parser would ignore is refused (never dropped).
HARMLESS_BODY_FIELDS = frozenset({"user", "store"})
_IGNORED_FIELDS_WARNING = "ignored body field(s): "
# How many bad lines a refusal quotes.
PROBLEMS_QUOTED = 3
# Content is sent in slices of this size (the response streams; it is never one huge write).
CONTENT_CHUNK_BYTES = 256 * 1024
MAX_FILENAME_CHARS = 300


class FilePurpose(StrEnum):
    """``openai_files.purpose``: what a client uploads, and what keel makes from a batch."""

    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"
    BATCH_ERROR = "batch_error"


class FileRefused(Exception):
    """An upload keel will not store; ``message`` says why (and which lines)."""

    def __init__(self, message: str, *, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


class FileNotFound(LookupError):
    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file {file_id!r}")
        self.file_id = file_id


class FileContentPurged(LookupError):
    """The file is known, but ``keel purge`` removed its bytes (retention)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(
            f"file {file_id}'s content was removed by keel's retention (keel purge); upload it "
            "again"
        )
        self.file_id = file_id


class IdempotencyKeyReused(Exception):
    """The same Idempotency-Key came with different content."""


@dataclass(frozen=True)
class StoredFile:
    id: str
    purpose: str
    filename: str
    size_bytes: int
    created_at: datetime
    batch_id: str | None

    @classmethod
    def of(cls, row: OpenAiFile) -> StoredFile:
        return cls(
            id=row.id,
            purpose=row.purpose,
            filename=row.filename,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
            batch_id=row.batch_id,
        )


def storable_filename(name: str) -> str:
    """The client's file name as keel keeps it: printable characters only (a NUL or a lone
    surrogate cannot be stored), at most ``MAX_FILENAME_CHARS``."""
    kept = "".join(character for character in name if character.isprintable()).strip()
    return kept[:MAX_FILENAME_CHARS] or "batch.jsonl"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


# --- Checking an upload --------------------------------------------------------------------------


def _unhonoured_fields(warnings: list[str]) -> str | None:
    """Why a line the parser accepted with warnings is refused here, or None."""
    for warning in warnings:
        if not warning.startswith(_IGNORED_FIELDS_WARNING):
            return warning
        fields = [f for f in warning.removeprefix(_IGNORED_FIELDS_WARNING).split(", ") if f]
        refused = [field for field in fields if field not in HARMLESS_BODY_FIELDS]
        if refused:
            return (
                f"body field(s) {', '.join(refused)} are not honoured by keel's batches: remove "
                f"them (only {', '.join(sorted(HARMLESS_BODY_FIELDS))} may be sent and are "
                "ignored)"
            )
    return None


def check_batch_file(content: bytes, limits: BatchFileLimits) -> int:
    """How many requests the file holds; ``FileRefused`` naming its first bad lines when any
    line is not an OpenAI batch line keel can run, a ``custom_id`` repeats, or a limit is hit.

    Blocking (it parses the whole file): run it off the event loop."""
    return _check_lines(content, limits, lambda _: None)


def checked_batch_lines(content: bytes, limits: BatchFileLimits) -> list[ParsedLine]:
    """The file's lines, parsed once, after the checks of ``check_batch_file`` (its errors)."""
    lines: list[ParsedLine] = []
    _check_lines(content, limits, lines.append)
    return lines


def _check_lines(
    content: bytes, limits: BatchFileLimits, keep: Callable[[ParsedLine], None]
) -> int:
    if len(content) > limits.file_bytes:
        raise FileRefused(
            f"the file is {len(content):,} bytes; the limit is {limits.file_bytes:,} bytes "
            f"(keel's {setting_name('max_batch_file_bytes')}): split it into several batches",
            code="file_too_large",
            status=413,
        )
    problems: list[str] = []
    first_line_of: dict[str, int] = {}
    items = 0
    try:
        for line in parse_lines(read_bounded_lines(io.BytesIO(content), limits), limits):
            items += 1
            problem = line.problem
            if problem is None and line.line_format != "openai":
                problem = (
                    "not an OpenAI batch line: each line is "
                    '{"custom_id": ..., "method": "POST", "url": '
                    f'"{OPENAI_CHAT_URL}", "body": {{...}}}}'
                )
            if problem is None:
                problem = _unhonoured_fields(line.warnings)
            if problem is None and line.custom_id in first_line_of:
                problem = (
                    f"custom_id {line.custom_id!r} repeats line "
                    f"{first_line_of[line.custom_id]}: each custom_id must be unique"
                )
            if line.custom_id is not None:
                first_line_of.setdefault(line.custom_id, line.line_no)
            if problem is not None:
                problems.append(f"line {line.line_no}: {problem}")
            elif not problems:  # once a line is bad, the file is refused: keep no more
                keep(line)
    except BatchFileRefused as refused:
        raise FileRefused(str(refused), code="file_too_large", status=413) from None
    if problems:
        quoted = "; ".join(problems[:PROBLEMS_QUOTED])
        more = len(problems) - PROBLEMS_QUOTED
        raise FileRefused(
            f"the batch file has {len(problems)} line(s) keel cannot run, nothing was stored: "
            f"{quoted}{f'; and {more} more' if more > 0 else ''}",
            code="invalid_batch_line",
        )
    if items == 0:
        raise FileRefused("the batch file has no requests (no non-blank line)", code="empty_file")
    return items


# --- Storing and reading -------------------------------------------------------------------------


async def store_batch_file(
    sessions: Sessions,
    tenant: str,
    filename: str,
    content: bytes,
    limits: BatchFileLimits,
    idempotency_key: str | None = None,
) -> StoredFile:
    """Check and store an uploaded batch input file. The same ``idempotency_key`` again returns
    the file it stored (``IdempotencyKeyReused`` when the content differs)."""
    digest = hashlib.sha256(content).hexdigest()
    if idempotency_key is not None:
        earlier = await _by_idempotency_key(sessions, tenant, idempotency_key)
        if earlier is not None:
            return _same_upload(earlier, digest)
    await asyncio.to_thread(check_batch_file, content, limits)
    async with sessions.begin() as session:
        stored = await session.scalar(
            insert(OpenAiFile)
            .values(
                id=new_file_id(),
                tenant=tenant,
                purpose=FilePurpose.BATCH.value,
                filename=storable_filename(filename),
                size_bytes=len(content),
                content=content,
                sha256=digest,
                idempotency_key=idempotency_key,
            )
            .on_conflict_do_nothing(index_elements=["tenant", "idempotency_key"])
            .returning(OpenAiFile)
        )
    if stored is None:  # the same key won a race with this request
        assert idempotency_key is not None
        raced = await _by_idempotency_key(sessions, tenant, idempotency_key)
        assert raced is not None
        return _same_upload(raced, digest)
    return StoredFile.of(stored)


async def _by_idempotency_key(sessions: Sessions, tenant: str, key: str) -> OpenAiFile | None:
    async with sessions() as session:
        row: OpenAiFile | None = await session.scalar(
            select(OpenAiFile).where(OpenAiFile.tenant == tenant, OpenAiFile.idempotency_key == key)
        )
        return row


def _same_upload(earlier: OpenAiFile, digest: str) -> StoredFile:
    if earlier.sha256 != digest or earlier.deleted_at is not None:
        raise IdempotencyKeyReused(
            f"Idempotency-Key already stored file {earlier.id} with other content"
            if earlier.deleted_at is None
            else f"Idempotency-Key already stored file {earlier.id}, since deleted"
        )
    return StoredFile.of(earlier)


async def _live_row(session: AsyncSession, tenant: str, file_id: str) -> OpenAiFile:
    row = await session.get(OpenAiFile, file_id)
    if row is None or row.tenant != tenant or row.deleted_at is not None:
        raise FileNotFound(file_id)
    return row


async def get_file(sessions: Sessions, tenant: str, file_id: str) -> StoredFile:
    async with sessions() as session:
        return StoredFile.of(await _live_row(session, tenant, file_id))


async def list_files(
    sessions: Sessions,
    tenant: str,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
) -> tuple[list[StoredFile], bool]:
    """A page of the tenant's files and whether more follow (cursor: the last file's id)."""
    order = (
        (OpenAiFile.created_at.desc(), OpenAiFile.id.desc())
        if newest_first
        else (OpenAiFile.created_at.asc(), OpenAiFile.id.asc())
    )
    query = select(OpenAiFile).where(OpenAiFile.tenant == tenant, OpenAiFile.deleted_at.is_(None))
    if purpose is not None:
        query = query.where(OpenAiFile.purpose == purpose)
    async with sessions() as session:
        if after is not None:
            cursor = await _live_row(session, tenant, after)
            position = tuple_(OpenAiFile.created_at, OpenAiFile.id)
            mark = tuple_(cursor.created_at, cursor.id)
            query = query.where(position < mark if newest_first else position > mark)
        rows = list((await session.scalars(query.order_by(*order).limit(limit + 1))).all())
    return [StoredFile.of(row) for row in rows[:limit]], len(rows) > limit


async def delete_file(sessions: Sessions, tenant: str, file_id: str) -> None:
    """The file is gone for the API (404 afterwards) and its bytes are dropped. The row stays,
    so a batch's deleted output file is not made again when the batch is read."""
    async with sessions.begin() as session:
        await _live_row(session, tenant, file_id)
        await session.execute(
            update(OpenAiFile)
            .where(OpenAiFile.id == file_id)
            .values(deleted_at=func.now(), content=None)
        )


async def file_content(sessions: Sessions, tenant: str, file_id: str) -> AsyncIterator[bytes]:
    """The file's bytes, in slices: an upload as stored, a batch's output or error file as
    OpenAI's output lines. ``FileNotFound`` (or ``FileContentPurged``) is raised before the
    first slice."""
    stored = await get_file(sessions, tenant, file_id)
    async with sessions() as session:
        if stored.batch_id is not None:
            expired_at = await session.scalar(
                select(OpenAiBatch.expired_at).where(OpenAiBatch.batch_id == stored.batch_id)
            )
            return result_lines(
                sessions,
                stored.batch_id,
                FilePurpose(stored.purpose),
                expired=expired_at is not None,
            )
        content = await session.scalar(select(OpenAiFile.content).where(OpenAiFile.id == file_id))
    if content is None:
        raise FileContentPurged(file_id)
    return _slices(content)


async def _slices(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), CONTENT_CHUNK_BYTES):
        yield content[start : start + CONTENT_CHUNK_BYTES]


# --- A batch's output and error files ------------------------------------------------------------


def _error_codes(line: dict[str, Any], expired: bool) -> dict[str, Any]:
    """Items a stopped batch never ran carry OpenAI's code for why (keel's error class else)."""
    error = line.get("error")
    if isinstance(error, dict) and error.get("code") == ItemStatus.SKIPPED.value:
        error["code"] = "batch_expired" if expired else "batch_cancelled"
    return line


ROWS_PER_PAGE = 1000
# What openai_output_line reads of an item.
OUTPUT_LINE_COLUMNS = (
    BatchItem.id,
    BatchItem.batch_id,
    BatchItem.custom_id,
    BatchItem.status,
    BatchItem.response,
    BatchItem.error_class,
    BatchItem.error_message,
    BatchItem.finished_at,
    BatchItem.updated_at,
)


async def result_lines(
    sessions: Sessions, batch_id: str, purpose: FilePurpose, *, expired: bool = False
) -> AsyncIterator[bytes]:
    """The batch's output file (items that succeeded) or error file (every other item), as
    OpenAI's output lines in file order, streamed from ``batch_items`` in slices."""
    buffer: list[bytes] = []
    size = 0
    ok = BatchItem.status == ItemStatus.OK.value
    async with sessions() as session:
        # Only this file's items, as plain rows of the columns an output line is made of: an
        # ORM object per item cost about 3 times the line itself, and the request (the
        # largest column) is not needed.
        rows = await session.stream(
            select(*OUTPUT_LINE_COLUMNS)
            .where(
                BatchItem.batch_id == batch_id,
                ok if purpose == FilePurpose.BATCH_OUTPUT else ~ok,
            )
            .order_by(BatchItem.line_no)
            .execution_options(yield_per=ROWS_PER_PAGE)
        )
        # A page of rows per await: row by row, the async iteration alone cost half the time.
        async for page in rows.partitions(ROWS_PER_PAGE):
            for row in page:
                # openai_output_line reads these attributes only (the tests read every kind of
                # line).
                line = _error_codes(openai_output_line(cast(BatchItem, row)), expired)
                encoded = (json.dumps(line, ensure_ascii=False) + "\n").encode()
                buffer.append(encoded)
                size += len(encoded)
            if size >= CONTENT_CHUNK_BYTES:
                yield b"".join(buffer)
                buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


async def create_result_file(
    session: AsyncSession,
    sessions: Sessions,
    tenant: str,
    batch_id: str,
    purpose: FilePurpose,
    *,
    expired: bool,
) -> str:
    """The batch's output or error file (made once: a second call returns the first's id)."""
    size = 0
    async for chunk in result_lines(sessions, batch_id, purpose, expired=expired):
        size += len(chunk)
    suffix = "output" if purpose == FilePurpose.BATCH_OUTPUT else "errors"
    await session.execute(
        insert(OpenAiFile)
        .values(
            id=new_file_id(),
            tenant=tenant,
            purpose=purpose.value,
            filename=f"{batch_id}_{suffix}.jsonl",
            size_bytes=size,
            batch_id=batch_id,
        )
        .on_conflict_do_nothing(index_elements=["batch_id", "purpose"])
    )
    file_id = await session.scalar(
        select(OpenAiFile.id).where(
            OpenAiFile.batch_id == batch_id, OpenAiFile.purpose == purpose.value
        )
    )
    assert file_id is not None
    return file_id
