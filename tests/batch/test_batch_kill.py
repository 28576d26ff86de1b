"""Exactly once across a crash: a batch worker SIGKILLed mid-batch and restarted ends with one
result per item, and the ledger holds exactly the attempts that reached the provider (the
simulator counts them) — the killed ones included, marked interrupted, never lost or doubled."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import LlmCall
from llmsim import SimServer
from tests.batch.conftest import items_of, prompt_lines, simulator_requests, start_batch
from tests.helpers import ledger_rows
from tests.worker_processes import WorkerProcess, worker_environment, worker_processes

ITEMS, CONCURRENCY, LATENCY_S = 24, 8, 1.5


async def ledger_outcomes(workflow_id: str) -> Counter[str]:
    async with session_factory()() as session:
        rows = await session.execute(
            select(LlmCall.outcome, func.count())
            .where(LlmCall.workflow_id == workflow_id)
            .group_by(LlmCall.outcome)
        )
        return Counter({outcome: count for outcome, count in rows})


@pytest.mark.slow
async def test_a_worker_killed_mid_batch_leaves_one_result_per_item_and_an_exact_ledger(
    client: Client, keel_settings: KeelSettings, simulator: SimServer, tmp_path: Path
) -> None:
    simulator.configure(fixed_latency_s=LATENCY_S)
    # A dead worker's attempts are noticed by their heartbeat timeout: keep it short here.
    policy = keel_settings.batch_policy.model_copy(
        update={
            "heartbeat_seconds": 2,
            "start_to_close_seconds": 30,
            "initial_interval_seconds": 0.2,
        }
    )
    env = worker_environment(client, keel_settings, KEEL_BATCH_POLICY=policy.model_dump_json())
    queue = keel_settings.batch_task_queue
    first = WorkerProcess(queue, env, tmp_path / "first.log").start()
    second = WorkerProcess(queue, env, tmp_path / "second.log")
    with worker_processes(first, second):
        await first.wait_until_polling()
        batch_id, handle = await start_batch(
            client, keel_settings, prompt_lines(ITEMS), concurrency=CONCURRENCY
        )
        # Kill in the middle of the second wave: the first wave's answers are written, a full
        # window of calls is at the provider, and every started attempt has reached it.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            outcomes = await ledger_outcomes(handle.id)
            if (
                outcomes["ok"] >= CONCURRENCY
                and outcomes["in_flight"] == CONCURRENCY
                and sum(outcomes.values()) == simulator_requests(simulator.stats())
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, f"no kill window: {outcomes}"
            await asyncio.sleep(0.02)
        first.kill()
        killed_in_flight = outcomes["in_flight"]
        second.start()
        await second.wait_until_polling()
        result = await asyncio.wait_for(handle.result(), timeout=120)

    assert (result.status, result.ok, result.failed) == ("completed", ITEMS, 0)
    items = await items_of(batch_id)
    assert len(items) == len({i.custom_id for i in items}) == ITEMS
    assert all(i.status == "ok" and i.response and i.response["text"] for i in items)
    ledger = await ledger_rows(handle.id)
    outcomes = Counter(row.outcome for row in ledger)
    # Every attempt that reached the provider has its row, and only those.
    assert len(ledger) == simulator_requests(simulator.stats())
    assert outcomes["interrupted"] == killed_in_flight
    assert outcomes["in_flight"] == 0
    assert outcomes["ok"] == ITEMS
    interrupted = [row for row in ledger if row.outcome == "interrupted"]
    assert all(row.cost_usd is None for row in interrupted)
    # The killed items were answered by their next attempt, and bill what the ledger says.
    retried = {(row.run_id, row.activity_id) for row in interrupted}
    assert all(
        any(
            r.outcome == "ok" and (r.run_id, r.activity_id) == key and r.attempt > 1 for r in ledger
        )
        for key in retried
    )
    assert sum(i.cost_usd or 0 for i in items) == sum(r.cost_usd or 0 for r in ledger)
