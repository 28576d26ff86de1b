"""The circuit breaker opens, fails fast, half-opens and closes; its state is shared by every
worker process, because it lives in Postgres."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import ledger_rows
from tests.reliability.ledger import breaker
from tests.reliability.test_llm_calls import BACKUP, CHEAP, ask, requests_to
from tests.worker_processes import WorkerProcess, worker_environment, worker_processes

BREAKER_ENV = {
    "KEEL_BREAKER_FAILURE_THRESHOLD": "2",
    "KEEL_BREAKER_WINDOW_SECONDS": "60",
    # Long enough that no probe happens while the test looks at the open state.
    "KEEL_BREAKER_COOLDOWN_SECONDS": "120",
}
# Longer than the retry backoff (0.5 s), so a failed probe's retry finds the breaker open.
SHORT_COOLDOWN = 1.5


@pytest.fixture
def breaker_settings(keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch) -> KeelSettings:
    return reconfigure(monkeypatch, **BREAKER_ENV)


async def test_breaker_opens_fails_fast_half_opens_and_closes(
    client: Client,
    breaker_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = breaker_settings
    await keel_workers.start(settings)
    simulator.add_faults("server_error", model=CHEAP, count=50)

    # Two failures open the breaker; the third attempt is refused without a request.
    first_id, first = await ask(client, settings, models=[CHEAP, BACKUP])
    assert first.answer.model == BACKUP
    assert requests_to(simulator, CHEAP) == 2
    rows = await ledger_rows(first_id)
    assert [r.outcome for r in rows if r.model == CHEAP] == ["error", "error", "short_circuited"]
    state = await breaker("openai", CHEAP)
    assert state is not None and state.state == "open"

    # While open: straight to the fallback, the provider untouched, no attempt spent.
    second_id, second = await ask(client, settings, models=[CHEAP, BACKUP])
    assert second.answer.model == BACKUP
    assert second.answer.failed_models == [(CHEAP, "circuit_open")]
    assert requests_to(simulator, CHEAP) == 2
    assert [r.model for r in await ledger_rows(second_id)] == [BACKUP]

    # After the cool-down one probe goes through; it fails, so the breaker opens again. (The
    # worker restarts with the shorter cool-down: a worker reads the settings it was built with.)
    settings = reconfigure(monkeypatch, KEEL_BREAKER_COOLDOWN_SECONDS=str(SHORT_COOLDOWN))
    await keel_workers.start(settings)
    await asyncio.sleep(SHORT_COOLDOWN + 0.1)
    await ask(client, settings, models=[CHEAP, BACKUP])
    assert requests_to(simulator, CHEAP) == 3
    reopened = await breaker("openai", CHEAP)
    assert reopened is not None and reopened.state == "open"

    # The model recovers: the next probe succeeds and closes the breaker.
    simulator.clear_faults()
    await asyncio.sleep(SHORT_COOLDOWN + 0.1)
    _, recovered = await ask(client, settings, models=[CHEAP, BACKUP])
    assert recovered.answer.model == CHEAP
    closed = await breaker("openai", CHEAP)
    assert closed is not None and closed.state == "closed" and closed.failures == 0


async def test_client_errors_do_not_trip_the_breaker(
    client: Client,
    breaker_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
) -> None:
    await keel_workers.start(breaker_settings)
    simulator.add_faults("context_window", model=CHEAP, count=5)
    for _ in range(3):
        await ask(client, breaker_settings, models=[CHEAP, BACKUP])
    assert await breaker("openai", CHEAP) is None


@pytest.mark.slow
async def test_breaker_state_is_shared_by_worker_processes(
    client: Client,
    breaker_settings: KeelSettings,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    settings = breaker_settings
    env = worker_environment(client, settings, **BREAKER_ENV)
    simulator.add_faults("server_error", model=CHEAP, count=50)

    first = WorkerProcess(settings.interactive_task_queue, env, tmp_path / "worker-1.log")
    with worker_processes(first.start()):
        await first.wait_until_polling()
        _, answer = await ask(client, settings, models=[CHEAP, BACKUP])
        assert answer.answer.model == BACKUP
    assert requests_to(simulator, CHEAP) == 2

    # A different process, which has never seen a failure, still knows the breaker is open.
    second = WorkerProcess(settings.interactive_task_queue, env, tmp_path / "worker-2.log")
    with worker_processes(second.start()):
        await second.wait_until_polling()
        _, answer = await ask(client, settings, models=[CHEAP, BACKUP])
        assert answer.answer.failed_models == [(CHEAP, "circuit_open")]
    assert requests_to(simulator, CHEAP) == 2
