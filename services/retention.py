"""Retention: remove message and prompt content older than a cutoff, keep the records around it.

``keel purge --older-than 90d [--tenant T]`` (privacy requests, retention policies). What goes,
table by table, and what stays:

| table | removed | kept |
|---|---|---|
| messages | content, tool_calls, images | role, seq, tokens, model, cost, times |
| sessions (idle since the cutoff) | summary, system prompt | tenant, route, token counts |
| stream_events | the rows (deltas, final text) | — (they are pruned after a day anyway) |
| batch_items (finished) | request, response | status, model, error class, cost, times |
| jobs (finished) | result | status, error, callback delivery |
| approvals (decided) | draft, final text | status, who decided, reason, times |
| published_documents | content (a marker) | who approved, flags, times |
| llm_response_cache | the entries | — |
| openai_files (uploaded batch files) | content (the uploaded bytes) | name, size, digest, times |
| audit_events | payload (the purge marker) | every hashed field: type, actor, time, digests |

The ledger (``llm_calls``: tokens, cost, model, outcome) and budgets are not touched. Audit rows
keep ``payload_sha256`` and ``row_hash``, so every chain still verifies; the purge itself is an
audit row under ``keel/purge`` whose cutoff vouches for the rows it blanked. Purging is
idempotent: content already removed is not counted again.

It runs in one transaction as the ``keel_retention`` database role, which may change nothing
but these columns. Temporal's workflow histories hold prompts too: their retention is the
namespace's, and their payloads are encrypted (``infra/payload_codec.py``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from activities.audit_trail import write_audit_event
from contracts.audit import AuditEventInput
from infra.audit_chain import PURGE_AUDIT_ID, PURGED_PAYLOAD, payload_json

PURGED_TEXT = "[purged]"
PURGE_EVENT = "retention.purged"

# No "m": minutes or months? A retention period is days or weeks; hours serve tests and drills.
_DURATION = re.compile(r"^\s*(\d+)\s*([hdw])\s*$", re.IGNORECASE)
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    """``90d``, ``12h``, ``2w`` → a positive timedelta; anything else is refused."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration: use a whole number and a unit, e.g. 90d (days), "
            "12h (hours) or 2w (weeks)"
        )
    amount, unit = int(match.group(1)), match.group(2).lower()
    if amount == 0:
        raise ValueError(f"{value!r} would purge everything up to now: give a positive duration")
    return timedelta(**{_UNITS[unit]: amount})


@dataclass(frozen=True)
class _Target:
    """One kind of content: which rows hold it, how old they are, whose they are."""

    name: str
    table: str  # with the alias the conditions use
    holds_content: str
    older_than_cutoff: str
    of_tenant: str
    removal: str  # "DELETE", or the SET clause that blanks the content

    @property
    def _where(self) -> str:
        return (
            f"({self.holds_content}) AND {self.older_than_cutoff} "
            f"AND (CAST(:tenant AS text) IS NULL OR {self.of_tenant})"
        )

    @property
    def count_sql(self) -> str:
        return f"SELECT count(*) FROM {self.table} WHERE {self._where}"

    @property
    def purge_sql(self) -> str:
        if self.removal == "DELETE":
            return f"DELETE FROM {self.table} WHERE {self._where}"
        return f"UPDATE {self.table} {self.removal} WHERE {self._where}"


