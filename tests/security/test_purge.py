"""`keel purge --older-than 90d [--tenant T]` removes message and prompt content older than the
cutoff (of one tenant, or all), keeps the ledger and the audit metadata, and every audit trail
still verifies afterwards; tampering after a purge is still caught."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select
from temporalio.client import Client
from temporalio.worker import Worker

from activities.audit_trail import write_audit_event
from contracts.audit import AuditEventInput
from infra.audit_chain import (
    GENESIS_HASH,
    PURGE_AUDIT_ID,
    PURGED_PAYLOAD,
    ChainedFields,
    Tamper,
    recorded_purges,
    trail_ids,
    verify_trail,
)
from infra.database import DatabaseRole, session_factory
from infra.settings import KeelSettings
from infra.tables import (
    Approval,
    BatchItem,
    ChatSession,
    LlmCall,
    Message,
    PublishedDocument,
    StreamEvent,
)
from llmsim import SimServer
from services.chat_client import TurnRequest, run_turn
from services.retention import PURGED_TEXT, parse_duration, purge_content
from tests.batch.conftest import prompt_lines, start_batch
from tests.helpers import KeelCli
from tests.security.audit_support import (
    restore,
    run_review,
    snapshot,
    superuser,
    trail_rows,
    verify,
)
from workers.builder import build_worker

OLD = timedelta(days=100)
MODEL = "gpt-4o-mini"


@pytest.fixture
async def batch_worker(client: Client, keel_settings: KeelSettings) -> AsyncIterator[Worker]:
    worker = build_worker(client, keel_settings.batch_task_queue, keel_settings)
    async with worker:
        yield worker


async def _chat(client: Client, settings: KeelSettings, tenant: str) -> str:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    for content in ("My name is Ada and I live in Lyon.", "Where do I live?"):
        request = TurnRequest(
            session_id=session_id,
            content=content,
            tenant=tenant,
            models=[MODEL],
            system_prompt="You are Ada's assistant.",
        )
        await run_turn(client, settings, request)
    return session_id


async def _batch(client: Client, settings: KeelSettings, tenant: str) -> str:
    batch_id, handle = await start_batch(client, settings, prompt_lines(3), tenant=tenant)
    await handle.result()
    return batch_id


async def _backdate_trail(connection: asyncpg.Connection, workflow_id: str) -> None:
    """As if the trail had been written 100 days ago: earlier times, hashes recomputed, so the
    chain is as the writer would have left it (not a tamper)."""
    prev_hash = GENESIS_HASH
    for row in await trail_rows(connection, workflow_id):
        fields = ChainedFields(
            workflow_id=row["workflow_id"],
            seq=row["seq"],
            event_key=row["event_key"],
            run_id=row["run_id"],
            tenant=row["tenant"],
            event_type=row["event_type"],
            actor=row["actor"],
            occurred_at=row["occurred_at"] - OLD,
            payload_sha256=row["payload_sha256"],
            prev_hash=prev_hash,
        )
        prev_hash = fields.row_hash()
        await connection.execute(
            "UPDATE audit_events SET occurred_at = $1, prev_hash = $2, row_hash = $3 WHERE id = $4",
            fields.occurred_at,
            fields.prev_hash,
            prev_hash,
            row["id"],
        )
    await connection.execute(
        "UPDATE audit_chain_heads SET last_hash = $1 WHERE workflow_id = $2", prev_hash, workflow_id
    )


async def _backdate(
    connection: asyncpg.Connection,
    *,
    session_id: str | None = None,
    batch_id: str | None = None,
    review_id: str | None = None,
) -> None:
    interval = "interval '100 days'"
    if session_id is not None:
        await connection.execute(
            f"UPDATE messages SET created_at = created_at - {interval} WHERE session_id = $1",
            session_id,
        )
        await connection.execute(
            f"UPDATE sessions SET updated_at = updated_at - {interval} WHERE id = $1", session_id
        )
        await connection.execute(
            f"UPDATE stream_events SET created_at = created_at - {interval} "
            "WHERE stream_key LIKE $1",
            f"turn/{session_id}/%",
        )
    if batch_id is not None:
        await connection.execute(
            f"UPDATE batch_items SET finished_at = finished_at - {interval}, "
            f"updated_at = updated_at - {interval} WHERE batch_id = $1",
            batch_id,
        )
    if review_id is not None:
        await connection.execute(
            f"UPDATE approvals SET requested_at = requested_at - {interval}, "
            f"decided_at = decided_at - {interval} WHERE workflow_id = $1",
            review_id,
        )
        await connection.execute(
            f"UPDATE published_documents SET published_at = published_at - {interval} "
            "WHERE workflow_id = $1",
            review_id,
        )
        await _backdate_trail(connection, review_id)


async def _messages(session_id: str) -> list[Message]:
    async with session_factory()() as db:
        result = await db.scalars(
            select(Message).where(Message.session_id == session_id).order_by(Message.seq)
        )
        return list(result)


async def _rows(model: Any, *conditions: Any) -> list[Any]:
    async with session_factory()() as db:
        return list(await db.scalars(select(model).where(*conditions)))


async def _ledger() -> list[tuple[Any, ...]]:
    rows = await _rows(LlmCall)
    return sorted(
        (r.id, r.workflow_id, r.model, r.input_tokens, r.output_tokens, r.cost_usd, r.outcome)
        for r in rows
    )


async def _streams(session_id: str) -> int:
    async with session_factory()() as db:
        result = await db.scalars(
            select(StreamEvent.id).where(StreamEvent.stream_key.like(f"turn/{session_id}/%"))
        )
        return len(list(result))


async def _all_trails_verify() -> int:
    async with session_factory()() as session:
        purges = await recorded_purges(session)
        reports = [await verify_trail(session, wf, purges) for wf in await trail_ids(session)]
    assert [r for r in reports if not r.ok] == []
    return len(reports)


@pytest.mark.slow  # a review, a batch, four chat sessions and a real `keel purge`
async def test_purge_removes_old_content_of_the_tenant_and_keeps_the_records(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    batch_worker: Worker,
    simulator: SimServer,
    database_url: str,
) -> None:
    acme_old_chat = await _chat(client, keel_settings, "acme")
    acme_new_chat = await _chat(client, keel_settings, "acme")
    globex_old_chat = await _chat(client, keel_settings, "globex")
    acme_batch = await _batch(client, keel_settings, "acme")
    globex_batch = await _batch(client, keel_settings, "globex")
    review = await run_review(client, keel_settings, simulator, tenant="acme")
    async with session_factory().begin() as session:  # a recent acme audit row
        await write_audit_event(
            session,
            AuditEventInput(
                event_key="acme-recent/1",
                workflow_id="acme-recent",
                tenant="acme",
                event_type="test.recent",
                payload={"note": "recent"},
            ),
        )
    async with superuser(database_url) as connection:
        await _backdate(connection, session_id=acme_old_chat, batch_id=acme_batch, review_id=review)
        await _backdate(connection, session_id=globex_old_chat, batch_id=globex_batch)
    ledger = await _ledger()
    review_trail = await verify(review)
    assert review_trail.ok and await _streams(acme_old_chat) > 0

    async with session_factory(purpose=DatabaseRole.RETENTION).begin() as session:
        preview = await purge_content(session, parse_duration("90d"), tenant="acme", dry_run=True)
    assert preview.counts["messages.content"] == 4
    assert preview.counts["batch_items.request, response"] == 3
    assert preview.counts["approvals.draft, final"] == 2
    assert preview.counts["audit_events.payload"] == review_trail.rows

    keel = KeelCli(client, keel_settings)
    purged = await keel("purge", "--older-than", "90d", "--tenant", "acme", "--yes", "--by", "dpo")
    assert purged.code == 0, purged.text
    assert "removed (tenant 'acme'" in purged.out
    assert f"keel audit {PURGE_AUDIT_ID}" in purged.out

    # Acme's old content is gone, its records stay.
    old = await _messages(acme_old_chat)
    assert [m.content for m in old] == [None] * 4
    assert all(m.tokens > 0 for m in old) and old[1].model == MODEL
    session = (await _rows(ChatSession, ChatSession.id == acme_old_chat))[0]
    assert (session.summary, session.system_prompt) == (None, None)
    assert await _streams(acme_old_chat) == 0
    items = await _rows(BatchItem, BatchItem.batch_id == acme_batch)
    assert [(i.request, i.response) for i in items] == [(None, None)] * 3
    assert all(i.status == "ok" and i.cost_usd is not None for i in items)
    gates = await _rows(Approval, Approval.workflow_id == review)
    assert [(g.draft, g.final) for g in gates] == [(None, None)] * 2
    assert sorted(g.status for g in gates) == ["edited", "rejected"]
    assert all(g.decided_by == ["alice"] for g in gates)
    document = (await _rows(PublishedDocument, PublishedDocument.workflow_id == review))[0]
    assert document.content == PURGED_TEXT and document.approved_by == ["alice"]
    async with superuser(database_url) as connection:
        trail = await trail_rows(connection, review)
    assert all(r["purged_at"] is not None and r["payload"] == '{"purged": true}' for r in trail)
    assert [r["event_type"] for r in trail][-1] == "review.published"
    assert {r["actor"] for r in trail} >= {"alice", "keel"}

    # Newer content and the other tenant are untouched; the ledger is whole.
    assert all(m.content for m in await _messages(acme_new_chat))
    assert all(m.content for m in await _messages(globex_old_chat))
    assert await _streams(globex_old_chat) > 0
    globex_items = await _rows(BatchItem, BatchItem.batch_id == globex_batch)
    assert all(i.request and i.response for i in globex_items)
    recent = await verify("acme-recent")
    assert recent.ok and recent.purged_rows == 0
    assert await _ledger() == ledger

    # Every trail still verifies, the purge's own included; a second purge finds nothing.
    assert await _all_trails_verify() >= 4
    purge_trail = await verify(PURGE_AUDIT_ID)
    assert purge_trail.ok and purge_trail.rows == 1
    async with session_factory(purpose=DatabaseRole.RETENTION).begin() as session:
        again = await purge_content(session, parse_duration("90d"), tenant="acme")
    assert again.total == 0

    # Without --tenant: globex's old content goes too, acme's recent content still stays.
    async with session_factory(purpose=DatabaseRole.RETENTION).begin() as session:
        everyone = await purge_content(session, parse_duration("90d"), actor="dpo")
    assert everyone.counts["messages.content"] == 4
    assert everyone.counts["batch_items.request, response"] == 3
    assert [m.content for m in await _messages(globex_old_chat)] == [None] * 4
    assert all(m.content for m in await _messages(acme_new_chat))
    assert await _ledger() == ledger
    await _all_trails_verify()


async def test_tampering_after_a_purge_is_still_caught(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    database_url: str,
) -> None:
    review = await run_review(client, keel_settings, simulator, tenant="acme")
    async with superuser(database_url) as connection:
        await _backdate(connection, review_id=review)
    async with session_factory(purpose=DatabaseRole.RETENTION).begin() as session:
        result = await purge_content(session, parse_duration("90d"))
    assert result.counts["audit_events.payload"] > 0
    assert (await verify(review)).ok

    async with superuser(database_url) as connection:
        saved = await snapshot(connection, review)
        # A purged row's other fields are still covered by its hash.
        await connection.execute(
            "UPDATE audit_events SET actor = 'mallory' WHERE workflow_id = $1 AND seq = 3", review
        )
        problem = (await verify(review)).problem
        assert problem is not None and (problem.seq, problem.kind) == (3, Tamper.CHANGED)
        await restore(connection, review, saved)
        # Content cannot be swapped in under the purge mark.
        await connection.execute(
            'UPDATE audit_events SET payload = \'{"purged": true, "gate": "x"}\' '
            "WHERE workflow_id = $1 AND seq = 4",
            review,
        )
        problem = (await verify(review)).problem
        assert problem is not None and (problem.seq, problem.kind) == (4, Tamper.CHANGED)
        assert "purge marker" in problem.detail
        await restore(connection, review, saved)
        assert (await verify(review)).ok
        # A forged purge record (an earlier cutoff moved later) vouches for nothing.
        purge_trail = await snapshot(connection, PURGE_AUDIT_ID)
        await connection.execute(
            "UPDATE audit_events SET payload = jsonb_set(payload, '{cutoff}', to_jsonb($1::text)) "
            "WHERE workflow_id = $2",
            "2999-01-01T00:00:00+00:00",
            PURGE_AUDIT_ID,
        )
        problem = (await verify(review)).problem
        assert problem is not None and problem.seq == 1
        assert f"purge trail {PURGE_AUDIT_ID} that vouches for purges fails" in problem.detail
        await restore(connection, PURGE_AUDIT_ID, purge_trail)
        assert (await verify(review)).ok

    # Blanking a recent row by hand, dressed up as a purge, is not covered by any purge.
    async with session_factory().begin() as session:
        await write_audit_event(
            session,
            AuditEventInput(
                event_key="recent/1",
                workflow_id="recent",
                event_type="test.recent",
                payload={"note": "evidence"},
            ),
        )
    async with superuser(database_url) as connection:
        await connection.execute(
            "UPDATE audit_events SET payload = $1, purged_at = now() WHERE workflow_id = 'recent'",
            json.dumps(PURGED_PAYLOAD),
        )
    problem = (await verify("recent")).problem
    assert problem is not None and problem.kind is Tamper.CHANGED
    assert f"no purge recorded in {PURGE_AUDIT_ID} covers it" in problem.detail


def test_durations_parse_and_bad_ones_say_what_to_write() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2W") == timedelta(weeks=2)
    for bad in ("90", "90x", "d", "-3d", "1.5d", "3m", ""):
        with pytest.raises(ValueError, match="not a duration: use a whole number and a unit"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="give a positive duration"):
        parse_duration("0d")


@pytest.mark.slow  # real `keel` processes
async def test_the_purge_command_refuses_bad_input_and_asks_before_purging(
    client: Client, keel_settings: KeelSettings, database_url: str
) -> None:
    keel = KeelCli(client, keel_settings)
    bad = await keel("purge", "--older-than", "90 days")
    assert bad.code == 2 and "--older-than: '90 days' is not a duration" in bad.err
    async with superuser(database_url) as connection:
        await connection.execute(
            "INSERT INTO sessions (id, tenant) VALUES ('s-old', 'acme');"
            "INSERT INTO messages (session_id, seq, turn_id, role, content, created_at) "
            "VALUES ('s-old', 1, 't1', 'user', 'hello', now() - interval '100 days')"
        )
    unconfirmed = await keel("purge", "--older-than", "90d")  # stdin is not a terminal
    assert unconfirmed.code == 2 and "add --yes" in unconfirmed.err
    dry = await keel("purge", "--older-than", "90d", "--dry-run")
    assert dry.code == 0 and "dry run: nothing changed" in dry.out
    assert [m.content for m in await _messages("s-old")] == ["hello"]
    assert (await verify(PURGE_AUDIT_ID)).rows == 0
