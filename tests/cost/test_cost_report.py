"""``keel cost`` comes from the ledger: every attempt of every kind counted, totals that are
the sum of the rows; ``keel budget`` and ``keel routes`` show what the workers enforce."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from temporalio.client import Client
from temporalio.worker import Worker

from activities.llm.pricing import price_usd
from contracts.llm import Usage
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import AuditEvent, CircuitBreaker, LlmCall
from llmsim import SimServer
from services.costs import CostGrouping, CostRow, cost_report
from starters import output
from starters.traffic_demo import DEMO_TENANT, demo_cost_and_traffic
from tests.conftest import reconfigure
from tests.cost.support import CHEAP, ask, keel_cli, requests_to
from tests.helpers import audit_events, ledger_rows

BACKUP = "claude-3-5-haiku-latest"
TENANT = "reports"


async def ledger_totals(since: datetime) -> tuple[int, Decimal]:
    async with session_factory()() as session:
        count, cost = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(LlmCall.cost_usd), 0)).where(
                    LlmCall.created_at >= since
                )
            )
        ).one()
    return int(count), Decimal(cost or 0)


async def run_every_kind_of_call(
    client: Client, settings: KeelSettings, simulator: SimServer
) -> dict[str, str]:
    """One workflow per kind of call the ledger must meter, by name."""
    ids: dict[str, str] = {}
    ids["streamed"], _ = await ask(client, settings, models=[CHEAP], tenant=TENANT)
    ids["anthropic"], _ = await ask(client, settings, models=[BACKUP], tenant=TENANT)
    simulator.add_faults("server_error", model=CHEAP, count=1)
    ids["retried"], _ = await ask(client, settings, models=[CHEAP], tenant=TENANT)
    simulator.add_faults("stream_reset", model=CHEAP, count=1, after_chunks=3)
    ids["cut"], _ = await ask(client, settings, models=[CHEAP], max_tokens=200, tenant=TENANT)
    cached = {"models": [CHEAP], "temperature": 0, "use_cache": True, "tenant": TENANT}
    await ask(client, settings, prompt="Cache me.", **cached)
    ids["cached"], _ = await ask(client, settings, prompt="Cache me.", **cached)
    ids["unpriced"], _ = await ask(client, settings, models=["sim-tiny"], tenant="lab")
    return ids


def by_key(rows: list[CostRow]) -> dict[str, CostRow]:
    return {row.key: row for row in rows}


async def test_every_kind_of_call_is_counted_and_the_totals_add_up(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    ids = await run_every_kind_of_call(client, keel_settings, simulator)
    attempts, billed = await ledger_totals(since)
    assert billed > 0

    for grouping in CostGrouping:
        report = await cost_report(session_factory(), grouping, since)
        total = report.total
        assert (total.attempts, total.cost_usd) == (attempts, billed), grouping
        assert sum(row.cost_usd for row in report.rows) == total.cost_usd
        assert sum(row.attempts for row in report.rows) == total.attempts
        assert total.ok + total.cached + total.failed + total.refused == total.attempts

    workflows = by_key((await cost_report(session_factory(), CostGrouping.WORKFLOW, since)).rows)
    # A streamed answer is billed from the usage its stream reported, never logged as $0.
    (streamed,) = await ledger_rows(workflow_id=ids["streamed"])
    assert streamed.streamed and streamed.cost_usd and streamed.cost_usd > 0
    usage = Usage(input_tokens=streamed.input_tokens, output_tokens=streamed.output_tokens)
    assert streamed.cost_usd == price_usd("openai", CHEAP, usage)
    # Each attempt of a retried call is a row; the failed one cost nothing (no tokens came).
    retried = workflows[ids["retried"]]
    assert (retried.attempts, retried.ok, retried.failed) == (2, 1, 1)
    # A stream cut midway is billed for the tokens that arrived, on top of the retry.
    cut_rows = await ledger_rows(workflow_id=ids["cut"])
    assert [r.outcome for r in cut_rows] == ["error", "ok"]
    assert cut_rows[0].cost_usd and cut_rows[0].cost_usd > 0
    assert workflows[ids["cut"]].cost_usd == sum(r.cost_usd or 0 for r in cut_rows)
    # A cached answer is a call that cost $0.
    cached = workflows[ids["cached"]]
    assert (cached.attempts, cached.cached, cached.cost_usd) == (1, 1, Decimal(0))
    # An unpriced model's tokens are counted, its cost is not guessed.
    unpriced = workflows[ids["unpriced"]]
    assert unpriced.unpriced == 1 and unpriced.cost_usd == 0 and unpriced.output_tokens > 0

    models = by_key((await cost_report(session_factory(), CostGrouping.MODEL, since)).rows)
    assert set(models) == {CHEAP, BACKUP, "sim-tiny"}
    tenants = by_key((await cost_report(session_factory(), CostGrouping.TENANT, since)).rows)
    assert tenants[TENANT].cost_usd == billed and tenants["lab"].cost_usd == 0
    only_lab = await cost_report(session_factory(), CostGrouping.MODEL, since, tenant="lab")
    assert [row.key for row in only_lab.rows] == ["sim-tiny"]
    days = by_key((await cost_report(session_factory(), CostGrouping.DAY, since)).rows)
    all_rows = await ledger_rows()
    assert set(days) == {f"{row.created_at.astimezone(UTC):%Y-%m-%d}" for row in all_rows}
    future = await cost_report(
        session_factory(), CostGrouping.DAY, datetime.now(UTC) + timedelta(days=1)
    )
    assert future.rows == [] and future.total.attempts == 0


@pytest.mark.slow
async def test_keel_cost_budget_and_routes_commands(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    await ask(client, keel_settings, models=[CHEAP], tenant=TENANT)
    await ask(client, keel_settings, models=[BACKUP], tenant=TENANT)
    _, billed = await ledger_totals(since)
    async with session_factory().begin() as session:
        await session.execute(
            insert(CircuitBreaker).values(
                provider="openai",
                model="gpt-4o",
                state="open",
                failures=5,
                opened_at=func.now(),
                last_error_class="server_error",
            )
        )

    cost, budget, routes = await asyncio.gather(
        keel_cli(
            client,
            keel_settings,
            "cost",
            "--by",
            "model",
            "--since",
            f"{since:%Y-%m-%dT%H:%M:%S}",
            "--json",
        ),
        keel_cli(
            client,
            keel_settings,
            "budget",
            "set",
            TENANT,
            "--usd",
            "25",
            "--period",
            "month",
            "--by",
            "alice",
        ),
        keel_cli(client, keel_settings, "routes"),
    )

    assert cost.code == 0, cost.err
    *rows, total = [json.loads(line) for line in cost.out.splitlines()]
    assert {row["key"] for row in rows} == {CHEAP, BACKUP} and total["key"] == "total"
    assert Decimal(total["cost_usd"]) == sum(Decimal(row["cost_usd"]) for row in rows) == billed
    assert total["attempts"] == sum(row["attempts"] for row in rows) == 2

    assert budget.code == 0, budget.err
    assert "budget reports/month set to $25.0000" in budget.out
    assert "reports" in budget.out and "month" in budget.out
    async with session_factory()() as session:
        change = (
            await session.execute(
                select(AuditEvent).where(AuditEvent.workflow_id == f"budget/{TENANT}")
            )
        ).scalar_one()
    assert change.event_type == "budget.set" and change.actor == "alice"
    assert change.payload["limit_usd"] == "25"

    assert routes.code == 0, routes.err
    for route in keel_settings.routes:
        assert route in routes.out
    line = next(line for line in routes.out.splitlines() if f" {CHEAP} " in line)
    assert "0.15" in line and "0.60" in line and "closed" in line  # $/1M in and out
    line = next(line for line in routes.out.splitlines() if " gpt-4o " in line)
    assert "open since" in line and "server_error" in line


async def test_the_demo_shows_routes_a_refused_budget_and_the_spend(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A terminal wide enough for the tables: captured output is 80 columns, where rich cuts
    # model names to "gpt-4o-…" when a table's other cells run long.
    monkeypatch.setattr(output.console, "width", 200)
    await ask(client, keel_settings, models=[CHEAP], tenant=TENANT)
    settings = reconfigure(monkeypatch, TEMPORAL_ADDRESS=client.service_client.config.target_host)
    (workflow_id,) = await demo_cost_and_traffic(settings)
    shown = capsys.readouterr().out
    assert "routes" in shown and CHEAP in shown
    assert "refused:" in shown and f"budget {DEMO_TENANT}/day" in shown
    assert "LLM spend by model" in shown
    trail = [e.event_type for e in await audit_events(workflow_id)]
    assert "llm.budget_refused" in trail
    assert requests_to(simulator, "gpt-4o") == 0
