"""What holds under faults, on the real dev stack: a batch whose Temporal server and then whose
Postgres are SIGKILLed mid-run, each brought back with `up` (what `keel dev up` does), still ends
with exactly one result per item, and the ledger holds exactly the calls the simulator received.

Everything is a real process: the Temporal dev server (SQLite file), the embedded Postgres, the
simulator and the workers `up` starts; only the test's own client and its reads run in here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
from devstack_helpers import Stack, discard_home, make_settings
from sqlalchemy import func, select
from temporalio.client import Client

from devstack import stack
from infra.database import dispose_engines, session_factory
from infra.settings import get_settings
from infra.tables import BatchItem
from infra.temporal_client import KeelPlugin
from tests.batch.conftest import items_of, prompt_lines, simulator_requests, start_batch
from tests.helpers import ledger_rows

ITEMS, CONCURRENCY, LATENCY_S = 300, 30, 1.0
PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "KEEL_OPENAI_API_KEY",
    "KEEL_ANTHROPIC_API_KEY",
)


@contextlib.contextmanager
def traversable_home() -> Iterator[Path]:
    """A throw-away KEEL_HOME under /tmp that the embedded Postgres' user can reach (0755)."""
    home = Path(tempfile.mkdtemp(prefix="keel-faults-", dir="/tmp"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        # Also removes the Postgres service directory under /var/lib/keel-postgres that a home
        # gets when keel-postgres cannot reach the installed binaries (a clone in a 0700 dir).
        discard_home(home)


def sigkill(status: stack.StackStatus, part: str) -> None:
    """SIGKILL the part's process, as a crash or the OOM killer would; wait until it is gone."""
    pid = status.part(part).pid
    assert pid is not None, f"{part} is not running"
    process = psutil.Process(pid)
    process.send_signal(signal.SIGKILL)
    process.wait(10)


async def items_done(batch_id: str) -> int:
    async with session_factory()() as session:
        done = await session.scalar(
            select(func.count())
            .select_from(BatchItem)
            .where(BatchItem.batch_id == batch_id, BatchItem.status.in_(("ok", "failed")))
        )
    return int(done or 0)


async def wait_for_progress(batch_id: str, at_least: int, timeout: float = 60) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while (done := await items_done(batch_id)) < at_least:
        assert asyncio.get_running_loop().time() < deadline, f"stuck at {done}/{ITEMS} items"
        await asyncio.sleep(0.2)
    return done


@pytest.mark.slow
async def test_a_batch_survives_temporal_and_postgres_being_killed_mid_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEEL_METRICS_PORT", "0")
    monkeypatch.setenv("KEEL_LOG_FORMAT", "json")
    # Attempts cut off by a kill are noticed by their heartbeat timeout: keep it short here.
    policy = get_settings().batch_policy.model_copy(
        update={
            "heartbeat_seconds": 2,
            "start_to_close_seconds": 30,
            "initial_interval_seconds": 0.2,
        }
    )
    monkeypatch.setenv("KEEL_BATCH_POLICY", policy.model_dump_json())

    with traversable_home() as home:
        settings = make_settings(home, batch_policy=policy)
        dev = Stack(settings, overrides={})
        status = await asyncio.to_thread(dev.up)
        assert status.simulator_url is not None
        async with httpx2.AsyncClient(base_url=status.simulator_url) as simulator:
            configured = await simulator.post(
                "/admin/config", json={"fixed_latency_s": LATENCY_S, "latency_scale": 0}
            )
            assert configured.status_code == 200, configured.text
            # This process reads the stack's database like any keel command would.
            monkeypatch.setenv("DATABASE_URL", status.database_url)
            get_settings.cache_clear()
            try:
                client = await Client.connect(
                    status.temporal_address,
                    namespace=status.temporal_namespace,
                    plugins=[KeelPlugin(settings)],
                )
                batch_id, handle = await start_batch(
                    client, settings, prompt_lines(ITEMS), concurrency=CONCURRENCY
                )

                await wait_for_progress(batch_id, ITEMS // 5)
                sigkill(status, stack.TEMPORAL)
                restarted = await asyncio.to_thread(dev.up)
                assert restarted.part(stack.TEMPORAL).action == "started"

                done_at_kill = await wait_for_progress(batch_id, ITEMS // 2)
                # Calls are in flight (a full window at the simulator) and most items still to go.
                assert done_at_kill < ITEMS - 2 * CONCURRENCY, "the batch outran the kills"
                sigkill(status, stack.POSTGRES)
                restarted = await asyncio.to_thread(dev.up)
                assert restarted.part(stack.POSTGRES).action == "started"
                # The workers rode out both: the same processes still run.
                for queue in stack.worker_queues(settings):
                    part = stack.worker_part(queue)
                    assert restarted.part(part).pid == status.part(part).pid, part

                result = await asyncio.wait_for(handle.result(), timeout=90)
                stats = (await simulator.get("/admin/stats")).json()
                items = await items_of(batch_id)
                ledger = await ledger_rows(handle.id)
            finally:
                await dispose_engines()
                get_settings.cache_clear()

    assert (result.status, result.ok, result.failed) == ("completed", ITEMS, 0)
    assert len(items) == len({item.custom_id for item in items}) == ITEMS
    assert all(item.status == "ok" and item.response for item in items)
    outcomes = Counter(row.outcome for row in ledger)
    # Every call that reached the provider has its ledger row, and only those; none is left open.
    assert len(ledger) == simulator_requests(stats), outcomes
    assert outcomes["ok"] == ITEMS, outcomes
    assert outcomes["in_flight"] == 0, outcomes
    assert sum(item.cost_usd or 0 for item in items) == sum(row.cost_usd or 0 for row in ledger)
