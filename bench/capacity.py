"""The ceilings of keel's Postgres hot rows: how many operations per second one shared row takes.

Run: ``.venv/bin/python bench/capacity.py`` (``--seconds`` per measurement, ``--concurrency``
callers, as many as a worker's database pool holds).

Every LLM call passes three shared rows (ARCHITECTURE.md, "Capacity"), each in its own
transaction, as the activity runs them:

(a) GCRA acquire (activities/llm/rate_limits.py ``acquire``) on ONE provider bucket with a
    limit far above the offered load, so every acquisition is admitted: the row's ceiling, not
    the configured limit.
(b) breaker admit (activities/llm/circuit_breaker.py ``admit`` + ``record_success``) on one
    closed breaker: the call path's read and its success write.
(d) the same acquisitions spread over ``--concurrency`` buckets (a sharded bucket: no shared
    row), to tell the row's ceiling from the machine's.
(c) tenant spend reservation (activities/llm/budgets.py ``reserve``) against one tenant with a
    day budget: the budget row is locked FOR UPDATE, its spend read, and the transaction ends.

Printed: operations/s and p50/p99 transaction latency per hot row, with the machine's load
average (the figures are this machine's, shared with whatever else runs).

Needs Postgres (KEEL_TEST_DATABASE_URL or 127.0.0.1:5432): a scratch database is created and
dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.ext.asyncio import AsyncSession

from activities.llm.budgets import Estimate, reserve, set_budget
from activities.llm.circuit_breaker import BreakerConfig, admit, record_success
from activities.llm.rate_limits import REQUESTS, Charge, acquire
from infra.database import dispose_engines, session_factory
from infra.migrate import upgrade_to_head
from infra.settings import get_settings

Operation = Callable[[AsyncSession], Awaitable[object]]

# Far above any offered load: every acquisition conforms, so what is measured is the row.
UNLIMITED = Charge("openai", REQUESTS, 1, per_minute=60_000_000, burst_seconds=60)
BREAKER = BreakerConfig(failure_threshold=5, window_seconds=60, cooldown_seconds=30)
TENANT = "bench-tenant"


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def measure(name: str, operation: Operation, seconds: float, concurrency: int) -> None:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session_factory().begin() as session:
                await operation(session)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cut = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<34} {len(latencies) / elapsed:>8.0f} ops/s   p50 {cut[49]:6.1f} ms   "
        f"p99 {cut[98]:6.1f} ms   ({len(latencies)} ops, {concurrency} callers)",
        flush=True,
    )


async def main(seconds: float, concurrency: int) -> None:
    server = os.environ.get(
        "KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ).replace("postgresql+asyncpg://", "postgresql://")
    admin_url = server.rpartition("/")[0] + "/postgres"
    name = f"keel_bench_capacity_{os.getpid()}"
    database_url = admin_url.rpartition("/")[0] + f"/{name}"
    await _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _admin(admin_url, f"CREATE DATABASE {name}")
    os.environ["DATABASE_URL"] = database_url
    get_settings.cache_clear()
    settings = get_settings()
    try:
        await asyncio.to_thread(upgrade_to_head, database_url)
        async with session_factory().begin() as session:
            await set_budget(session, TENANT, "day", Decimal("1000000"))
        load = os.getloadavg()
        print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")

        async def gcra(session: AsyncSession) -> object:
            return await acquire(session, [UNLIMITED], max_wait_seconds=0)

        async def breaker(session: AsyncSession) -> object:
            await admit(session, "openai", "gpt-4o", BREAKER)
            await record_success(session, "openai", "gpt-4o")
            return None

        estimate = Estimate(lambda: Decimal("0.001"))

        async def budget(session: AsyncSession) -> object:
            return await reserve(session, TENANT, estimate, "gpt-4o", settings)

        shards = iter(range(1_000_000))

        async def gcra_sharded(session: AsyncSession) -> object:
            # The lift's shape: each caller on its own share of the limit (no shared row).
            shard = next(shards) % concurrency
            charge = Charge(f"openai#{shard}", REQUESTS, 1, UNLIMITED.per_minute / concurrency, 60)
            return await acquire(session, [charge], max_wait_seconds=0)

        await measure("(a) GCRA acquire, one bucket", gcra, seconds, concurrency)
        await measure("(d) GCRA acquire, bucket sharded", gcra_sharded, seconds, concurrency)
        await measure("(b) breaker admit + success", breaker, seconds, concurrency)
        await measure("(c) spend reservation, one tenant", budget, seconds, concurrency)
    finally:
        await dispose_engines()
        await _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.concurrency))
