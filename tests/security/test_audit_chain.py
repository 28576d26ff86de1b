"""The audit trail is tamper-evident: each workflow's rows are a hash chain with a recorded head,
and `keel audit verify` names the first row that was changed, inserted or deleted."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import Client
from temporalio.worker import Worker

from activities.audit_trail import write_audit_event
from contracts.audit import AuditEventInput
from infra.audit_chain import (
    GENESIS_HASH,
    ChainedFields,
    Tamper,
    payload_digest,
    verify_trail,
)
from infra.database import dispose_engines, session_factory
from infra.migrate import alembic_config, upgrade_to_head
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.helpers import KeelCli
from tests.security.audit_support import (
    restore,
    run_review,
    snapshot,
    superuser,
    trail_rows,
    verify,
)

Tampering = Callable[[asyncpg.Connection, str, list[asyncpg.Record]], Awaitable[None]]


def _forged(row: asyncpg.Record, seq: int, prev_hash: str) -> dict[str, Any]:
    """A row a forger who knows the hash format writes: its own hash and link are right."""
    payload = json.dumps({"gate": "publish", "decision": "approved"})
    fields = ChainedFields(
        workflow_id=row["workflow_id"],
        seq=seq,
        event_key=f"{row['workflow_id']}/forged",
        run_id=row["run_id"],
        tenant=row["tenant"],
        event_type="approval.approved",
        actor="mallory",
        occurred_at=row["occurred_at"] + timedelta(milliseconds=1),
        payload_sha256=payload_digest(payload),
        prev_hash=prev_hash,
    )
    return {**fields.__dict__, "payload": payload, "row_hash": fields.row_hash()}


async def _insert(connection: asyncpg.Connection, values: dict[str, Any]) -> None:
    columns = ", ".join(values)
    placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    await connection.execute(
        f"INSERT INTO audit_events ({columns}) VALUES ({placeholders})", *values.values()
    )


async def _shift_from(connection: asyncpg.Connection, workflow_id: str, seq: int, by: int) -> None:
    """Renumber rows seq.. by ``by`` (through negatives: (workflow_id, seq) is unique)."""
    await connection.execute(
        "UPDATE audit_events SET seq = -seq WHERE workflow_id = $1 AND seq >= $2", workflow_id, seq
    )
    await connection.execute(
        "UPDATE audit_events SET seq = -seq + $2 WHERE workflow_id = $1 AND seq < 0",
        workflow_id,
        by,
    )


async def change_payload(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute(
        'UPDATE audit_events SET payload = payload || \'{"reviewer": "mallory"}\' '
        "WHERE workflow_id = $1 AND seq = 5",
        wf,
    )


async def change_actor(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute(
        "UPDATE audit_events SET actor = 'mallory' WHERE workflow_id = $1 AND seq = 5", wf
    )


async def change_time(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute(
        "UPDATE audit_events SET occurred_at = occurred_at - interval '1 microsecond' "
        "WHERE workflow_id = $1 AND seq = 5",
        wf,
    )


async def insert_forged_row(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await _shift_from(c, wf, 5, 1)
    await _insert(c, _forged(rows[3], 5, rows[3]["row_hash"]))
    await c.execute(
        "UPDATE audit_chain_heads SET last_seq = last_seq + 1 WHERE workflow_id = $1", wf
    )


async def append_forged_row(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await _insert(c, _forged(rows[-1], len(rows) + 1, rows[-1]["row_hash"]))


async def delete_middle_row(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute("DELETE FROM audit_events WHERE workflow_id = $1 AND seq = 5", wf)


async def delete_and_renumber(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute("DELETE FROM audit_events WHERE workflow_id = $1 AND seq = 5", wf)
    await _shift_from(c, wf, 6, -1)


async def delete_last_row(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute("DELETE FROM audit_events WHERE workflow_id = $1 AND seq = $2", wf, len(rows))


async def delete_head(c: asyncpg.Connection, wf: str, rows: list[asyncpg.Record]) -> None:
    await c.execute("DELETE FROM audit_chain_heads WHERE workflow_id = $1", wf)


async def test_a_reviews_trail_verifies_and_every_kind_of_tampering_is_named_by_seq(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    database_url: str,
) -> None:
    workflow_id = await run_review(client, keel_settings, simulator)
    report = await verify(workflow_id)
    assert report.ok, report.problem
    assert report.rows >= 10 and report.head_seq == report.rows

    async with superuser(database_url) as connection:
        rows = await trail_rows(connection, workflow_id)
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
        assert rows[0]["prev_hash"] == GENESIS_HASH
        assert all(b["prev_hash"] == a["row_hash"] for a, b in itertools.pairwise(rows))
        last = len(rows)
        cases: list[tuple[Tampering, int, Tamper, str]] = [
            (change_payload, 5, Tamper.CHANGED, "payload does not match"),
            (change_actor, 5, Tamper.CHANGED, "do not match its row_hash"),
            (change_time, 5, Tamper.CHANGED, "do not match its row_hash"),
            (insert_forged_row, 5, Tamper.INSERTED, "inserted before it"),
            (append_forged_row, last + 1, Tamper.INSERTED, "past the head"),
            (delete_middle_row, 5, Tamper.DELETED, "seq 5 missing"),
            (delete_and_renumber, 5, Tamper.DELETED, "before it were deleted"),
            (delete_last_row, last, Tamper.TRUNCATED, f"seq {last} deleted"),
            (delete_head, 1, Tamper.HEAD_MISSING, "audit_chain_heads"),
        ]
        saved = await snapshot(connection, workflow_id)
        for tamper, seq, kind, words in cases:
            await tamper(connection, workflow_id, rows)
            problem = (await verify(workflow_id)).problem
            assert problem is not None, tamper.__name__
            assert (problem.seq, problem.kind) == (seq, kind), (tamper.__name__, problem)
            assert words in problem.detail, (tamper.__name__, problem)
            await restore(connection, workflow_id, saved)
            assert (await verify(workflow_id)).ok, tamper.__name__


@pytest.mark.slow  # real `keel` processes
async def test_keel_audit_verify_prints_the_head_and_fails_naming_the_row(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    database_url: str,
) -> None:
    workflow_id = await run_review(client, keel_settings, simulator)
    keel = KeelCli(client, keel_settings)
    report = await verify(workflow_id)
    verified, shown = await asyncio.gather(
        keel("audit", "verify", workflow_id), keel("audit", workflow_id)
    )
    assert verified.code == 0, verified.text
    assert f"OK      {workflow_id}  {report.rows} rows" in verified.out
    assert f"head seq {report.head_seq} {report.head_hash}" in verified.out
    # The first form of the command still shows the trail.
    assert shown.code == 0 and f"audit trail · {workflow_id}" in shown.out

    async with superuser(database_url) as connection:
        await change_actor(connection, workflow_id, [])
    failed, everything = await asyncio.gather(
        keel("audit", "verify", workflow_id), keel("audit", "verify", "--all")
    )
    assert failed.code == 3, failed.text
    assert f"FAILED  {workflow_id}  seq 5 changed" in failed.out
    assert everything.code == 3 and "1 failed" in everything.out
    assert "OK      keel/reviewers" in everything.out  # other trails still verify

    missing = await keel("audit", "verify", "no-such-workflow")
    assert missing.code == 1 and "no audit trail for 'no-such-workflow'" in missing.err


def _event(workflow_id: str, key: str, payload: dict[str, Any] | None = None) -> AuditEventInput:
    return AuditEventInput(
        event_key=key, workflow_id=workflow_id, event_type="test.event", payload=payload or {}
    )


async def _write(event: AuditEventInput) -> None:
    async with session_factory().begin() as session:
        await write_audit_event(session, event)


async def test_a_retried_write_adds_nothing_and_concurrent_writers_keep_the_chain_dense(
    database_url: str,
) -> None:
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    await _write(_event(workflow_id, "k1", {"n": 1}))
    before = await verify(workflow_id)
    await _write(_event(workflow_id, "k1", {"n": 999}))  # same key, e.g. a retried activity
    after = await verify(workflow_id)
    assert after.ok and (after.rows, after.head_hash) == (1, before.head_hash)

    # 30 writers at once, each key sent twice: every key lands once, seq 2..31 with no gap.
    keys = [f"c{n}" for n in range(30)]
    await asyncio.gather(*(_write(_event(workflow_id, key, {"n": key})) for key in keys + keys))
    report = await verify(workflow_id)
    assert report.ok, report.problem
    assert report.rows == 31 and report.head_seq == 31
    async with superuser(database_url) as connection:
        rows = await trail_rows(connection, workflow_id)
    assert sorted(row["event_key"] for row in rows[1:]) == sorted(keys)
    # Times follow the chain: a later seq never has an earlier time.
    assert all(a["occurred_at"] <= b["occurred_at"] for a, b in itertools.pairwise(rows))


_JSON_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _JSON_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_JSON_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _payloads(count: int) -> list[dict[str, Any]]:
    drawn: list[dict[str, Any]] = []

    @settings(max_examples=count, database=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(_JSON_TEXT, _JSON, max_size=5))
    def collect(payload: dict[str, Any]) -> None:
        drawn.append(payload)

    collect()
    return drawn


async def test_any_json_payload_hashes_the_same_after_the_jsonb_round_trip(
    database_url: str,
) -> None:
    """Postgres rewrites numbers (1e+20 → 100000000000000000000, -0.0 → 0.0), reorders keys and
    drops whitespace: the digest must not notice."""
    workflow_id = "wf-json"
    payloads = [{"big": 1e20, "neg": -0.0, "tiny": 1.5e-7, "x": 1.0}, *_payloads(150)]
    async with session_factory().begin() as session:
        for number, payload in enumerate(payloads):
            await write_audit_event(session, _event(workflow_id, f"j{number}", payload))
    report = await verify(workflow_id)
    assert report.ok, report.problem
    assert report.rows == len(payloads)


async def test_the_migration_chains_rows_written_before_it(postgres_server_url: str) -> None:
    name = f"keel_audit_backfill_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f"CREATE DATABASE {name}")
    url = postgres_server_url.rpartition("/")[0] + f"/{name}"
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "0007_api_tokens")
        connection = await asyncpg.connect(url)
        try:
            # Two workflows' rows interleaved, as they are written; times with microseconds.
            for n in range(7):
                await connection.execute(
                    "INSERT INTO audit_events (event_key, workflow_id, tenant, event_type, actor, "
                    "payload, occurred_at) VALUES ($1, $2, 'default', 'old.event', 'keel', $3, "
                    "now() - make_interval(days => $4))",
                    f"old-{n}",
                    "wf-a" if n % 2 else "wf-b",
                    json.dumps({"n": n, "cost": 0.1 * n, "big": 1e21}),
                    n,
                )
        finally:
            await connection.close()
        await asyncio.to_thread(upgrade_to_head, url)
        async with superuser(url) as connection:
            rows = await trail_rows(connection, "wf-b")
            assert [row["event_key"] for row in rows] == ["old-0", "old-2", "old-4", "old-6"]
            assert [row["seq"] for row in rows] == [1, 2, 3, 4]
        session_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        async with session_factory(session_url)() as session:
            for workflow_id, count in (("wf-a", 3), ("wf-b", 4)):
                report = await verify_trail(session, workflow_id)
                assert report.ok and report.rows == count, report
        # New rows continue the migrated chain.
        async with session_factory(session_url).begin() as session:
            await write_audit_event(session, _event("wf-a", "new-1"))
        async with session_factory(session_url)() as session:
            report = await verify_trail(session, "wf-a")
            assert report.ok and report.head_seq == 4
    finally:
        await dispose_engines()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
