"""Graceful scaling: a batch worker told to stop (SIGTERM, as a scale-down sends it) mid-batch
stops polling, lets the calls it has in flight finish within its grace, and exits 0; a second
worker finishes the batch. Nothing is lost and nothing runs twice: the provider saw one request
per item, and the ledger holds exactly one successful attempt per item and no interrupted one."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from temporalio.client import Client

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.batch.conftest import items_of, prompt_lines, simulator_requests, start_batch
from tests.batch.test_batch_kill import ledger_outcomes
from tests.helpers import ledger_rows
from tests.worker_processes import WorkerProcess, worker_environment, worker_processes

ITEMS, CONCURRENCY, LATENCY_S = 24, 8, 2.0
GRACE_S = 20


@pytest.mark.slow
async def test_a_worker_sent_sigterm_mid_batch_drains_its_calls_and_exits_0(
    client: Client, keel_settings: KeelSettings, simulator: SimServer, tmp_path: Path
) -> None:
    simulator.configure(fixed_latency_s=LATENCY_S)
    env = worker_environment(client, keel_settings, KEEL_BATCH_SHUTDOWN_GRACE_SECONDS=str(GRACE_S))
    queue = keel_settings.batch_task_queue
    first = WorkerProcess(queue, env, tmp_path / "first.log").start()
    second = WorkerProcess(queue, env, tmp_path / "second.log")
    with worker_processes(first, second):
        await first.wait_until_polling()
        batch_id, handle = await start_batch(
            client, keel_settings, prompt_lines(ITEMS), concurrency=CONCURRENCY
        )
        # SIGTERM with a full window of calls at the provider, the first wave answered.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            outcomes = await ledger_outcomes(handle.id)
            if outcomes["ok"] >= CONCURRENCY and outcomes["in_flight"] == CONCURRENCY:
                break
            assert asyncio.get_running_loop().time() < deadline, f"no SIGTERM window: {outcomes}"
            await asyncio.sleep(0.02)
        exit_code = await asyncio.to_thread(first.terminate, GRACE_S + 15)
        # Its calls were answered before it exited, not cut off and retried elsewhere.
        drained = await ledger_outcomes(handle.id)
        second.start()
        await second.wait_until_polling()
        result = await asyncio.wait_for(handle.result(), timeout=120)

    assert exit_code == 0, first.logs()[-3000:]
    assert "worker.draining" in first.logs()
    assert drained["in_flight"] == 0 and drained["interrupted"] == 0, drained
    assert drained["ok"] >= outcomes["ok"] + CONCURRENCY
    assert (result.status, result.ok, result.failed) == ("completed", ITEMS, 0)
    items = await items_of(batch_id)
    assert len(items) == len({i.custom_id for i in items}) == ITEMS
    assert all(i.status == "ok" and i.response and i.response["text"] for i in items)
    ledger = await ledger_rows(handle.id)
    assert Counter(row.outcome for row in ledger) == Counter({"ok": ITEMS})
    assert all(row.attempt == 1 for row in ledger)
    assert simulator_requests(simulator.stats()) == ITEMS
    assert sum(i.cost_usd or 0 for i in items) == sum(r.cost_usd or 0 for r in ledger)
