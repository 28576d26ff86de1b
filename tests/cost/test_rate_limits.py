"""Rate limits per provider are shared by every worker process, never multiplied by them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.llm.rate_limits import (
    REQUESTS,
    TOKENS,
    Charge,
    RateLimitedError,
    acquire,
    refund_unused,
)
from contracts.llm import Usage
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.conftest import reconfigure
from tests.cost.support import CHEAP, ask, requests_to
from tests.helpers import ledger_rows
from tests.worker_processes import WorkerProcess, worker_environment, worker_processes
from workers.builder import build_worker


async def take(charges: list[Charge], max_wait: float = 60) -> float:
    async with session_factory().begin() as session:
        return await acquire(session, charges, max_wait)


async def test_a_bucket_lets_its_burst_through_then_queues_callers_at_the_rate(
    keel_settings: KeelSettings,
) -> None:
    per_second = Charge("openai", REQUESTS, 1, per_minute=60, burst_seconds=2)
    # A full bucket holds two requests; the next ones are scheduled a second apart.
    waits = [await take([per_second]) for _ in range(4)]
    assert waits[0] == waits[1] == 0
    assert 0.5 < waits[2] <= 1.0 and 1.5 < waits[3] <= 2.0
    # A slot further away than the caller may wait is not taken: it learns when to come back.
    with pytest.raises(RateLimitedError) as refused:
        await take([per_second], max_wait=0.5)
    assert 2.0 < refused.value.retry_in_seconds <= 3.0
    assert 2.5 < await take([per_second]) <= 3.0  # the refusal took nothing


async def test_all_or_nothing_across_limits_and_unused_tokens_are_refunded(
    keel_settings: KeelSettings,
) -> None:
    tokens = Charge("anthropic", TOKENS, 100, per_minute=6000, burst_seconds=1)
    requests = Charge("anthropic", REQUESTS, 1, per_minute=60, burst_seconds=2)
    assert await take([requests, tokens]) == 0  # the token bucket is now empty
    with pytest.raises(RateLimitedError) as refused:
        await take([requests, tokens], max_wait=0.2)  # a request slot, but no tokens
    assert refused.value.charge.unit == TOKENS
    # The refused attempt did not keep its request slot (the savepoint rolled it back): the
    # bucket still holds the second of its two requests.
    assert await take([requests], max_wait=0.2) == 0
    # ... and a call that used 10 of its 100 tokens gives 90 back at once.
    async with session_factory().begin() as session:
        await refund_unused(session, [tokens], Usage(input_tokens=4, output_tokens=6))
    assert await take([Charge("anthropic", TOKENS, 90, 6000, 1)], max_wait=0.2) < 0.2


async def test_a_slot_too_far_away_is_retried_by_temporal_not_waited_for(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = keel_settings.interactive_policy.model_copy(update={"maximum_attempts": 8})
    settings = reconfigure(
        monkeypatch,
        KEEL_RATE_LIMITS='{"openai": {"requests_per_minute": 120, "burst_seconds": 0.5}}',
        KEEL_RATE_LIMIT_MAX_WAIT_SECONDS="0.2",
        KEEL_INTERACTIVE_POLICY=policy.model_dump_json(),
    )
    async with build_worker(client, settings.interactive_task_queue, settings):
        results = await asyncio.gather(*(ask(client, settings, models=[CHEAP]) for _ in range(3)))
    assert all(result.answer.model == CHEAP for _, result in results)
    rows = [row for workflow_id, _ in results for row in await ledger_rows(workflow_id=workflow_id)]
    throttled = [row for row in rows if row.outcome == "throttled"]
    assert throttled and {row.error_class for row in throttled} == {"rate_limited"}
    assert "shared by all workers" in (throttled[0].error_message or "")
    # Throttled attempts never reached the provider.
    assert requests_to(simulator, CHEAP) == 3 == len([r for r in rows if r.outcome == "ok"])


@pytest.mark.slow
async def test_two_worker_processes_share_one_rate_limit(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    """2 requests/s with a burst of 2, through two worker processes: a limiter per process
    would let 4/s through (LiteLLM's replicas problem); the shared one keeps 2/s."""
    settings = keel_settings
    env = worker_environment(
        client,
        settings,
        KEEL_RATE_LIMITS='{"openai": {"requests_per_minute": 120, "burst_seconds": 1}}',
        KEEL_METRICS_PORT="0",
    )
    first = WorkerProcess(settings.interactive_task_queue, env, tmp_path / "worker-1.log")
    second = WorkerProcess(settings.interactive_task_queue, env, tmp_path / "worker-2.log")
    with worker_processes(first.start(), second.start()):
        # Generous: importing the SDKs takes seconds on a busy 2-core machine.
        await asyncio.gather(first.wait_until_polling(60), second.wait_until_polling(60))
        results = await asyncio.gather(
            *(ask(client, settings, models=[CHEAP], max_tokens=32) for _ in range(16))
        )
    rows = [row for workflow_id, _ in results for row in await ledger_rows(workflow_id=workflow_id)]
    assert [row.outcome for row in rows] == ["ok"] * 16
    # Both processes made calls, so both drew from the one bucket.
    assert "llm.call_succeeded" in first.logs() and "llm.call_succeeded" in second.logs()

    # When each request reached the provider (the ledger's end time minus the provider's time).
    starts = sorted(row.created_at - timedelta(milliseconds=row.latency_ms) for row in rows)
    # Any one-second window holds at most the burst (2) plus a second of the rate (2), with
    # one of slack for the clocks: per-process limiters would show 8.
    busiest = max(
        sum(1 for other in starts if start <= other < start + timedelta(seconds=1))
        for start in starts
    )
    assert busiest <= 5, starts
    # 16 requests at 2/s after a burst of 2 need at least 7 s (per-process limiters: 3 s).
    assert (starts[-1] - starts[0]).total_seconds() >= 7 * 0.9
