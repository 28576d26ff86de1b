"""A Postgres restart costs no request: the pooled connections it closed are replaced unseen.

Terminating every backend of the test's database server-side is what a restart
(``keel dev down && keel dev up``) does to a running process's pool: each pooled connection is
dead, and the next checkout used to fail its first statement with "connection is closed". Each
path that opens sessions (API request, CLI command, activity) must succeed on its first try.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import httpx2
from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities.job_models import JobKind, JobRecord, JobStatus
from activities.jobs import record_job
from infra.database import get_engine, session_factory
from infra.tables import Job
from starters.budget import change_budget, current_budgets
from tests.api.conftest import api_token, keel_http, keel_url

__all__ = ["api_token", "keel_http", "keel_url"]  # the API fixtures this module uses


async def terminate_backends(database_url: str) -> int:
    """Close every other connection to the test's database from the server side, as a restart
    does, and wait until their backends have exited (so their sockets are closed)."""
    database = database_url.rpartition("/")[2]
    admin = await asyncpg.connect(database_url)
    try:
        pids = [
            row["pid"]
            for row in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        ]
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
        for _ in range(500):
            alive = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
            if not alive:
                return len(pids)
            await asyncio.sleep(0.01)
        raise AssertionError(f"backends {pids} still alive after pg_terminate_backend")
    finally:
        await admin.close()


def pooled_connections() -> int:
    """Connections idle in the application's pool (the ones a restart leaves dead)."""
    return get_engine().pool.checkedin()  # type: ignore[attr-defined]


async def test_an_api_request_after_a_restart_succeeds_first_time(
    keel_http: httpx2.AsyncClient, database_url: str
) -> None:
    # Every /v1 request reads its token from the database: the pool now holds a connection.
    assert (await keel_http.get("/v1/sessions/s-never-was")).status_code == 404
    assert pooled_connections() >= 1

    assert await terminate_backends(database_url) >= 1

    response = await keel_http.get("/v1/sessions/s-never-was")
    assert response.status_code == 404, response.text


async def test_a_cli_command_after_a_restart_succeeds_first_time(database_url: str) -> None:
    # The CLI's `keel budget` paths, in this process as a long-running command would hold them.
    await change_budget("acme", "day", Decimal("5"), actor="test")
    assert pooled_connections() >= 1

    assert await terminate_backends(database_url) >= 1

    budgets = await current_budgets("acme")
    assert [(state.tenant, state.period) for state in budgets] == [("acme", "day")]


async def test_an_activity_after_a_restart_succeeds_first_time(database_url: str) -> None:
    activities = ActivityEnvironment()
    running = JobRecord(job_id="j-1", tenant="default", kind=JobKind.ASK, status=JobStatus.RUNNING)
    await activities.run(record_job, running)
    assert pooled_connections() >= 1

    assert await terminate_backends(database_url) >= 1

    done = running.model_copy(update={"status": JobStatus.COMPLETED, "result": {"answer": 42}})
    await activities.run(record_job, done)
    async with session_factory()() as session:
        job = await session.scalar(select(Job).where(Job.id == "j-1"))
    assert job is not None
    assert (job.status, job.result) == ("completed", {"answer": 42})
