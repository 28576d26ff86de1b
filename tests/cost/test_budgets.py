"""Budgets hold under concurrency, and each caller's policy decides what exhaustion means:
refuse with an error naming the budget, downgrade to a cheaper route, or pause until raised."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from decimal import Decimal

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.llm.activities import LlmActivities
from activities.llm.budgets import estimate_cost, estimated_usage
from activities.llm.providers import ProviderClients
from contracts.llm import AttemptInput, ChatMessage, LlmAnswer, LlmParameters, LlmRequest
from infra.database import session_factory, sessions_for
from infra.settings import KeelSettings, get_settings
from llmsim import SimServer, count_message_tokens
from services.budgets import change_budget, current_budgets
from tests.conftest import reconfigure
from tests.cost.support import (
    CHEAP,
    PRICEY,
    ask,
    audit_types,
    counted_spend,
    metered_spend,
    requests_to,
    simulator_latency,
    start_ask,
)
from tests.helpers import ledger_rows
from workers.builder import build_worker

RACE_PROMPT = "Race for the budget."
RACE_MAX_TOKENS = 40  # the simulator answers 24+ tokens: estimates are close to real costs


def worst_case(model: str, prompt: str, max_tokens: int) -> Decimal:
    estimate = estimate_cost(
        "openai",
        model,
        LlmRequest(
            messages=[ChatMessage(role="user", content=prompt)],
            parameters=LlmParameters(max_tokens=max_tokens),
        ),
    )
    assert estimate is not None
    return estimate


@pytest.mark.parametrize(
    "prompt",
    ["Race for the budget.", "hello, world", "naïve café — 3.5 tokens?\n\tx", "", "a" * 1000],
)
def test_worst_case_prompt_tokens_are_counted_as_the_simulator_counts_them(prompt: str) -> None:
    request = LlmRequest(
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content=prompt),
        ],
        parameters=LlmParameters(max_tokens=7),
    )
    usage = estimated_usage(request)
    assert usage.input_tokens == count_message_tokens(["Be brief.", prompt])
    assert usage.output_tokens == 7


def budget_failure(error: BaseException) -> ApplicationError:
    assert isinstance(error, WorkflowFailureError), error
    cause = error.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmBudgetExceeded", cause
    return cause


@pytest.mark.slow
async def test_fifty_concurrent_calls_cannot_overshoot_one_budget(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    estimate = worst_case(CHEAP, RACE_PROMPT, RACE_MAX_TOKENS)
    limit = (estimate * Decimal("8.5")).quantize(Decimal("0.00000001"))
    await change_budget(session_factory(), "race", "day", limit, "test")

    # A second per call keeps every admitted call in flight while the others race the check.
    with simulator_latency(simulator, 1.0):
        handles = await asyncio.gather(
            *(
                start_ask(
                    client,
                    keel_settings,
                    prompt=RACE_PROMPT,
                    models=[CHEAP],
                    max_tokens=RACE_MAX_TOKENS,
                    tenant="race",
                    budget_policy="refuse",
                )
                for _ in range(50)
            )
        )
        results = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)

    answered = [r for r in results if not isinstance(r, BaseException)]
    refusals = [budget_failure(r) for r in results if isinstance(r, BaseException)]
    assert len(answered) + len(refusals) == 50
    # Refusals only happen once the budget is (nearly) full: at least the 8 worst cases fit.
    assert len(answered) >= math.floor(limit / estimate) == 8
    assert refusals, "50 calls cost more than the budget: some must have been refused"
    for refusal in refusals:
        assert "budget race/day" in refusal.message
        assert "keel budget set race --usd <amount> --period day" in refusal.message

    # The promise: no overshoot at all while actual costs stay within their estimates.
    spent = await metered_spend("race")
    assert 0 < spent <= limit
    rows = await ledger_rows(tenant="race")
    assert all(r.cost_usd is None or r.cost_usd <= (r.reserved_usd or 0) for r in rows)
    assert not [r for r in rows if r.outcome == "in_flight"]
    # The counters the check reads agree with the ledger, to the last digit.
    assert await counted_spend("race") == spent
    (state,) = await current_budgets(session_factory(), get_settings(), "race")
    assert state.spent_usd == spent and state.reserved_usd == 0


async def test_budget_set_mid_period_counts_what_was_already_spent(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    _, first = await ask(client, keel_settings, models=[CHEAP], tenant="acme")
    assert first.answer.cost_usd is not None and first.answer.cost_usd > 0
    # Below what acme already spent this month: the next call is refused before the provider.
    await change_budget(session_factory(), "acme", "month", first.answer.cost_usd / 2, "test")
    with pytest.raises(WorkflowFailureError) as failure:
        await ask(client, keel_settings, models=[CHEAP], tenant="acme", budget_policy="refuse")
    refusal = budget_failure(failure.value)
    assert "budget acme/month" in refusal.message and "keel budget set acme" in refusal.message
    assert refusal.details and refusal.details[0]["period"] == "month"
    assert requests_to(simulator, CHEAP) == 1
    # Other tenants are not limited by acme's budget.
    _, other = await ask(client, keel_settings, models=[CHEAP], tenant="globex")
    assert other.answer.model == CHEAP


async def test_the_locked_check_alone_holds_fifty_racing_attempts(
    keel_settings: KeelSettings, simulator: SimServer
) -> None:
    """The attempts themselves race (no planner in front): the row lock and the reservations
    written under it are what keep the spend within the budget."""
    estimate = worst_case(CHEAP, RACE_PROMPT, RACE_MAX_TOKENS)
    limit = (estimate * Decimal("8.5")).quantize(Decimal("0.00000001"))
    await change_budget(session_factory(), "locked", "day", limit, "test")
    request = LlmRequest(
        messages=[ChatMessage(role="user", content=RACE_PROMPT)],
        parameters=LlmParameters(max_tokens=RACE_MAX_TOKENS),
        tenant="locked",
    )
    llm = LlmActivities(keel_settings, sessions_for(keel_settings), ProviderClients(keel_settings))

    async def attempt(number: int) -> LlmAnswer | ApplicationError:
        environment = ActivityEnvironment()
        environment.info = dataclasses.replace(
            environment.info, workflow_id="race-activities", activity_id=str(number)
        )
        try:
            return await environment.run(
                llm.complete_chat, AttemptInput(request=request, model=CHEAP, provider="openai")
            )
        except ApplicationError as error:
            return error

    with simulator_latency(simulator, 0.5):
        outcomes = await asyncio.gather(*(attempt(n) for n in range(50)))
    answered = [o for o in outcomes if isinstance(o, LlmAnswer)]
    refused = [o for o in outcomes if isinstance(o, ApplicationError)]
    assert {e.type for e in refused} == {"LlmBudgetExceeded"}
    assert all(e.non_retryable for e in refused)
    assert len(answered) >= 8 and len(answered) + len(refused) == 50
    spent = await metered_spend("locked")
    assert 0 < spent <= limit
    rows = await ledger_rows(tenant="locked")
    assert sorted({r.outcome for r in rows}) == ["budget_refused", "ok"]
    assert len([r for r in rows if r.outcome == "budget_refused"]) == len(refused)
    assert requests_to(simulator, CHEAP) == len(answered)


async def test_interactive_calls_downgrade_to_the_cheaper_route(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_ROUTES=f'{{"quality": ["{PRICEY}"], "cheap": ["{CHEAP}"]}}',
        KEEL_ROUTE_POLICIES='{"quality": {"downgrade_to": "cheap"}}',
        KEEL_BUDGET_DOWNGRADE_BELOW="0",
    )
    pricey = worst_case(PRICEY, "Summarise the plan.", 300)
    cheap = worst_case(CHEAP, "Summarise the plan.", 300)
    # Room for the cheap model's worst case, not for the quality model's.
    await change_budget(session_factory(), "startup", "day", (pricey + cheap) / 2, "test")
    async with build_worker(client, settings.interactive_task_queue, settings):
        workflow_id, result = await ask(
            client,
            settings,
            prompt="Summarise the plan.",
            route="quality",
            max_tokens=300,
            tenant="startup",
        )
        assert result.answer.model == CHEAP
        assert requests_to(simulator, PRICEY) == 0
        (row,) = await ledger_rows(workflow_id=workflow_id)
        assert row.route == "cheap" and row.outcome == "ok"
        assert "llm.route_downgraded" in await audit_types(workflow_id)

        # The same call under the refuse policy is refused, naming the budget.
        with pytest.raises(WorkflowFailureError) as failure:
            await ask(
                client,
                settings,
                prompt="Summarise the plan.",
                route="quality",
                max_tokens=300,
                tenant="startup",
                budget_policy="refuse",
            )
        assert "budget startup/day" in budget_failure(failure.value).message


async def test_a_low_budget_downgrades_before_it_runs_out(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_ROUTES=f'{{"quality": ["{PRICEY}"], "cheap": ["{CHEAP}"]}}',
        KEEL_ROUTE_POLICIES='{"quality": {"downgrade_to": "cheap"}}',
        KEEL_BUDGET_DOWNGRADE_BELOW="0.5",
    )
    async with build_worker(client, settings.interactive_task_queue, settings):
        await change_budget(session_factory(), "lowco", "month", Decimal("1.00"), "test")
        _, full = await ask(client, settings, route="quality", tenant="lowco")
        assert full.answer.model == PRICEY
        # Less than half left: quality calls go to the cheaper route while there is still room.
        spent = (await current_budgets(session_factory(), get_settings(), "lowco"))[0].spent_usd
        await change_budget(session_factory(), "lowco", "month", spent * Decimal("1.9"), "test")
        workflow_id, low = await ask(client, settings, route="quality", tenant="lowco")
        assert low.answer.model == CHEAP
        events = [e for e in await audit_types(workflow_id) if e.startswith("llm.")]
        assert events == ["llm.route_downgraded"]


async def test_pause_policy_waits_until_the_budget_is_raised(
    time_skipping_env: WorkflowEnvironment,
    keel_settings: KeelSettings,
    simulator: SimServer,
) -> None:
    """Time-skipping: the paused call sleeps on durable timers and re-plans until the budget
    has room; raising it (`keel budget set`) is what lets it go."""
    client = time_skipping_env.client
    await change_budget(session_factory(), "paused", "month", Decimal("0"), "test")
    async with build_worker(client, keel_settings.interactive_task_queue, keel_settings):
        handle = await start_ask(
            client, keel_settings, models=[CHEAP], tenant="paused", budget_policy="pause"
        )
        for _ in range(200):
            if "llm.budget_paused" in await audit_types(handle.id):
                break
            await asyncio.sleep(0.05)
        assert "llm.budget_paused" in await audit_types(handle.id)
        assert requests_to(simulator, CHEAP) == 0
        await change_budget(session_factory(), "paused", "month", Decimal("5"), "test")
        result = await handle.result()  # time skips through the backed-off polls
    assert result.answer.model == CHEAP
    trail = await audit_types(handle.id)
    assert trail.index("llm.budget_paused") < trail.index("llm.budget_resumed")
    assert requests_to(simulator, CHEAP) == 1


async def test_a_pause_gives_up_after_its_limit(
    time_skipping_env: WorkflowEnvironment,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(monkeypatch, KEEL_BUDGET_PAUSE_MAX_SECONDS="7200")
    client = time_skipping_env.client
    await change_budget(session_factory(), "broke", "day", Decimal("0"), "test")
    async with build_worker(client, settings.interactive_task_queue, settings):
        handle = await start_ask(
            client, settings, models=[CHEAP], tenant="broke", budget_policy="pause"
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    refusal = budget_failure(failure.value)
    assert refusal.message.startswith("paused ") and "budget broke/day" in refusal.message
    trail = await audit_types(handle.id)
    assert trail[-1] == "llm.budget_refused" and "llm.budget_paused" in trail
    # Backing off (15 s doubling to 5 min): two hours of pause is a few dozen polls, not 480.
    history = await handle.fetch_history()
    assert len(history.events) < 200
    assert requests_to(simulator, CHEAP) == 0
