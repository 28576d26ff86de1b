"""A 429 says "come back after Retry-After", not "this model is broken": under a storm of rate
limits every interactive call waits its turn and completes, never retries early, and every 429
and every answer is in the ledger; a model whose Retry-After ends past the call's deadline is
left for the next model of the chain. Real SDKs against the simulator, a real dev server and a
real Postgres ledger; the simulator's request log is the provider's own view of the timing."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from infra.tables import LlmCall
from llmsim import SimServer
from llmsim.faults import FaultKind, FaultRule
from llmsim.state import RequestRecord
from services.asks import start_ask
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import ledger_rows
from workflows.ask import AskInput, AskOutput

CHEAP = "gpt-4o-mini"
BACKUP = "claude-3-5-haiku-latest"
STORM_CALLS = 12
STORM_SEED = 20261206
STORM_RETRY_AFTER_S = 2.0


async def keel_ask(
    client: Client, settings: KeelSettings, workflow_id: str, params: AskInput
) -> AskOutput:
    """What ``keel ask`` does: start AskWorkflow as services/asks.py does, then wait for its
    result."""
    return await (await start_ask(client, settings, params, workflow_id)).result()


def calls_by_conversation(
    requests: list[RequestRecord],
) -> dict[tuple[str, str], list[RequestRecord]]:
    """The simulator's request log per call and model: the attempts of one call on one model."""
    calls: dict[tuple[str, str], list[RequestRecord]] = defaultdict(list)
    for record in requests:
        calls[(record.conversation, record.model)].append(record)
    return calls


def retry_margins(requests: list[RequestRecord]) -> list[float]:
    """For each 429 followed by another attempt of the same call on the same model: how long
    after its Retry-After ran out that attempt arrived (negative: it came back too early)."""
    margins = []
    for attempts in calls_by_conversation(requests).values():
        for limited, following in itertools.pairwise(attempts):
            if limited.fault == FaultKind.RATE_LIMIT.value:
                assert limited.retry_after_s is not None
                margins.append(following.at - (limited.at + limited.retry_after_s))
    return margins


async def activity_failures(client: Client, workflow_id: str) -> list[str]:
    """The messages of the activity failures the workflow saw (its history, decrypted)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [
        str(
            await client.data_converter.decode_failure(
                event.activity_task_failed_event_attributes.failure
            )
        )
        for event in history.events
        if event.HasField("activity_task_failed_event_attributes")
    ]


def ledger_calls(rows: list[LlmCall]) -> list[tuple[str, ...]]:
    """One workflow's ledger per model: the outcome of each attempt, in order."""
    calls: dict[str, list[str]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: (row.activity_id, row.attempt)):
        calls[row.model].append(row.error_class or row.outcome)
    return [tuple(outcomes) for outcomes in calls.values()]


def provider_calls(requests: list[RequestRecord]) -> list[tuple[str, ...]]:
    """The same, as the provider saw it."""
    return [
        tuple("rate_limited" if r.fault == FaultKind.RATE_LIMIT.value else "ok" for r in calls)
        for calls in calls_by_conversation(requests).values()
    ]


@pytest.fixture
def storm_seed(simulator: SimServer) -> Iterator[int]:
    """The storm's seed, for a reproducible run; the shared simulator's seed is put back."""
    before = simulator.configure()["seed"]
    simulator.configure(seed=STORM_SEED)
    yield STORM_SEED
    simulator.configure(seed=before)


@pytest.mark.slow  # hundreds of calls through a 429 storm (~15 s)
async def test_every_call_completes_through_a_429_storm(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    storm_seed: int,
) -> None:
    # 60% of the requests to every model: 429 with Retry-After 2 s.
    simulator.set_fault_rules(
        [FaultRule(kind=FaultKind.RATE_LIMIT, rate=0.6, retry_after_s=STORM_RETRY_AFTER_S)]
    )
    asks = {
        f"ask-storm-{n}-{uuid.uuid4().hex[:6]}": AskInput(
            prompt=f"Name three rivers in Europe (question {n})."
        )
        for n in range(STORM_CALLS)
    }
    results = await asyncio.gather(
        *(keel_ask(client, keel_settings, id_, params) for id_, params in asks.items()),
        return_exceptions=True,
    )
    failures = [result for result in results if isinstance(result, BaseException)]
    completed = [result for result in results if isinstance(result, AskOutput)]
    print(f"\nstorm: {len(completed)}/{STORM_CALLS} asks completed")
    assert not failures, failures
    assert not any(result.answer.fallback_used for result in completed)

    requests = simulator.requests()
    limited = [r for r in requests if r.fault == FaultKind.RATE_LIMIT.value]
    assert len(limited) >= STORM_CALLS, "the storm must make calls wait, or it proves nothing"
    assert all(r.fault in (None, FaultKind.RATE_LIMIT.value) for r in requests)

    # No retry before its Retry-After, as the provider saw the requests arrive.
    margins = retry_margins(requests)
    assert len(margins) == len(limited)  # every 429 was followed by another attempt
    print(f"storm: {len(limited)} 429s; worst early-retry margin {min(margins):.3f}s")
    assert min(margins) >= 0, sorted(margins)[:5]

    # The ledger has one row per attempt the provider saw: each 429, each answer, in order.
    workflow_rows = [await ledger_rows(workflow_id) for workflow_id in asks]
    in_ledger = sorted(call for rows in workflow_rows for call in ledger_calls(rows))
    assert in_ledger == sorted(provider_calls(requests))
    rows = [row for rows in workflow_rows for row in rows]
    assert sum(row.error_class == "rate_limited" for row in rows) == len(limited)
    # Every answered attempt is costed; the 429s generated nothing and cost nothing.
    answered = [row for row in rows if row.outcome == "ok"]
    assert len(answered) == STORM_CALLS
    assert all(row.cost_usd is not None and row.cost_usd > 0 for row in answered)
    assert all(row.cost_usd is None for row in rows if row.outcome != "ok")


