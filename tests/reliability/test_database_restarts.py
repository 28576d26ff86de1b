"""A Postgres restart costs no request: the pooled connections it closed are replaced unseen.

Terminating every backend of the test's database server-side is what a restart
(``keel dev down && keel dev up``) does to a running process's pool: each pooled connection is
dead, and the next checkout used to fail its first statement with "connection is closed". Each
path that opens sessions (API request, CLI command, activity) must succeed on its first try.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import httpx2
from sqlalchemy import event, select
from temporalio.testing import ActivityEnvironment

from activities.jobs import JobActivities
from contracts.jobs import JobKind, JobRecord, JobStatus
from infra.database import get_engine, session_factory, sessions_for
from infra.settings import get_settings
from infra.tables import Job
from services.budgets import change_budget, current_budgets
from tests.api.conftest import api_token, keel_http, keel_url

__all__ = ["api_token", "keel_http", "keel_url"]  # the API fixtures this module uses


async def fresh_pool() -> list[Any]:
    """Empty the application's pool and record the asyncpg connections it opens from now on."""
    engine = get_engine()
    await engine.dispose()
    opened: list[Any] = []

    def record(dbapi_connection: Any, connection_record: Any) -> None:
        opened.append(dbapi_connection.driver_connection)

    event.listen(engine.sync_engine.pool, "connect", record)
    return opened


async def restart_backends(database_url: str, pooled: list[Any]) -> None:
    """What a restart does to a running process: close every connection to the test's database
    from the server side (pg_terminate_backend), then wait until this process has seen each
    pooled one close, as it has long before its next request after `keel dev down && up`."""
    assert pooled, "nothing pooled: the test would not exercise a dead connection"
    database = database_url.rpartition("/")[2]
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    deadline = asyncio.get_running_loop().time() + 10
    while not all(connection.is_closed() for connection in pooled):
        assert asyncio.get_running_loop().time() < deadline, "terminated backends still open"
        await asyncio.sleep(0.01)


async def test_an_api_request_after_a_restart_succeeds_first_time(
    keel_http: httpx2.AsyncClient, database_url: str
) -> None:
    pooled = await fresh_pool()
    # Every /v1 request reads its token from the database: the pool now holds a connection.
    assert (await keel_http.get("/v1/sessions/s-never-was")).status_code == 404

    await restart_backends(database_url, pooled)

    response = await keel_http.get("/v1/sessions/s-never-was")
    assert response.status_code == 404, response.text


async def test_a_cli_command_after_a_restart_succeeds_first_time(database_url: str) -> None:
    pooled = await fresh_pool()
    # The CLI's `keel budget` paths, in this process as a long-running command would hold them.
    await change_budget(session_factory(), "acme", "day", Decimal("5"), actor="test")

    await restart_backends(database_url, pooled)

    budgets = await current_budgets(session_factory(), get_settings(), "acme")
    assert [(state.tenant, state.period) for state in budgets] == [("acme", "day")]


async def test_an_activity_after_a_restart_succeeds_first_time(database_url: str) -> None:
    pooled = await fresh_pool()
    settings = get_settings()
    record_job = JobActivities(settings, sessions_for(settings)).record_job
    activities = ActivityEnvironment()
    running = JobRecord(job_id="j-1", tenant="default", kind=JobKind.ASK, status=JobStatus.RUNNING)
    await activities.run(record_job, running)

    await restart_backends(database_url, pooled)

    done = running.model_copy(update={"status": JobStatus.COMPLETED, "result": {"answer": 42}})
    await activities.run(record_job, done)
    async with session_factory()() as session:
        job = await session.scalar(select(Job).where(Job.id == "j-1"))
    assert job is not None
    assert (job.status, job.result) == ("completed", {"answer": 42})
