"""Every way a provider call can fail has a tested outcome: real SDKs over HTTP to the simulator,
a real Temporal dev server, a real Postgres ledger."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from contracts.llm import FallbackPolicy
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import audit_events, ledger_rows
from workflows.ask import AskInput, AskOutput, AskWorkflow

CHEAP = "gpt-4o-mini"
BACKUP = "claude-3-5-haiku-latest"


async def ask(client: Client, settings: KeelSettings, **fields: object) -> tuple[str, AskOutput]:
    workflow_id = f"ask-{uuid.uuid4().hex[:10]}"
    params = AskInput.model_validate({"prompt": "Name three rivers in Europe.", **fields})
    result = await client.execute_workflow(
        AskWorkflow.run, params, id=workflow_id, task_queue=settings.interactive_task_queue
    )
    return workflow_id, result


def requests_to(simulator: SimServer, model: str) -> int:
    return int(simulator.stats()["models"].get(model, {}).get("requests", 0))


async def test_answer_is_metered_in_the_ledger_and_audited(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    workflow_id, result = await ask(client, keel_settings, models=[CHEAP])
    answer = result.answer
    assert answer.text and answer.model == CHEAP and not answer.fallback_used
    (row,) = await ledger_rows(workflow_id)
    assert row.outcome == "ok" and row.attempt == 1 and row.streamed
    assert row.input_tokens == answer.usage.input_tokens > 0
    assert row.output_tokens == answer.usage.output_tokens > 0
    assert row.cost_usd is not None and row.cost_usd > 0
    assert row.cost_usd == answer.cost_usd
    events = [e.event_type for e in await audit_events(workflow_id)]
    assert events == ["ask.started", "ask.completed"]


async def test_anthropic_models_go_through_the_anthropic_sdk(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    workflow_id, result = await ask(client, keel_settings, models=[BACKUP], temperature=0.2)
    assert result.answer.provider == "anthropic" and result.answer.text
    (row,) = await ledger_rows(workflow_id)
    assert row.provider == "anthropic" and row.cost_usd is not None and row.cost_usd > 0
    assert simulator.stats()["models"][BACKUP]["requests"] == 1


@pytest.mark.parametrize("fault", ["server_error", "overloaded"])
async def test_server_errors_are_retried_and_every_attempt_is_metered(
    fault: str,
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
) -> None:
    simulator.add_faults(fault, model=CHEAP, count=2)
    workflow_id, result = await ask(client, keel_settings, models=[CHEAP])
    assert result.answer.model == CHEAP and result.answer.attempts == 3
    rows = await ledger_rows(workflow_id)
    assert [(r.attempt, r.outcome) for r in rows] == [(1, "error"), (2, "error"), (3, "ok")]
    assert {r.error_class for r in rows[:2]} == {fault}
    assert requests_to(simulator, CHEAP) == 3


async def test_retry_after_is_honoured(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    # The policy's own backoff starts at 0.5 s: only Retry-After explains a wait of >= 2 s.
    simulator.add_faults("rate_limit", model=CHEAP, count=1, retry_after_s=2.0)
    workflow_id, _ = await ask(client, keel_settings, models=[CHEAP])
    first, second = await ledger_rows(workflow_id)
    assert (first.error_class, second.outcome) == ("rate_limited", "ok")
    second_started = second.created_at.timestamp() - second.latency_ms / 1000
    assert second_started - first.created_at.timestamp() >= 2.0 - 0.05


async def test_a_stream_cut_midway_is_retried_and_both_attempts_are_billed(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("stream_reset", model=CHEAP, count=1, after_chunks=3)
    workflow_id, result = await ask(client, keel_settings, models=[CHEAP], max_tokens=200)
    broken, complete = await ledger_rows(workflow_id)
    assert broken.outcome == "error" and broken.error_class == "stream_interrupted"
    # Tokens that arrived before the cut were generated, so they are billed.
    assert broken.output_tokens > 0 and broken.cost_usd is not None and broken.cost_usd > 0
    assert complete.outcome == "ok" and complete.attempt == 2
    # The answer is the complete one, not the partial text glued to it.
    assert result.answer.usage.output_tokens == complete.output_tokens


async def test_a_hang_is_caught_by_the_heartbeat_timeout_not_start_to_close(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = keel_settings.interactive_policy.model_copy(
        update={"heartbeat_seconds": 1.5, "start_to_close_seconds": 120}
    )
    settings = reconfigure(monkeypatch, KEEL_INTERACTIVE_POLICY=policy.model_dump_json())
    await keel_workers.start(settings)
    simulator.add_faults("hang", model=CHEAP, count=1)
    workflow_id, result = await ask(client, settings, models=[CHEAP])
    rows = await ledger_rows(workflow_id)
    assert result.answer.attempts == 2
    assert rows[-1].outcome == "ok"
    hung = next(r for r in rows if r.attempt == 1)
    assert hung.error_class == "timeout"
    assert hung.latency_ms < 10_000  # far below the 120 s start-to-close


async def test_bad_requests_are_never_retried_and_go_down_the_chain(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("context_window", model=CHEAP, count=1)
    workflow_id, result = await ask(client, keel_settings, models=[CHEAP, BACKUP])
    assert result.answer.model == BACKUP
    assert result.answer.failed_models == [(CHEAP, "context_window")]
    assert requests_to(simulator, CHEAP) == 1
    rows = await ledger_rows(workflow_id)
    assert [(r.model, r.outcome) for r in rows] == [(CHEAP, "error"), (BACKUP, "ok")]
    fallback = [e for e in await audit_events(workflow_id) if e.event_type == "llm.fallback"]
    assert fallback[0].payload == {
        "purpose": "ask",
        "from_model": CHEAP,
        "cause": "context_window",
        "to_model": BACKUP,
    }


async def test_content_policy_stops_the_chain_and_gives_the_safe_default(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("content_policy", model=CHEAP, count=1)
    _, result = await ask(
        client, keel_settings, models=[CHEAP, BACKUP], fallback_policy="safe_default"
    )
    assert result.answer.fallback_used
    assert result.answer.text == keel_settings.safe_default_response
    assert requests_to(simulator, BACKUP) == 0  # the prompt is not shopped around


async def test_exhausted_chain_gives_the_fallback_response(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_faults("context_window", model=CHEAP, count=1)
    simulator.add_faults("context_window", model=BACKUP, count=1)
    workflow_id, result = await ask(
        client,
        keel_settings,
        models=[CHEAP, BACKUP],
        fallback_policy=FallbackPolicy.RESPONSE,
        fallback_response="Please try again in a minute.",
    )
    assert result.answer.fallback_used and result.answer.text == "Please try again in a minute."
    assert result.answer.cost_usd is None
    events = [e.event_type for e in await audit_events(workflow_id)]
    assert events == ["ask.started", "llm.fallback", "llm.chain_exhausted", "ask.completed"]


async def test_exhausted_chain_with_fail_policy_fails_clearly(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await ask(client, keel_settings, models=["no-such-model"], fallback_policy="fail")
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmChainExhausted"
    assert "no-such-model: model_not_found" in cause.message


async def test_unknown_price_records_tokens_and_a_null_cost(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    workflow_id, result = await ask(client, keel_settings, models=["sim-tiny"])
    (row,) = await ledger_rows(workflow_id)
    assert row.output_tokens > 0 and row.cost_usd is None and result.answer.cost_usd is None


async def test_cached_answers_cost_nothing_and_skip_the_provider(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    fields = {"models": [CHEAP], "temperature": 0, "use_cache": True}
    _first_id, first = await ask(client, keel_settings, **fields)
    second_id, second = await ask(client, keel_settings, **fields)
    assert requests_to(simulator, CHEAP) == 1
    assert second.answer.cached and second.answer.text == first.answer.text
    (cached_row,) = await ledger_rows(second_id)
    assert cached_row.outcome == "cached" and cached_row.cost_usd == Decimal(0)
    # Temperature above zero is never served from cache.
    await ask(client, keel_settings, models=[CHEAP], temperature=0.7, use_cache=True)
    assert requests_to(simulator, CHEAP) == 2