async def test_a_retry_after_past_the_deadline_moves_to_the_next_model(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 10 s deadline: two 429s of 2 s are waited out; the third asks for 8 s, less than the
    # deadline but more than the ~6 s left of it, so the next model answers instead.
    policy = keel_settings.interactive_policy.model_copy(update={"schedule_to_close_seconds": 10})
    settings = reconfigure(monkeypatch, KEEL_INTERACTIVE_POLICY=policy.model_dump_json())
    await keel_workers.start(settings)
    simulator.add_faults("rate_limit", model=CHEAP, count=2, retry_after_s=2.0)
    simulator.add_faults("rate_limit", model=CHEAP, count=1, retry_after_s=8.0)
    workflow_id = f"ask-deadline-{uuid.uuid4().hex[:6]}"
    result = await keel_ask(client, settings, workflow_id, AskInput(prompt="Name a river."))

    assert result.answer.model == BACKUP and not result.answer.fallback_used
    assert result.answer.failed_models == [(CHEAP, "rate_limited")]
    rows = await ledger_rows(workflow_id)
    assert [(r.model, r.error_class or r.outcome) for r in rows] == [
        (CHEAP, "rate_limited"),
        (CHEAP, "rate_limited"),
        (CHEAP, "rate_limited"),
        (BACKUP, "ok"),
    ]
    (reason,) = await activity_failures(client, workflow_id)
    said = re.search(
        r"not retried: Retry-After 8\.0s ends past the call's deadline \((.+)s left", reason
    )
    assert said is not None, reason
    assert 0 < float(said.group(1)) < 8.0
    cheap = [r for r in simulator.requests() if r.model == CHEAP]
    (backup,) = [r for r in simulator.requests() if r.model == BACKUP]
    assert [r.retry_after_s for r in cheap] == [2.0, 2.0, 8.0]
    assert min(retry_margins(simulator.requests())) >= 0  # the 2 s waits were honoured
    # The chain moved on at once instead of sitting out a wait that could not end in time.
    assert backup.at - cheap[-1].at < 8.0 / 2


async def test_rate_limits_do_not_spend_the_error_budget(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    # Three errors end a model's turn (maximum_attempts=3), however many 429s come between.
    for kind in ("server_error", "rate_limit", "rate_limit", "server_error", "rate_limit"):
        simulator.add_faults(kind, model=CHEAP, count=1, retry_after_s=0.2)
    simulator.add_faults("server_error", model=CHEAP, count=1)
    workflow_id = f"ask-budget-{uuid.uuid4().hex[:6]}"
    result = await keel_ask(client, keel_settings, workflow_id, AskInput(prompt="Name a lake."))

    assert result.answer.model == BACKUP
    assert result.answer.failed_models == [(CHEAP, "server_error")]
    rows = await ledger_rows(workflow_id)
    assert [(r.model, r.error_class or r.outcome) for r in rows] == [
        (CHEAP, "server_error"),
        (CHEAP, "rate_limited"),
        (CHEAP, "rate_limited"),
        (CHEAP, "server_error"),
        (CHEAP, "rate_limited"),
        (CHEAP, "server_error"),
        (BACKUP, "ok"),
    ]


async def test_timeouts_still_spend_the_error_budget(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attempts are unlimited now; hangs must still end the model's turn after three. A hang ends
    # in the SDK's read timeout (the activity sees it) or in Temporal's heartbeat timeout (the
    # activity never does; the next attempt counts it from the ledger), whichever comes first.
    # Three seconds, not one: the backup's healthy call must not miss a heartbeat on a busy
    # machine (a one-second interval did, in a full suite, and the backup's turn ended too).
    policy = keel_settings.interactive_policy.model_copy(
        update={"heartbeat_seconds": 3.0, "initial_interval_seconds": 0.1}
    )
    settings = reconfigure(monkeypatch, KEEL_INTERACTIVE_POLICY=policy.model_dump_json())
    await keel_workers.start(settings)
    simulator.add_faults("hang", model=CHEAP, count=3)
    workflow_id = f"ask-hang-{uuid.uuid4().hex[:6]}"
    result = await keel_ask(client, settings, workflow_id, AskInput(prompt="Name a sea."))

    assert result.answer.model == BACKUP
    assert result.answer.failed_models == [(CHEAP, "timeout")]
    assert len([r for r in simulator.requests() if r.model == CHEAP]) == 3
    rows = await ledger_rows(workflow_id)
    # Each hang ended in the heartbeat timeout, or in the SDK's read timeout just before it.
    assert [r.model for r in rows] == [CHEAP, CHEAP, CHEAP, BACKUP]
    assert all(
        (r.outcome, r.error_class) in {("interrupted", None), ("error", "timeout")}
        for r in rows[:3]
    ), [(r.outcome, r.error_class) for r in rows]
