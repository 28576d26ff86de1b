"""Steering a running batch: pause / resume / cancel / retry-failed as Updates that answer back
(and refuse what cannot be done), and the failure-rate limit that aborts a batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.batch.items import batch_report, count_items
from contracts.batch import BatchCounts, ControlRequest
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from services.batches import start_retry_run
from tests.batch.conftest import (
    CHEAP,
    items_of,
    prompt_lines,
    simulator_requests,
    start_batch,
)
from tests.helpers import audit_events, eventually, ledger_rows
from workflows.batch import PagedBatchWorkflow

ALICE = ControlRequest(by="alice")


async def refused(update: Awaitable[object]) -> str:
    """The message a refused Update answers with (its validator's reason)."""
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await update
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "BatchControlRefused"
    return cause.message


async def counts(batch_id: str) -> BatchCounts:
    async with session_factory()() as session:
        return await count_items(session, batch_id)


async def test_pause_starts_nothing_new_and_resume_finishes_the_batch(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.configure(fixed_latency_s=0.4)
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(12), concurrency=2)

    async def some_done() -> bool:
        return (await counts(batch_id)).ok >= 2

    await eventually(some_done, timeout=30, interval=0.1)
    ack = await handle.execute_update(PagedBatchWorkflow.pause, ALICE)
    assert ack.status == "paused" and ack.in_flight <= 2

    async def drained() -> bool:
        """Nothing in flight, and every finished item's outcome written."""
        progress = await handle.query(PagedBatchWorkflow.progress)
        return progress.in_flight == 0 and (await counts(batch_id)).ok == progress.ok

    await eventually(drained, timeout=30, interval=0.1)
    requests_when_paused = simulator_requests(simulator.stats())
    done_when_paused = (await counts(batch_id)).ok
    await asyncio.sleep(1.2)  # three item latencies: a running batch would have moved on
    assert simulator_requests(simulator.stats()) == requests_when_paused
    assert (await counts(batch_id)).ok == done_when_paused < 12
    report_status = (await handle.query(PagedBatchWorkflow.progress)).status
    assert report_status == "paused"

    message = await refused(
        handle.execute_update(PagedBatchWorkflow.pause, ControlRequest(by="bob"))
    )
    assert message == f"batch {batch_id} is already paused (by alice)"
    await handle.execute_update(PagedBatchWorkflow.resume, ALICE)
    result = await handle.result()
    assert (result.status, result.ok) == ("completed", 12)
    events = [e.event_type for e in await audit_events(handle.id)]
    assert events.index("batch.paused") < events.index("batch.resumed")
    paused = next(e for e in await audit_events(handle.id) if e.event_type == "batch.paused")
    assert paused.actor == "alice"


async def test_cancel_skips_pending_items_and_lets_in_flight_ones_finish(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    # 20 items, 3 at a time, 1 s each: about 7 s of batch. The cancel goes as soon as the first
    # call reaches the provider, not when an outcome is counted: a page writes outcomes in
    # groups, and on a busy machine the first count came after the last item had run.
    simulator.configure(fixed_latency_s=1.0)
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(20), concurrency=3)
    await eventually(
        lambda: simulator_requests(simulator.stats()), lambda n: n >= 1, timeout=30, interval=0.05
    )
    ack = await handle.execute_update(PagedBatchWorkflow.cancel, ALICE)
    assert ack.status == "cancelling"
    message = await refused(handle.execute_update(PagedBatchWorkflow.cancel, ALICE))
    assert message == f"batch {batch_id} is already stopping"
    result = await handle.result()
    assert result.status == "cancelled" and result.reason == "cancelled by alice"
    assert result.ok + result.skipped == 20 and result.skipped > 0
    items = await items_of(batch_id)
    skipped = [i for i in items if i.status == "skipped"]
    assert all("cancelled by alice" in (i.error_message or "") for i in skipped)
    # Every call that reached the provider is an item with its answer: none was thrown away.
    assert simulator_requests(simulator.stats()) == result.ok == len(await ledger_rows(handle.id))


async def test_retry_failed_runs_only_the_failed_items_again(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("context_window", model=CHEAP, count=3)
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(10), concurrency=1)
    first = await handle.result()
    assert (first.ok, first.failed) == (7, 3)
    failed_ids = {i.custom_id for i in await items_of(batch_id) if i.status == "failed"}

    async with session_factory()() as session:
        report = await batch_report(session, batch_id)
    assert report is not None
    again = await start_retry_run(client, keel_settings, session_factory(), report)
    second = await again.result()
    assert (second.status, second.ok, second.failed) == ("completed", 10, 0)
    items = await items_of(batch_id)
    assert {i.custom_id for i in items if i.run_count == 2} == failed_ids
    assert all(i.run_count == 1 for i in items if i.custom_id not in failed_ids)
    # One workflow id, two runs: the ledger keeps every attempt of both.
    assert len(await ledger_rows(handle.id)) == simulator_requests(simulator.stats()) == 13


async def test_retry_failed_while_paused_puts_failed_items_back_in_line(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.configure(fixed_latency_s=0.2)
    simulator.add_faults("context_window", model=CHEAP, count=2)
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(10), concurrency=1)

    async def two_failed() -> bool:
        return (await counts(batch_id)).failed >= 2

    await eventually(two_failed, timeout=30, interval=0.1)
    await handle.execute_update(PagedBatchWorkflow.pause, ALICE)
    ack = await handle.execute_update(PagedBatchWorkflow.retry_failed, ALICE)
    assert ack.reset == 2
    await handle.execute_update(PagedBatchWorkflow.resume, ALICE)
    result = await handle.result()
    assert (result.ok, result.failed) == (10, 0)


async def test_crossing_the_failure_rate_aborts_the_batch(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("context_window", model=CHEAP, count=100)
    _, handle = await start_batch(
        client, keel_settings, prompt_lines(100), concurrency=4, max_failure_rate=0.25
    )
    result = await handle.result()
    assert result.status == "aborted"
    assert result.reason is not None and "crossed the limit of 25.0%" in result.reason
    # Judged after 20 items ran; what was in flight then finished; the rest never ran.
    assert 20 <= result.failed <= 20 + 4
    assert result.skipped == 100 - result.failed
    assert simulator_requests(simulator.stats()) == result.failed
    events = [e.event_type for e in await audit_events(handle.id)]
    assert events[-1] == "batch.aborted"


async def test_controls_refuse_a_finished_batch_clearly(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.configure(fixed_latency_s=0.3)
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(6), concurrency=2)
    await handle.execute_update(PagedBatchWorkflow.cancel, ALICE)
    message = await refused(handle.execute_update(PagedBatchWorkflow.resume, ALICE))
    assert message == f"batch {batch_id} is stopping; nothing to resume"
    message = await refused(handle.execute_update(PagedBatchWorkflow.pause, ALICE))
    assert message == f"batch {batch_id} is stopping; nothing to pause"
    await handle.result()


async def test_pause_and_cancel_reach_a_running_page_within_two_seconds(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    # One page would run for a minute: 8 calls at a time, 2 s each, 240 items.
    simulator.configure(fixed_latency_s=2.0)
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(240), concurrency=8)

    async def some_done() -> bool:
        return (await counts(batch_id)).ok >= 8

    await eventually(some_done, timeout=60, interval=0.1)
    await handle.execute_update(PagedBatchWorkflow.pause, ALICE)
    paused_at = time.time()

    async def drained() -> bool:
        progress = await handle.query(PagedBatchWorkflow.progress)
        return progress.in_flight == 0

    await eventually(drained, timeout=30, interval=0.1)
    late = [r.at - paused_at for r in simulator.requests() if r.at > paused_at + 2.0]
    assert late == [], f"calls started after the pause: {late}"
    # What was in flight finished and was recorded; nothing else is running.
    state = await counts(batch_id)
    assert state.running == 0 and state.ok == simulator_requests(simulator.stats())

    await handle.execute_update(PagedBatchWorkflow.resume, ALICE)

    def resumed_calls() -> int:
        return simulator_requests(simulator.stats())

    await eventually(resumed_calls, lambda n: n > state.ok, timeout=30, interval=0.1)
    await handle.execute_update(PagedBatchWorkflow.cancel, ALICE)
    cancelled_at = time.time()
    result = await asyncio.wait_for(handle.result(), timeout=60)
    late = [r.at - cancelled_at for r in simulator.requests() if r.at > cancelled_at + 2.0]
    assert late == [], f"calls started after the cancel: {late}"
    assert result.status == "cancelled" and result.ok + result.skipped == 240
    assert simulator_requests(simulator.stats()) == result.ok == len(await ledger_rows(handle.id))
