"""The audit trail's hash chain: how a row's hash is computed, and how a trail is verified.

Each workflow's ``audit_events`` rows form one chain, numbered ``seq`` = 1, 2, 3, …:

    payload_sha256 = sha256(canonical JSON of the payload)
    row_hash       = sha256(JSON array ["keel-audit-v1", workflow_id, seq, event_key, run_id,
                                        tenant, event_type, actor, occurred_at, payload_sha256,
                                        prev_hash])
    prev_hash      = the previous row's row_hash (64 zeros for seq 1)

and ``audit_chain_heads`` holds each chain's last seq and hash, written in the same transaction
as the row. Changing any hashed field breaks that row's hash; inserting or deleting a row breaks
the numbering or the links; deleting the last rows leaves the head pointing past the end.

The payload enters the row hash through its digest, so ``keel purge`` can blank a payload (and
mark the row ``purged_at``) while the chain still verifies: the digest still vouches for what
the payload was, for anyone who holds it. A purged row must carry exactly the purge marker and
be older than the cutoff of a purge recorded in the ``keel/purge`` trail.

A keyless hash chain is evidence against edits, not against someone who recomputes every hash
after theirs: keep the head hashes ``keel audit verify`` prints somewhere the database's
administrators cannot write (see ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

HASH_FORMAT = "keel-audit-v1"
GENESIS_HASH = "0" * 64
# What `keel purge` leaves in an audit row's payload (and nothing else may look like it).
PURGED_PAYLOAD: dict[str, Any] = {"purged": True}
# The pseudo workflow whose trail records every purge: its rows are never purged themselves,
# because they are what vouches for the purged rows of every other trail.
PURGE_AUDIT_ID = "keel/purge"
# How far a renumbered row is searched for its original seq (an insert or delete before it).
_RENUMBER_SEARCH = 64


# --- The hash format ---------------------------------------------------------------------------


def _canonical_number(value: int | Decimal) -> str:
    # Numbers are compared by value, written in plain decimal: Postgres' jsonb keeps numbers as
    # exact decimals but rewrites their form (1e+20 comes back as 100000000000000000000, -0.0
    # as 0.0), so the float or int a writer held must hash like the number jsonb returns.
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _canonical(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | Decimal):
        return _canonical_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(key, ensure_ascii=False)}:{_canonical(value[key])}"
                for key in sorted(value)
            )
            + "}"
        )
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical_payload(payload_json: str) -> str:
    """The canonical form of a JSON text: keys sorted, no whitespace, numbers by exact value."""
    return _canonical(json.loads(payload_json, parse_float=Decimal))


def payload_json(payload: dict[str, Any]) -> str:
    """The JSON text a payload is stored as (jsonb cannot hold NaN or infinities)."""
    try:
        return json.dumps(payload, allow_nan=False, ensure_ascii=False)
    except ValueError as error:
        raise ValueError(f"audit payload is not storable JSON: {error}") from error


def payload_digest(payload_json_text: str) -> str:
    return hashlib.sha256(canonical_payload(payload_json_text).encode()).hexdigest()


def canonical_time(moment: datetime) -> str:
    """UTC, microseconds, always the same width: what timestamptz stores, exactly."""
    if moment.tzinfo is None:
        raise ValueError("audit times must carry a time zone")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True)
class ChainedFields:
    """Everything a row hash covers."""

    workflow_id: str
    seq: int
    event_key: str
    run_id: str | None
    tenant: str
    event_type: str
    actor: str
    occurred_at: datetime
    payload_sha256: str
    prev_hash: str

    def row_hash(self, seq: int | None = None) -> str:
        encoded = json.dumps(
            [
                HASH_FORMAT,
                self.workflow_id,
                self.seq if seq is None else seq,
                self.event_key,
                self.run_id,
                self.tenant,
                self.event_type,
                self.actor,
                canonical_time(self.occurred_at),
                self.payload_sha256,
                self.prev_hash,
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(encoded.encode()).hexdigest()


# --- Verification ------------------------------------------------------------------------------


class Tamper(StrEnum):
    CHANGED = "changed"
    INSERTED = "inserted"
    DELETED = "deleted"
    TRUNCATED = "tail truncated"
    HEAD_MISSING = "head missing"


@dataclass(frozen=True)
class ChainProblem:
    """The first row of a trail that does not check out, and what is wrong with it."""

    seq: int
    kind: Tamper
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq} {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainReport:
    workflow_id: str
    rows: int
    purged_rows: int
    head_seq: int | None
    head_hash: str | None
    problem: ChainProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class PurgeRecord:
    cutoff: datetime
    tenant: str | None


@dataclass(frozen=True)
class _Row:
    fields: ChainedFields
    row_hash: str
    payload_text: str
    purged_at: datetime | None


_ROWS = text(
    """
    SELECT workflow_id, seq, event_key, run_id, tenant, event_type, actor, occurred_at,
           payload_sha256, prev_hash, row_hash, payload::text AS payload_text, purged_at
    FROM audit_events WHERE workflow_id = :workflow_id ORDER BY seq, id
    """
)
_HEAD = text("SELECT last_seq, last_hash FROM audit_chain_heads WHERE workflow_id = :workflow_id")


async def _rows(session: AsyncSession, workflow_id: str) -> list[_Row]:
    result = await session.execute(_ROWS, {"workflow_id": workflow_id})
    return [
        _Row(
            fields=ChainedFields(
                workflow_id=row.workflow_id,
                seq=row.seq,
                event_key=row.event_key,
                run_id=row.run_id,
                tenant=row.tenant,
                event_type=row.event_type,
                actor=row.actor,
                occurred_at=row.occurred_at,
                payload_sha256=row.payload_sha256,
                prev_hash=row.prev_hash,
            ),
            row_hash=row.row_hash,
            payload_text=row.payload_text,
            purged_at=row.purged_at,
        )
        for row in result
    ]


def _renumbered_from(row: _Row) -> int | None:
    """The seq this row was hashed with, if it was renumbered (a row inserted or deleted
    before it, and the rest shifted to close the gap)."""
    for shift in range(1, _RENUMBER_SEARCH + 1):
        for original in (row.fields.seq - shift, row.fields.seq + shift):
            if original > 0 and row.fields.row_hash(original) == row.row_hash:
                return original
    return None


def _content_problem(row: _Row, purges: Sequence[PurgeRecord] | None) -> ChainProblem | None:
    """A row whose own fields no longer match its hashes."""
    seq = row.fields.seq
    if row.purged_at is None:
        if payload_digest(row.payload_text) != row.fields.payload_sha256:
            return ChainProblem(seq, Tamper.CHANGED, "its payload does not match payload_sha256")
    else:
        if json.loads(row.payload_text) != PURGED_PAYLOAD:
            return ChainProblem(
                seq, Tamper.CHANGED, "it is marked purged but its payload is not the purge marker"
            )
        if purges is not None and not any(
            row.fields.occurred_at < purge.cutoff
            and (purge.tenant is None or purge.tenant == row.fields.tenant)
            for purge in purges
        ):
            return ChainProblem(
                seq,
                Tamper.CHANGED,
                f"its payload was removed, but no purge recorded in {PURGE_AUDIT_ID} covers it",
            )
    if row.fields.row_hash() == row.row_hash:
        return None
    original = _renumbered_from(row)
    if original is not None and original < seq:
        return ChainProblem(
            original,
            Tamper.INSERTED,
            f"the row hashed as seq {original} now has seq {seq}: "
            f"{seq - original} row(s) were inserted before it",
        )
    if original is not None:
        return ChainProblem(
            seq,
            Tamper.DELETED,
            f"the row hashed as seq {original} now has seq {seq}: "
            f"{original - seq} row(s) before it were deleted",
        )
    return ChainProblem(
        seq,
        Tamper.CHANGED,
        "its fields (key, run, tenant, type, actor, time or payload digest) do not match "
        "its row_hash",
    )


def _check_chain(
    workflow_id: str,
    rows: Sequence[_Row],
    head: tuple[int, str] | None,
    purges: Sequence[PurgeRecord] | None,
) -> ChainReport:
    """Walk one trail in seq order; the first thing that does not check out is the problem."""
    problem: ChainProblem | None = None
    expected_seq, prev_hash = 1, GENESIS_HASH
    for index, row in enumerate(rows):
        seq = row.fields.seq
        if seq > expected_seq:
            missing = str(expected_seq) if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
            problem = ChainProblem(
                expected_seq, Tamper.DELETED, f"seq {missing} missing: row(s) deleted"
            )
            break
        if seq < expected_seq:
            problem = ChainProblem(seq, Tamper.INSERTED, f"a second row with seq {seq}")
            break
        problem = _content_problem(row, purges)
        if problem is not None:
            following = rows[index + 1] if index + 1 < len(rows) else None
            if (
                problem.kind is Tamper.CHANGED
                and following is not None
                and following.fields.row_hash(seq) == following.row_hash
            ):
                # The row after it is the one hashed as this seq, renumbered: this one is new.
                problem = ChainProblem(
                    seq,
                    Tamper.INSERTED,
                    f"seq {seq} is not part of the chain: the row hashed as seq {seq} now "
                    f"follows it as seq {following.fields.seq}",
                )
            break
        if row.fields.prev_hash != prev_hash:
            problem = ChainProblem(
                seq - 1,
                Tamper.CHANGED,
                f"seq {seq - 1} was replaced by a row with a recomputed hash: seq {seq} was "
                "chained to a different row",
            )
            break
        expected_seq, prev_hash = seq + 1, row.row_hash
    last_seq = expected_seq - 1
    if problem is None:
        if head is None and rows:
            problem = ChainProblem(
                1, Tamper.HEAD_MISSING, "the trail's row in audit_chain_heads was deleted"
            )
        elif head is not None and head[0] > last_seq:
            gone = str(head[0]) if head[0] == last_seq + 1 else f"{last_seq + 1}..{head[0]}"
            problem = ChainProblem(
                last_seq + 1,
                Tamper.TRUNCATED,
                f"the head records seq {head[0]}, the trail ends at {last_seq}: seq {gone} deleted",
            )
        elif head is not None and head[0] < last_seq:
            problem = ChainProblem(
                head[0] + 1,
                Tamper.INSERTED,
                f"seq {head[0] + 1}..{last_seq} lie past the head (seq {head[0]}): appended "
                "outside keel",
            )
        elif head is not None and head[1] != prev_hash:
            problem = ChainProblem(
                last_seq, Tamper.CHANGED, "the last row is not the one the head recorded"
            )
    return ChainReport(
        workflow_id=workflow_id,
        rows=len(rows),
        purged_rows=sum(1 for row in rows if row.purged_at is not None),
        head_seq=head[0] if head else None,
        head_hash=head[1] if head else None,
        problem=problem,
    )


async def _head(session: AsyncSession, workflow_id: str) -> tuple[int, str] | None:
    found = (await session.execute(_HEAD, {"workflow_id": workflow_id})).first()
    return (found.last_seq, found.last_hash) if found else None


async def recorded_purges(session: AsyncSession) -> tuple[list[PurgeRecord], ChainReport]:
    """The purges recorded in the purge trail, and that trail's own verification."""
    rows = await _rows(session, PURGE_AUDIT_ID)
    report = _check_chain(PURGE_AUDIT_ID, rows, await _head(session, PURGE_AUDIT_ID), purges=None)
    purges = []
    for row in rows:
        payload = json.loads(row.payload_text)
        if row.fields.event_type == "retention.purged" and "cutoff" in payload:
            purges.append(
                PurgeRecord(datetime.fromisoformat(payload["cutoff"]), payload.get("tenant"))
            )
    return purges, report


