"""A page's calls show in the worker's metrics as the same calls made one per activity do:
fallbacks, rate-limit waits and breaker state changes (the pipeline's after-attempt functions,
shared by both drivers)."""

from __future__ import annotations

import json

import pytest
from temporalio.client import Client

from infra import metrics
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.batch.conftest import BACKUP, CHEAP, items_of, prompt_lines, start_batch
from tests.batch.test_batch_capabilities import line
from tests.conftest import KeelWorkers, reconfigure

FRAGILE = "gpt-4.1-mini"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_page_counts_its_fallbacks_and_rate_limit_waits(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Structured items skip the route's first model (no JSON schemas) for the second, whose
    # provider's limit lets one request through at a time, 0.1 s apart.
    settings = reconfigure(
        monkeypatch,
        KEEL_MODEL_CAPABILITIES=json.dumps({CHEAP: ["tools", "images", "seed"]}),
        KEEL_RATE_LIMITS=json.dumps(
            {"anthropic": {"requests_per_minute": 600, "burst_seconds": 0.1}}
        ),
    )
    await keel_workers.start(settings, settings.batch_task_queue)
    fallbacks_before = sample("keel_llm_fallbacks_total", from_model=CHEAP, to_model=BACKUP)
    waits_before = sample("keel_rate_limit_wait_seconds_count", scope="anthropic")

    lines = [line(f"s{n}", structured=True) for n in range(3)]
    batch_id, handle = await start_batch(client, settings, lines, concurrency=3, route="balanced")
    result = await handle.result()

    assert (result.ok, result.failed) == (3, 0)
    assert {i.model for i in await items_of(batch_id)} == {BACKUP}
    fallbacks = sample("keel_llm_fallbacks_total", from_model=CHEAP, to_model=BACKUP)
    assert fallbacks - fallbacks_before == 3
    # Three calls at once through a one-request bucket: at least two waited for their slot.
    assert sample("keel_rate_limit_wait_seconds_count", scope="anthropic") - waits_before >= 2


async def test_a_breaker_a_page_opens_shows_in_the_metrics(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = keel_settings.batch_policy.model_copy(update={"initial_interval_seconds": 0.1})
    settings = reconfigure(
        monkeypatch,
        KEEL_BREAKER_FAILURE_THRESHOLD="1",
        KEEL_BATCH_POLICY=policy.model_dump_json(),
    )
    await keel_workers.start(settings, settings.batch_task_queue)
    metrics.record_breaker_state("openai", FRAGILE, "closed")
    # The first call fails (the breaker opens at once); the page's retry answers.
    simulator.add_faults("server_error", model=FRAGILE, count=1)

    _, handle = await start_batch(client, settings, prompt_lines(1, model=FRAGILE), concurrency=1)
    result = await handle.result()

    assert result.ok == 1
    open_state = metrics.BREAKER_STATE_VALUES["open"]
    assert sample("keel_circuit_breaker_state", provider="openai", model=FRAGILE) == open_state
