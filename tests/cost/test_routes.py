"""Routes: a request names a route; a canary takes its share of the traffic; a task class can
be sent to a cheaper route; the plain-list route format keeps working."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from temporalio.client import Client

from activities.llm.routing import choose_route, split_traffic, traffic_point
from contracts.traffic import RoutePolicy
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from services.costs import CostGrouping, cost_report
from tests.conftest import reconfigure
from tests.cost.support import CHEAP, ask
from tests.helpers import audit_events, ledger_rows
from workers.builder import build_worker

CANARY = "gpt-4.1-nano"


def test_traffic_is_split_by_weight_and_each_call_sticks_to_its_chain(
    keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_ROUTE_POLICIES=json.dumps(
            {"quality": {"canaries": [{"models": [CANARY], "weight": 5, "label": "nano"}]}}
        ),
    )
    chains = [split_traffic("quality", settings, f"wf-{n}/run/1")[1] for n in range(20_000)]
    share = chains.count("nano") / len(chains)
    assert 0.04 < share < 0.06
    # A retried plan (same call) lands on the same chain.
    assert {split_traffic("quality", settings, "wf-7/run/1")[1] for _ in range(5)} == {chains[7]}
    assert 0 <= traffic_point("anything") < 100


def test_route_policies_are_validated(keel_settings: KeelSettings) -> None:
    with pytest.raises(ValidationError, match="primary chain needs some traffic"):
        RoutePolicy.model_validate({"canaries": [{"models": ["a"], "weight": 100}]})
    with pytest.raises(ValidationError, match="needs downgrade_to"):
        RoutePolicy.model_validate({"downgrade_purposes": ["summary"]})
    # The settings format of routes is unchanged: a name and its chain.
    choice = choose_route("balanced", "ask", keel_settings, "key")
    assert choice.models == keel_settings.routes["balanced"] and choice.chain == "primary"


async def test_a_canary_takes_its_share_and_keel_cost_compares_the_models(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_ROUTES=json.dumps({"quality": [CHEAP]}),
        KEEL_ROUTE_POLICIES=json.dumps(
            {"quality": {"canaries": [{"models": [CANARY], "weight": 50}]}}
        ),
    )
    since = datetime.now(UTC) - timedelta(minutes=5)
    async with build_worker(client, settings.interactive_task_queue, settings):
        results = await asyncio.gather(
            *(ask(client, settings, route="quality", max_tokens=32) for _ in range(24))
        )
    served = [result.answer.model for _, result in results]
    # Each call is placed by a hash of its ids: about half and half, never all on one side.
    assert 2 <= served.count(CANARY) <= 22 and served.count(CANARY) + served.count(CHEAP) == 24
    models = {
        row.key: row
        for row in (await cost_report(session_factory(), CostGrouping.MODEL, since)).rows
    }
    assert models[CANARY].attempts == served.count(CANARY)
    assert models[CHEAP].attempts == served.count(CHEAP)
    assert models[CANARY].cost_usd > 0 and models[CHEAP].cost_usd > 0
    rows = [row for workflow_id, _ in results for row in await ledger_rows(workflow_id=workflow_id)]
    assert {row.route for row in rows} == {"quality"}


async def test_a_task_class_is_served_by_the_cheaper_route(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_ROUTES=json.dumps({"quality": ["gpt-4o"], "cheap": [CHEAP]}),
        KEEL_ROUTE_POLICIES=json.dumps(
            {"quality": {"downgrade_to": "cheap", "downgrade_purposes": ["ask"]}}
        ),
    )
    async with build_worker(client, settings.interactive_task_queue, settings):
        workflow_id, result = await ask(client, settings, route="quality")
    assert result.answer.model == CHEAP
    (row,) = await ledger_rows(workflow_id=workflow_id)
    assert row.route == "cheap"
    (downgrade,) = [e for e in await audit_events(workflow_id) if e.event_type.startswith("llm.")]
    assert downgrade.event_type == "llm.route_downgraded"
    assert downgrade.payload == {
        "purpose": "ask",
        "from_route": "quality",
        "to_route": "cheap",
        "reason": "purpose",
    }