_FINISHED_ITEM = "('ok', 'failed', 'skipped')"
TARGETS = (
    _Target(
        "messages.content",  # with its tool calls and images
        "messages m",
        "m.content IS NOT NULL OR m.tool_calls IS NOT NULL OR m.images IS NOT NULL",
        "m.created_at < :cutoff",
        "EXISTS (SELECT 1 FROM sessions s WHERE s.id = m.session_id AND s.tenant = :tenant)",
        "SET content = NULL, tool_calls = NULL, images = NULL",
    ),
    # A summary is as old as its last fold, and folds move the session's updated_at.
    _Target(
        "sessions.summary, system_prompt",
        "sessions s",
        "s.summary IS NOT NULL OR s.system_prompt IS NOT NULL",
        "s.updated_at < :cutoff",
        "s.tenant = :tenant",
        "SET summary = NULL, system_prompt = NULL",
    ),
    _Target(
        "stream_events",
        "stream_events e",
        "true",
        "e.created_at < :cutoff",
        # Turn streams are keyed turn/<session id>/<turn id> (activities/session_models.py).
        "EXISTS (SELECT 1 FROM sessions s WHERE s.tenant = :tenant "
        "AND left(e.stream_key, length(s.id) + 6) = 'turn/' || s.id || '/')",
        "DELETE",
    ),
    # Only finished items: a pending item's request is still to be sent.
    _Target(
        "batch_items.request, response",
        "batch_items i",
        f"(i.request IS NOT NULL OR i.response IS NOT NULL) AND i.status IN {_FINISHED_ITEM}",
        "coalesce(i.finished_at, i.updated_at) < :cutoff",
        "EXISTS (SELECT 1 FROM batches b WHERE b.id = i.batch_id AND b.tenant = :tenant)",
        "SET request = NULL, response = NULL",
    ),
    _Target(
        "jobs.result",
        "jobs j",
        "j.result IS NOT NULL AND j.status <> 'running'",
        "coalesce(j.completed_at, j.created_at) < :cutoff",
        "j.tenant = :tenant",
        "SET result = NULL",
    ),
    # Only decided gates: a pending gate's draft is what its reviewer is about to read.
    _Target(
        "approvals.draft, final",
        "approvals a",
        "(a.draft IS NOT NULL OR a.final IS NOT NULL) AND a.status <> 'pending'",
        "coalesce(a.decided_at, a.requested_at) < :cutoff",
        "a.tenant = :tenant",
        "SET draft = NULL, final = NULL",
    ),
    _Target(
        "published_documents.content",
        "published_documents d",
        "d.content <> :purged_text",
        "d.published_at < :cutoff",
        "d.tenant = :tenant",
        "SET content = :purged_text",
    ),
    # A batch created from an uploaded file has its own copy of the requests (batch_items);
    # the upload's bytes are content of their own.
    _Target(
        "openai_files.content",
        "openai_files f",
        "f.content IS NOT NULL",
        "f.created_at < :cutoff",
        "f.tenant = :tenant",
        "SET content = NULL",
    ),
    # The cache has no tenant: a tenant's entries are those its calls hashed to.
    _Target(
        "llm_response_cache",
        "llm_response_cache c",
        "true",
        "c.created_at < :cutoff",
        "c.prompt_hash IN (SELECT l.prompt_hash FROM llm_calls l WHERE l.tenant = :tenant)",
        "DELETE",
    ),
    # The purge trail is never purged: its rows vouch for every purged row (and hold no content).
    _Target(
        "audit_events.payload",
        "audit_events ae",
        f"ae.purged_at IS NULL AND ae.workflow_id <> '{PURGE_AUDIT_ID}'",
        "ae.occurred_at < :cutoff",
        "ae.tenant = :tenant",
        "SET payload = CAST(:purged_payload AS jsonb), purged_at = clock_timestamp()",
    ),
)


@dataclass(frozen=True)
class PurgeResult:
    cutoff: datetime
    tenant: str | None
    counts: dict[str, int]
    dry_run: bool

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def purge_content(
    session: AsyncSession,
    older_than: timedelta,
    *,
    tenant: str | None = None,
    dry_run: bool = False,
    actor: str = "keel",
    older_than_text: str | None = None,
) -> PurgeResult:
    """Remove content older than ``older_than`` (of one tenant, or all) in the caller's
    transaction, and record the purge in the ``keel/purge`` trail. ``dry_run`` only counts."""
    now: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
    cutoff = now - older_than
    parameters = {
        "cutoff": cutoff,
        "tenant": tenant,
        "purged_text": PURGED_TEXT,
        "purged_payload": payload_json(PURGED_PAYLOAD),
    }
    counts: dict[str, int] = {}
    for target in TARGETS:
        if dry_run:
            counts[target.name] = (
                await session.execute(text(target.count_sql), parameters)
            ).scalar_one()
        else:
            result = await session.execute(text(target.purge_sql), parameters)
            counts[target.name] = int(result.rowcount)  # type: ignore[attr-defined]
    if not dry_run:
        await write_audit_event(
            session,
            AuditEventInput(
                event_key=f"{PURGE_AUDIT_ID}/{uuid.uuid4()}",
                workflow_id=PURGE_AUDIT_ID,
                tenant=tenant or "default",
                event_type=PURGE_EVENT,
                actor=actor,
                payload={
                    "older_than": older_than_text or str(older_than),
                    "cutoff": cutoff.isoformat(),
                    "tenant": tenant,
                    "counts": counts,
                },
            ),
        )
    return PurgeResult(cutoff=cutoff, tenant=tenant, counts=counts, dry_run=dry_run)
