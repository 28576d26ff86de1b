"""A batch runs every item through the LLM call helper under its concurrency cap, writes one
outcome per item to Postgres, survives partial failures and continues-as-new before its history
grows large. Real dev server, real Postgres, real SDKs against the simulator."""

from __future__ import annotations

import json

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from starters.batch import run_demo_batch
from tests.batch.conftest import (
    BACKUP,
    CHEAP,
    items_of,
    prompt_lines,
    simulator_requests,
    start_batch,
)
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import ledger_rows


async def run_histories(client: Client, workflow_id: str) -> list[int]:
    """History length of every run of the workflow (continue-as-new chains), oldest first."""
    lengths = []
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        history = await client.get_workflow_handle(
            workflow_id, run_id=execution.run_id
        ).fetch_history()
        lengths.append((execution.start_time, len(history.events)))
    return [length for _, length in sorted(lengths)]


async def test_every_item_gets_one_outcome_and_the_ledger_bills_each_call(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(12), concurrency=4)
    result = await handle.result()
    assert (result.status, result.total, result.ok, result.failed) == ("completed", 12, 12, 0)
    items = await items_of(batch_id)
    assert [i.custom_id for i in items] == [f"q{n}" for n in range(12)]
    assert {i.status for i in items} == {"ok"}
    assert all(i.response and i.response["text"] for i in items)
    assert all(i.run_count == 1 and i.finished_at is not None for i in items)
    ledger = await ledger_rows(handle.id)
    assert len(ledger) == simulator_requests(simulator.stats()) == 12
    assert {row.outcome for row in ledger} == {"ok"}
    # What the items report they cost is what the ledger billed, and the result says so too.
    assert sum(i.cost_usd or 0 for i in items) == sum(r.cost_usd or 0 for r in ledger)
    assert result.spent_usd == sum(r.cost_usd or 0 for r in ledger) > 0


async def test_the_concurrency_cap_holds(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.configure(fixed_latency_s=0.3)
    _, handle = await start_batch(client, keel_settings, prompt_lines(20), concurrency=3)
    await handle.result()
    # Each item's attempt row spans [created_at - latency, created_at]: count overlaps.
    rows = await ledger_rows(handle.id)
    spans = [
        (r.created_at.timestamp() - r.latency_ms / 1000, r.created_at.timestamp()) for r in rows
    ]
    peak = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert 2 <= peak <= 3


async def test_partial_failures_do_not_fail_the_batch(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("context_window", model=CHEAP, count=2)  # non-retryable: item fails
    lines = prompt_lines(6)
    lines.insert(3, '{"custom_id": "broken", "prompt": ')  # malformed: a failed item
    batch_id, handle = await start_batch(client, keel_settings, lines, concurrency=1)
    result = await handle.result()
    assert (result.status, result.total, result.ok, result.failed) == ("completed", 7, 4, 3)
    by_id = {i.custom_id: i for i in await items_of(batch_id)}
    assert (by_id["q0"].status, by_id["q0"].error_class) == ("failed", "context_window")
    assert (by_id["q1"].status, by_id["q1"].error_class) == ("failed", "context_window")
    assert by_id["line-4"].error_class == "invalid_request"
    assert "line 4: invalid JSON" in (by_id["line-4"].error_message or "")
    assert by_id["q5"].status == "ok"


async def test_retryable_errors_are_retried_and_the_route_falls_back(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = keel_settings.batch_policy.model_copy(update={"initial_interval_seconds": 0.1})
    settings = reconfigure(monkeypatch, KEEL_BATCH_POLICY=policy.model_dump_json())
    await keel_workers.start(settings, settings.batch_task_queue)
    # Item q0: a 500 (retried on the same model), then a context-window error (the route falls
    # back to the next model). Item q1 meets no fault.
    simulator.add_faults("server_error", model=CHEAP, count=1)
    simulator.add_faults("context_window", model=CHEAP, count=1)
    batch_id, handle = await start_batch(
        client, keel_settings, prompt_lines(2, model=None), concurrency=1, route="balanced"
    )
    result = await handle.result()
    assert (result.ok, result.failed) == (2, 0)
    first, second = await items_of(batch_id)
    assert first.response is not None and first.response["model"] == BACKUP
    assert first.response["failed_models"] == [[CHEAP, "context_window"]]
    assert second.response is not None and second.response["model"] == CHEAP
    rows = await ledger_rows(handle.id)
    assert [(r.model, r.attempt, r.outcome) for r in rows] == [
        (CHEAP, 1, "error"),
        (CHEAP, 2, "error"),
        (BACKUP, 1, "ok"),
        (CHEAP, 1, "ok"),
    ]
    assert len(rows) == simulator_requests(simulator.stats())


async def test_continue_as_new_keeps_every_run_under_the_event_limit(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    # The smallest limit: a full page's worst case (16 slow items) does not fit, so pages take
    # only what could all fall to the slow path, and runs continue-as-new.
    limit = 200
    batch_id, handle = await start_batch(
        client, keel_settings, prompt_lines(120), concurrency=8, history_event_limit=limit
    )
    result = await handle.result()
    assert (result.status, result.ok) == ("completed", 120)
    lengths = await run_histories(client, handle.id)
    assert result.runs == len(lengths) >= 2
    assert max(lengths) <= limit
    items = await items_of(batch_id)
    assert all(i.status == "ok" and i.run_count == 1 for i in items)
    # Activity ids restart in every run: the ledger still has one row per call.
    assert len(await ledger_rows(handle.id)) == simulator_requests(simulator.stats()) == 120


async def test_openai_batch_lines_run_as_is(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_canned_response("capital of France", "Paris.")
    line = {
        "custom_id": "fr",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": CHEAP,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 20,
        },
    }
    batch_id, handle = await start_batch(client, keel_settings, [json.dumps(line)])
    await handle.result()
    (item,) = await items_of(batch_id)
    assert item.response is not None and item.response["text"] == "Paris."
    assert item.model == CHEAP


async def test_the_demo_batch_shows_its_progress_and_finishes(
    client: Client,
    keel_settings: KeelSettings,
    batch_worker: Worker,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = reconfigure(monkeypatch, TEMPORAL_ADDRESS=client.service_client.config.target_host)
    batch_id = await run_demo_batch(settings, items=12)
    shown = capsys.readouterr().out
    assert "13 line(s): 12 valid, 1 malformed" in shown
    assert f"keel batch status {batch_id} --watch" in shown
    assert "12 done · 1 failed · 0 skipped · 0 to go · 13 total" in shown
    assert {i.status for i in await items_of(batch_id)} == {"ok", "failed"}
