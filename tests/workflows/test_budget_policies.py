"""What ask_llm does when the tenant's budget cannot cover a call: refuse, downgrade, or pause on
durable timers (skipped here by the time-skipping server) until the budget has room."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from contracts.traffic import BudgetPolicy
from tests.workflows.conftest import Rig, timers
from workflows.ask import AskInput, AskWorkflow


async def test_refuse_fails_at_once_naming_the_budget(rig: Rig) -> None:
    rig.mocks.llm.plans_refused_for_budget = 1

    handle = await rig.start(
        AskWorkflow.run, AskInput(prompt="hi", budget_policy=BudgetPolicy.REFUSE)
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmBudgetExceeded"
    assert "budget default/day" in cause.message and cause.non_retryable
    assert cause.details[0]["period"] == "day"
    # The planner saw the budget could not cover it: no model is called.
    assert rig.mocks.llm.models_called() == []
    refused = rig.mocks.audit.of_type("llm.budget_refused")[0].payload
    assert refused["policy"] == "refuse" and "budget default/day" in refused["reason"]


async def test_downgrade_replans_on_the_cheaper_route_after_a_refused_call(rig: Rig) -> None:
    rig.mocks.llm.downgrade_to["quality"] = "cheap"
    rig.mocks.llm.calls_refused_for_budget.add("quality-model")

    handle = await rig.start(
        AskWorkflow.run,
        AskInput(prompt="hi", route="quality", budget_policy=BudgetPolicy.DOWNGRADE),
    )
    result = await handle.result()

    assert result.answer.model == "cheap-model"
    assert result.answer.failed_models == [("quality-model", "budget_exceeded")]
    # The refused call is not passed down the quality chain (cheap-model there would spend the
    # same budget): the cheap route is planned and called instead.
    assert rig.mocks.llm.models_called() == ["quality-model", "cheap-model"]
    assert [a.route for a in rig.mocks.llm.attempts()] == ["quality", "cheap"]
    planned = rig.mocks.inputs("plan_llm_route")
    assert [(p.route, p.models) for p in planned] == [("quality", None), ("cheap", None)]
    downgraded = rig.mocks.audit.of_type("llm.budget_downgraded")[0].payload
    assert downgraded["route"] == "quality" and downgraded["to"] == "cheap"


async def test_downgrade_without_a_cheaper_route_refuses(rig: Rig) -> None:
    rig.mocks.llm.calls_refused_for_budget.add("model-a")

    handle = await rig.start(
        AskWorkflow.run, AskInput(prompt="hi", budget_policy=BudgetPolicy.DOWNGRADE)
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "LlmBudgetExceeded"
    assert rig.mocks.llm.models_called() == ["model-a"]
    assert rig.mocks.audit.of_type("llm.budget_refused")[0].payload["policy"] == "downgrade"


async def test_pause_waits_on_backing_off_timers_until_the_budget_has_room(rig: Rig) -> None:
    llm = rig.mocks.llm
    llm.pause_poll_seconds, llm.pause_poll_max_seconds = 60, 240
    # The first plan and the next two re-plans find no room; the third re-plan does.
    llm.plans_refused_for_budget = 3

    handle = await rig.start(
        AskWorkflow.run, AskInput(prompt="hi", budget_policy=BudgetPolicy.PAUSE)
    )
    result = await handle.result()

    assert result.answer.model == "model-a"
    assert llm.models_called() == ["model-a"]
    assert len(rig.mocks.inputs("plan_llm_route")) == 4
    # Timers of 60, 120 and 240 s (doubling up to the cap), skipped rather than waited.
    durations, fired = await timers(handle)
    assert [d.total_seconds() for d in durations] == [60, 120, 240] and fired == 3
    types = rig.mocks.audit.types(handle.id)
    assert types == ["ask.started", "llm.budget_paused", "llm.budget_resumed", "ask.completed"]
    paused = rig.mocks.audit.of_type("llm.budget_paused")[0].payload
    assert paused["budget"]["tenant"] == "default" and paused["budget"]["period"] == "day"


async def test_pause_gives_up_after_the_pause_limit(rig: Rig) -> None:
    llm = rig.mocks.llm
    llm.pause_poll_seconds, llm.pause_poll_max_seconds, llm.pause_max_seconds = 60, 60, 200
    llm.plans_refused_for_budget = 100

    handle = await rig.start(
        AskWorkflow.run, AskInput(prompt="hi", budget_policy=BudgetPolicy.PAUSE)
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmBudgetExceeded"
    assert cause.message.startswith("paused 180s waiting for budget, then gave up")
    assert llm.models_called() == []
    # The first plan, then one re-plan per 60 s timer until the next would pass 200 s.
    assert len(rig.mocks.inputs("plan_llm_route")) == 4
    durations, _ = await timers(handle)
    assert [d.total_seconds() for d in durations] == [60, 60, 60]
    assert rig.mocks.audit.types(handle.id)[-1] == "llm.budget_refused"
