"""What one audit row costs to write: ``write_audit_event`` in its own transaction, as the
``record_audit_event`` activity runs it (the LLM call path records fallbacks and downgrades
this way).

Run: ``.venv/bin/python bench/audit_write.py [--writes 400]``

Four shapes, interleaved so machine load hits them alike, median and p90 of each:

* ``unchained``      the writer before the hash chain (one INSERT … ON CONFLICT DO NOTHING,
                     into a table of the old shape): the baseline;
* ``same workflow``  every write appends to one workflow's trail (the chain grows);
* ``new workflow``   every write is the first row of a new workflow;
* ``replayed``       a write whose event key is already recorded (a retried activity).

Needs Postgres (KEEL_TEST_DATABASE_URL or 127.0.0.1:5432); a scratch database is created and
dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collections.abc import Awaitable, Callable

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from activities.audit_trail import write_audit_event
from contracts.audit import AuditEventInput
from infra.database import dispose_engines, session_factory
from infra.migrate import upgrade_to_head

Writer = Callable[[AsyncSession, AuditEventInput], Awaitable[None]]
PAYLOAD = {"model": "gpt-4o-mini", "error_class": "rate_limited", "attempt": 3, "cost": 0.00012}

# audit_events as it was before revision 0008, and the statement that wrote it.
UNCHAINED = Table(
    "bench_unchained_audit_events",
    MetaData(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_key", String(500), unique=True, nullable=False),
    Column("workflow_id", String(300), nullable=False),
    Column("run_id", String(100)),
    Column("tenant", String(100), nullable=False, index=True),
    Column("event_type", String(100), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("payload", JSONB, nullable=False, server_default="{}"),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_bench_unchained_workflow_id_id", "workflow_id", "id"),
)


async def _unchained_write(session: AsyncSession, event: AuditEventInput) -> None:
    await session.execute(
        insert(UNCHAINED)
        .values(
            event_key=event.event_key,
            workflow_id=event.workflow_id,
            run_id=event.run_id,
            tenant=event.tenant,
            event_type=event.event_type,
            actor=event.actor,
            payload=event.payload,
        )
        .on_conflict_do_nothing(index_elements=["event_key"])
    )


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _timed_write(event: AuditEventInput, writer: Writer = write_audit_event) -> float:
    started = time.perf_counter()
    async with session_factory().begin() as session:
        await writer(session, event)
    return (time.perf_counter() - started) * 1000


def _event(workflow_id: str, key: str | None = None) -> AuditEventInput:
    return AuditEventInput(
        event_key=key or f"{workflow_id}/{uuid.uuid4()}",
        workflow_id=workflow_id,
        run_id="run-1",
        tenant="bench",
        event_type="llm.fallback",
        payload=PAYLOAD,
    )


async def measure(writes: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {
        "unchained": [],
        "same workflow": [],
        "new workflow": [],
        "replayed": [],
    }
    replayed = _event("bench-replayed")
    for _ in range(20):  # warm the pool and the statement caches
        await _timed_write(_event("bench-warmup"))
        await _timed_write(_event("bench-warmup"), _unchained_write)
    await _timed_write(replayed)
    for _ in range(writes):
        timings["unchained"].append(await _timed_write(_event("bench-unchained"), _unchained_write))
        timings["same workflow"].append(await _timed_write(_event("bench-same")))
        timings["new workflow"].append(await _timed_write(_event(f"bench-{uuid.uuid4()}")))
        timings["replayed"].append(await _timed_write(replayed))
    return timings


async def main(writes: int) -> None:
    server = os.environ.get(
        "KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ).replace("postgresql+asyncpg://", "postgresql://")
    admin_url = server.rpartition("/")[0] + "/postgres"
    name = f"keel_bench_audit_{os.getpid()}"
    database_url = admin_url.rpartition("/")[0] + f"/{name}"
    await _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _admin(admin_url, f"CREATE DATABASE {name}")
    os.environ["DATABASE_URL"] = database_url
    try:
        await asyncio.to_thread(upgrade_to_head, database_url)
        # Created by the login user, as a migration would: keel_app gets its default privileges.
        owner = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
        async with owner.begin() as connection:
            await connection.run_sync(UNCHAINED.metadata.create_all)
        await owner.dispose()
        timings = await measure(writes)
    finally:
        await dispose_engines()
        await _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"write_audit_event, own transaction, {writes} writes per shape (ms)")
    baseline = statistics.median(timings["unchained"])
    for shape, values in timings.items():
        ordered = sorted(values)
        p90 = ordered[int(len(ordered) * 0.9) - 1]
        median = statistics.median(values)
        print(
            f"  {shape:<14} median {median:6.3f}   p90 {p90:6.3f}   "
            f"median vs unchained {median / baseline:4.2f}x (+{median - baseline:.3f} ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=400)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.writes))
