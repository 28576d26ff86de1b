"""Each worker serves Prometheus metrics: the Temporal SDK's and keel's own, on one endpoint
that docker-compose's Prometheus scrapes. Scraped before and after real calls, the series move
by exactly what the ledger recorded."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from temporalio.client import Client

from infra.database import session_factory
from infra.metrics import MetricsServer
from infra.settings import KeelSettings
from llmsim import SimServer
from services.budgets import change_budget
from tests.conftest import KeelWorkers, reconfigure
from tests.cost.support import CHEAP, ask, metered_spend
from tests.helpers import eventually, ledger_rows
from workers.__main__ import run_worker

BACKUP = "claude-3-5-haiku-latest"
FRAGILE = "gpt-4.1-mini"
REPO = Path(__file__).resolve().parents[2]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0: none)."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.fixture
async def worker_metrics(
    client: Client, keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The real worker entry point (python -m workers), run in this process on an ephemeral
    metrics port, re-reading its gauges every 0.2 s."""
    settings = reconfigure(
        monkeypatch,
        TEMPORAL_ADDRESS=client.service_client.config.target_host,
        KEEL_METRICS_PORT="0",
        KEEL_METRICS_REFRESH_SECONDS="0.2",
    )
    stop = asyncio.Event()
    started: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    worker = asyncio.create_task(
        run_worker(settings.interactive_task_queue, stop, on_started=started.set_result)
    )
    url = await asyncio.wait_for(started, 60)
    assert url is not None
    yield url
    stop.set()
    await worker


async def test_the_worker_endpoint_shows_llm_calls_budgets_breakers_and_sdk_metrics(
    worker_metrics: str,
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, settings = worker_metrics, keel_settings
    before = await asyncio.to_thread(scrape, url)

    # A plain call, a retried one, and one that falls back to another model.
    ids = [(await ask(client, settings, models=[CHEAP], tenant="metrics"))[0]]
    simulator.add_faults("server_error", model=CHEAP, count=1)
    ids.append((await ask(client, settings, models=[CHEAP], tenant="metrics"))[0])
    simulator.add_faults("context_window", model=CHEAP, count=1)
    ids.append((await ask(client, settings, models=[CHEAP, BACKUP], tenant="metrics"))[0])
    rows = [row for workflow_id in ids for row in await ledger_rows(workflow_id=workflow_id)]
    after = await asyncio.to_thread(scrape, url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    cheap_ok = [r for r in rows if r.model == CHEAP and r.outcome == "ok"]
    assert moved("keel_llm_tokens_total", model=CHEAP, tenant="metrics", kind="output") == sum(
        r.output_tokens for r in cheap_ok
    )
    billed = sum((r.cost_usd or Decimal(0)) for r in rows)
    assert moved("keel_llm_cost_usd_total", tenant="metrics") == pytest.approx(float(billed))
    assert moved("keel_llm_call_duration_seconds_count", outcome="ok") == len(
        [r for r in rows if r.outcome == "ok"]
    )
    assert moved("keel_llm_attempts_total", model=CHEAP, error_class="server_error") == 1
    assert moved("keel_llm_retries_total", model=CHEAP) == 1
    assert moved("keel_llm_fallbacks_total", from_model=CHEAP, to_model=BACKUP) == 1
    # The Temporal SDK's own metrics, through the runtime, on the same endpoint.
    # (The parser reads counters as <name>_total; the SDK serves temporal_workflow_completed.)
    queue = settings.interactive_task_queue
    assert moved("temporal_workflow_completed_total", task_queue=queue) == 3
    assert moved("temporal_activity_execution_latency_count", task_queue=queue) == len(rows)
    assert moved("temporal_activity_execution_failed_total", task_queue=queue) == 2

    # Gauges of shared state: a breaker that opens, a budget, an approval waiting. The breaker
    # opens on a worker whose settings open it at the first failure (a worker reads the settings
    # it was built with), on a queue of its own; its state is in Postgres, where the endpoint's
    # gauges read it.
    fragile = reconfigure(
        monkeypatch,
        KEEL_BREAKER_FAILURE_THRESHOLD="1",
        KEEL_INTERACTIVE_TASK_QUEUE=f"{queue}-fragile",
    )
    await keel_workers.start(fragile)
    simulator.add_faults("server_error", model=FRAGILE, count=1)
    await ask(client, fragile, models=[FRAGILE, BACKUP], tenant="metrics")
    await change_budget(session_factory(), "metrics", "month", Decimal(1), "test")
    async with session_factory().begin() as session:
        await session.execute(
            text(
                "INSERT INTO approvals (workflow_id, gate, tenant, status, required_role) "
                "VALUES ('wf-1', 'publish', 'metrics', 'pending', 'editor')"
            )
        )

    def approval_and_budget_shown() -> bool:
        now = scrape(url)
        return (
            value(now, "keel_approvals_pending") == 1
            and value(now, "keel_budget_limit_usd", tenant="metrics", period="month") == 1
        )

    await eventually(approval_and_budget_shown, timeout=10.0, interval=0.1)
    now = await asyncio.to_thread(scrape, url)
    assert value(now, "keel_circuit_breaker_state", provider="openai", model=FRAGILE) == 2
    assert value(now, "keel_circuit_breaker_state", provider="openai", model=CHEAP) == 0
    spent = value(now, "keel_budget_spent_usd", tenant="metrics", period="month")
    assert spent == pytest.approx(float(await metered_spend("metrics"))) and spent > 0
    assert value(now, "keel_budget_remaining_usd", tenant="metrics", period="month") == (
        pytest.approx(1 - spent)
    )


async def test_the_endpoint_answers_health_checks_and_moves_off_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer("127.0.0.1", port).start()
        try:
            assert not server.url.endswith(f":{port}/metrics")
            exposition = await asyncio.to_thread(scrape, server.url)
            assert "# TYPE keel_llm_call_duration_seconds histogram" in exposition
            health = await asyncio.to_thread(scrape, server.url.replace("/metrics", "/healthz"))
            assert health == "ok\n"
        finally:
            server.stop()


def test_compose_prometheus_scrapes_the_port_workers_serve_on(keel_settings: KeelSettings) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (workers_job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "keel-workers"]
    (discovery,) = workers_job["dns_sd_configs"]
    assert discovery["port"] == keel_settings.metrics_port == 9464
    for service in discovery["names"]:
        environment = compose["services"][service]["environment"]
        assert environment["KEEL_METRICS_HOST"] == "0.0.0.0"  # reachable from prometheus
        assert int(environment["KEEL_METRICS_PORT"]) == discovery["port"]
        healthcheck = " ".join(compose["services"][service]["healthcheck"]["test"])
        assert f":{discovery['port']}/metrics" in healthcheck
    assert "prometheus" in compose["services"]