async def verify_trail(
    session: AsyncSession,
    workflow_id: str,
    purges: tuple[list[PurgeRecord], ChainReport] | None = None,
) -> ChainReport:
    """Verify one workflow's trail. ``purges`` (from :func:`recorded_purges`) may be passed in
    when verifying many trails, to read the purge trail once."""
    rows = await _rows(session, workflow_id)
    head = await _head(session, workflow_id)
    if workflow_id == PURGE_AUDIT_ID:
        return _check_chain(workflow_id, rows, head, purges=None)
    first_purged = next((row for row in rows if row.purged_at is not None), None)
    if first_purged is None:
        return _check_chain(workflow_id, rows, head, purges=[])
    known, purge_report = purges or await recorded_purges(session)
    report = _check_chain(workflow_id, rows, head, known)
    if purge_report.ok:
        return report
    return replace(
        report,
        problem=ChainProblem(
            first_purged.fields.seq,
            Tamper.CHANGED,
            f"it is marked purged, but the purge trail {PURGE_AUDIT_ID} that vouches "
            f"for purges fails verification ({purge_report.problem})",
        ),
    )


async def trail_ids(session: AsyncSession, tenant: str | None = None) -> list[str]:
    """Every workflow with a trail (or a head whose rows are gone), optionally of one tenant."""
    if tenant is None:
        statement = text(
            "SELECT workflow_id FROM audit_chain_heads "
            "UNION SELECT DISTINCT workflow_id FROM audit_events ORDER BY 1"
        )
        return list((await session.execute(statement)).scalars())
    statement = text(
        "SELECT DISTINCT workflow_id FROM audit_events WHERE tenant = :tenant ORDER BY 1"
    )
    return list((await session.execute(statement, {"tenant": tenant})).scalars())
