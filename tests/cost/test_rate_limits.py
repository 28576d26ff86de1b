"""Rate limits per provider are shared by every worker process, never multiplied by them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.llm.pipeline import Admission, Attempt, AttemptKey, admit, breaker_config
from activities.llm.rate_limits import (
    REQUESTS,
    TOKENS,
    Charge,
    ChargeTooLargeError,
    RateLimitedError,
    acquire,
    refund_unused,
)
from contracts.llm import (
    AttemptInput,
    CallClass,
    ChatMessage,
    ErrorClass,
    LlmParameters,
    LlmRequest,
    Usage,
)
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


async def test_a_call_bigger_than_the_bucket_is_charged_in_full_and_waits_for_the_rest(
    keel_settings: KeelSettings,
) -> None:
    # 6000 tokens/min with a burst of 1 s: a full bucket holds 100 tokens.
    big = Charge("openai", TOKENS, 250, per_minute=6000, burst_seconds=1)
    # 150 of its 250 tokens are not in the bucket: they take 1.5 s of the rate to earn.
    assert 1.3 < await take([big]) <= 1.5
    # ... and the next caller queues behind all 250 (a bucket's worth would let it go at once).
    assert 1.3 < await take([Charge("openai", TOKENS, 1, 6000, 1)]) <= 1.51


async def test_a_call_no_bucket_could_admit_in_time_is_refused_at_once(
    keel_settings: KeelSettings,
) -> None:
    huge = Charge("openai", TOKENS, 1000, per_minute=6000, burst_seconds=1)
    # A full bucket (100) plus 2 s of the rate (200) can never hold 1000 tokens.
    with pytest.raises(ChargeTooLargeError) as refused:
        await take([huge], max_wait=2)
    assert "needs 1000 tokens, more than the 300 it can ever get" in str(refused.value)
    # It took nothing: the bucket is still full.
    assert await take([Charge("openai", TOKENS, 100, 6000, 1)], max_wait=0) == 0


def attempt_of(max_tokens: int, line: int) -> Attempt:
    request = LlmRequest(
        messages=[ChatMessage(role="user", content=f"item {line}")],
        parameters=LlmParameters(max_tokens=max_tokens),
        call_class=CallClass.BATCH,
    )
    call = AttemptInput(request=request, model=CHEAP, provider="openai")
    return Attempt(AttemptKey("wf", "run", f"page/{line}", 1), call, CHEAP, f"hash-{line}")


async def admitted(settings: KeelSettings, attempts: list[Attempt]) -> list[Admission]:
    async with session_factory().begin() as session:
        return await admit(session, attempts, settings, breaker_config(settings))


async def test_a_group_of_attempts_is_charged_every_token_it_may_use(
    keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 60,000 tokens/min with a burst of 1 s: a full bucket holds 1,000 tokens.
    settings = reconfigure(
        monkeypatch,
        KEEL_RATE_LIMITS='{"openai": {"tokens_per_minute": 60000, "burst_seconds": 1}}',
        KEEL_RATE_LIMIT_MAX_WAIT_SECONDS="5",
    )
    # Three calls of ≈400 tokens each (a page's group): 1,200 tokens, 200 more than the bucket.
    group = await admitted(settings, [attempt_of(390, line) for line in range(3)])
    assert [a.refusal for a in group] == [None, None, None]
    assert all(0.1 < a.wait_seconds < 0.4 for a in group)
    # A group too large to take as a whole is taken in order: the first ones go, the rest wait.
    crowd = await admitted(settings, [attempt_of(990, 10 + line) for line in range(10)])
    went = [a for a in crowd if a.refusal is None]
    throttled = [a.refusal for a in crowd if a.refusal is not None]
    assert went and throttled and crowd[: len(went)] == went
    assert {r.failure.error_class for r in throttled} == {ErrorClass.RATE_LIMITED}
    assert all(r.failure.retry_after is not None for r in throttled)
    # One call that never fits is refused for good, with what to change.
    (alone,) = await admitted(settings, [attempt_of(9000, 99)])
    assert alone.refusal is not None
    assert alone.refusal.failure.error_class == ErrorClass.BAD_REQUEST
    assert not alone.refusal.failure.retryable
    assert "burst_seconds" in alone.refusal.failure.message
