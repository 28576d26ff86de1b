"""Each worker serves Prometheus metrics: the Temporal SDK's and keel's own, on one endpoint
that docker-compose's Prometheus scrapes. Scraped before and after real calls, the series move
by exactly what the ledger recorded."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta
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
from tests.observability.conftest import scrape

BACKUP = "claude-3-5-haiku-latest"
FRAGILE = "gpt-4.1-mini"
CANARY = "gpt-4.1-nano"
REPO = Path(__file__).resolve().parents[2]


def value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0: none)."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


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


async def test_llm_metrics_name_the_route_the_chain_and_the_call_class(
    worker_metrics: str,
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the availability, latency and canary alerts group by (deploy/prometheus/rules).
    The routes' worker has the settings it was built with, on a queue of its own; its metrics
    are the process's, which the endpoint serves."""
    url = worker_metrics
    settings = reconfigure(
        monkeypatch,
        KEEL_ROUTES=json.dumps({"quality": [CHEAP]}),
        KEEL_ROUTE_POLICIES=json.dumps(
            {"quality": {"canaries": [{"models": [CANARY], "weight": 50, "label": "nano"}]}}
        ),
        KEEL_INTERACTIVE_TASK_QUEUE=f"{keel_settings.interactive_task_queue}-canary",
    )
    await keel_workers.start(settings)
    before = await asyncio.to_thread(scrape, url)
    results = await asyncio.gather(
        *(ask(client, settings, route="quality", tenant="canary", max_tokens=16) for _ in range(12))
    )
    await ask(client, settings, models=[CHEAP], tenant="canary", max_tokens=16)
    after = await asyncio.to_thread(scrape, url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    on_canary = [result for _, result in results if result.answer.model == CANARY]
    assert 0 < len(on_canary) < 12  # both chains served (placed by a hash of the call's ids)
    quality = {"route": "quality", "call_class": "interactive"}
    attempts = "keel_llm_attempts_total"
    assert moved(attempts, chain="nano", model=CANARY, outcome="ok", **quality) == len(on_canary)
    assert moved(attempts, chain="primary", model=CHEAP, outcome="ok", **quality) == 12 - len(
        on_canary
    )
    assert moved(attempts, chain="nano", model=CHEAP) == 0
    # Named models instead of a route: labelled as `keel cost --by route` shows them.
    assert moved(attempts, route="(explicit models)", chain="primary", model=CHEAP) == 1
    durations = "keel_llm_call_duration_seconds_count"
    assert moved(durations, route="quality", chain="nano", call_class="interactive") == len(
        on_canary
    )
    assert moved("keel_llm_time_to_first_token_seconds_count", route="quality") == 12
    canary_cost = sum(float(result.answer.cost_usd or 0) for result in on_canary)
    assert canary_cost > 0
    assert moved("keel_llm_cost_usd_total", route="quality", chain="nano") == pytest.approx(
        canary_cost
    )


async def test_the_worker_reports_approvals_batches_and_task_queues(
    worker_metrics: str, client: Client, keel_settings: KeelSettings
) -> None:
    url, settings = worker_metrics, keel_settings
    started = datetime.now(UTC)
    gates = [
        # (workflow, tenant, status, requested, deadline, escalation level)
        (
            "wf-late",
            "acme",
            "pending",
            started - timedelta(hours=2),
            started + timedelta(hours=1),
            0,
        ),
        ("wf-fresh", "acme", "pending", started, started + timedelta(hours=2), 0),
        ("wf-open-ended", "acme", "pending", started - timedelta(days=9), None, 0),
        ("wf-escalated", "beta", "pending", started - timedelta(hours=1), None, 1),
        ("wf-decided", "beta", "approved", started - timedelta(hours=9), started, 2),
    ]
    batches = [("b-running", "running"), ("b-paused", "paused"), ("b-done", "completed")]
    items = {"b-running": ["ok", "ok", "failed", "running", "pending"], "b-done": ["ok"]}
    async with session_factory().begin() as session:
        for workflow_id, tenant, status, requested, deadline, level in gates:
            await session.execute(
                text(
                    "INSERT INTO approvals (workflow_id, gate, tenant, status, required_role, "
                    "requested_at, deadline_at, escalation_level) "
                    "VALUES (:w, 'publish', :t, :s, 'editor', :r, :d, :l)"
                ),
                {
                    "w": workflow_id,
                    "t": tenant,
                    "s": status,
                    "r": requested,
                    "d": deadline,
                    "l": level,
                },
            )
        for batch_id, status in batches:
            await session.execute(
                text(
                    "INSERT INTO batches (id, tenant, workflow_id, status, concurrency) "
                    "VALUES (:b, 'acme', :b, :s, 4)"
                ),
                {"b": batch_id, "s": status},
            )
        for batch_id, statuses in items.items():
            for line, status in enumerate(statuses):
                await session.execute(
                    text(
                        "INSERT INTO batch_items (batch_id, custom_id, line_no, status) "
                        "VALUES (:b, :c, :n, :s)"
                    ),
                    {"b": batch_id, "c": f"item-{line}", "n": line, "s": status},
                )
    # A workflow on the batch queue, which no worker polls in this test: a backlog of one.
    await client.start_workflow(
        "NoSuchWorkflow",
        id=f"waits-{settings.batch_task_queue}",
        task_queue=settings.batch_task_queue,
    )

    def reported() -> bool:
        exposition = scrape(url)
        return (
            value(exposition, "keel_approvals_escalated", tenant="beta") == 1
            and value(exposition, "keel_batch_status", batch_id="b-running") == 1
            and value(
                exposition,
                "keel_task_queue_backlog",
                task_queue=settings.batch_task_queue,
                task_type="workflow",
            )
            == 1
            # The oldest task's age, once Temporal's stats have caught up with the backlog.
            and value(
                exposition,
                "keel_task_queue_backlog_age_seconds",
                task_queue=settings.batch_task_queue,
                task_type="workflow",
            )
            > 0
        )

    await eventually(reported, timeout=15.0, interval=0.2)
    exposition = await asyncio.to_thread(scrape, url)
    assert value(exposition, "keel_approvals_past_half_deadline", tenant="acme") == 1
    assert value(exposition, "keel_approvals_past_half_deadline", tenant="beta") == 0
    assert value(exposition, "keel_approvals_escalated", tenant="acme") == 0
    assert value(exposition, "keel_approvals_pending") == 4

    def batch(batch_id: str, status: str) -> float:
        return value(
            exposition, "keel_batch_items", batch_id=batch_id, tenant="acme", status=status
        )

    assert [batch("b-running", s) for s in ("ok", "failed", "running", "pending", "skipped")] == [
        2,
        1,
        1,
        1,
        0,
    ]
    assert value(exposition, "keel_batch_status", batch_id="b-running", status="running") == 1
    assert value(exposition, "keel_batch_status", batch_id="b-paused", status="paused") == 1
    assert batch("b-paused", "pending") == 0  # a batch with no items yet still has its series
    assert "b-done" not in exposition  # finished batches leave the gauges

    interactive, batch_queue = settings.interactive_task_queue, settings.batch_task_queue
    for task_type in ("workflow", "activity"):
        assert (
            value(
                exposition, "keel_task_queue_pollers", task_queue=interactive, task_type=task_type
            )
            >= 1
        )
        assert (
            value(
                exposition, "keel_task_queue_pollers", task_queue=batch_queue, task_type=task_type
            )
            == 0
        )

    # A gate decided, a batch finished: their series go at the next refresh.
    async with session_factory().begin() as session:
        await session.execute(text("UPDATE approvals SET status = 'approved'"))
        await session.execute(text("UPDATE batches SET status = 'completed'"))

    def cleared() -> bool:
        exposition = scrape(url)
        return "b-running" not in exposition and value(exposition, "keel_approvals_pending") == 0

    await eventually(cleared, timeout=15.0, interval=0.2)
    exposition = await asyncio.to_thread(scrape, url)
    assert value(exposition, "keel_approvals_past_half_deadline") == 0
    assert value(exposition, "keel_approvals_escalated") == 0


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
