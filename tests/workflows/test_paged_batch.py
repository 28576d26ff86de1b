"""PagedBatchWorkflow's orchestration with mocked activities: pages claim and answer the items,
items that fail for good on their model go down the rest of the route one call at a time, pause
and cancel reach a page mid-way, and continue-as-new carries the one state model."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from temporalio.client import WorkflowHandle

from contracts.approvals import ApproveDecision, DecisionReceipt, GateStatus
from contracts.batch import (
    BatchInput,
    BatchOptions,
    BatchProgress,
    ControlRequest,
    PageInput,
    StatusInput,
)
from contracts.batch_pacing import ITEMS_PER_SLOT
from contracts.llm import CallClass, ErrorClass, FallbackPolicy
from tests.workflows.conftest import Rig, eventually
from workflows.batch import PagedBatchWorkflow

PROMPTS = [f"question {n}" for n in range(1, 6)]


async def start_batch(rig: Rig, batch_id: str, **options: object) -> WorkflowHandle:
    params = BatchInput(batch_id=batch_id, options=BatchOptions.model_validate(options))
    return await rig.start(PagedBatchWorkflow.run, params, workflow_id=f"batch-{batch_id}")


async def progress(handle: WorkflowHandle) -> BatchProgress:
    return await handle.query(PagedBatchWorkflow.progress)


def pages(rig: Rig) -> list[PageInput]:
    return list(rig.mocks.inputs("run_batch_page"))


def final_status(rig: Rig) -> StatusInput:
    finals = [s for s in rig.mocks.inputs("set_batch_status") if s.final]
    assert len(finals) == 1
    return finals[0]


async def test_one_page_answers_every_item_and_no_call_is_an_activity(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)

    handle = await start_batch(rig, "all-ok", concurrency=3, tenant="acme")
    result = await handle.result()

    assert (result.status, result.total, result.ok, result.failed) == ("completed", 5, 5, 0)
    (page,) = pages(rig)
    assert (page.slots, page.options.tenant, page.counts.total) == (3, "acme", 5)
    assert page.page_token.endswith("/page-1") and page.quota >= 5
    assert [o.text for i in rig.mocks.batch.items.values() for o in i.outcomes] == [
        f"model-a answers: {prompt}" for prompt in PROMPTS
    ]
    # The common case costs no per-item activity: no complete_chat, no outcome writes.
    assert rig.mocks.llm.attempts() == []
    assert rig.mocks.inputs("record_batch_item_outcomes") == []
    assert final_status(rig).status == "completed" and not final_status(rig).skip_pending
    types = rig.mocks.audit.types(handle.id)
    assert types[0] == "batch.started" and types[-1] == "batch.completed"


async def test_an_item_failing_on_its_model_goes_down_the_rest_of_the_route(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    # Items 2 and 4 fail on model-a inside the page; model-b answers them on the slow path.
    rig.mocks.llm.fail_when = lambda call: (
        ErrorClass.SERVER_ERROR
        if call.model == "model-a" and call.request.messages[-1].content.endswith(("2", "4"))
        else None
    )

    handle = await start_batch(rig, "slow", concurrency=5)
    result = await handle.result()

    assert (result.status, result.ok, result.failed) == ("completed", 5, 0)
    slow_calls = rig.mocks.llm.attempts()
    assert sorted(c.request.messages[-1].content for c in slow_calls) == [
        "question 2",
        "question 4",
    ]
    assert {c.model for c in slow_calls} == {"model-b"}
    request = slow_calls[0].request
    assert request.call_class == CallClass.BATCH and request.fallback_policy == FallbackPolicy.FAIL
    item = rig.mocks.batch.items["item-2"]
    assert item.status == "ok"
    assert item.outcomes[0].failed_models == [("model-a", "server_error")]
    fallbacks = rig.mocks.audit.of_type("llm.fallback")
    assert sorted((f.payload["from_model"], f.payload["to_model"]) for f in fallbacks) == [
        ("model-a", "model-b"),
        ("model-a", "model-b"),
    ]


async def test_a_page_that_crosses_the_failure_rate_aborts_the_batch(rig: Rig) -> None:
    rig.mocks.batch.load(*(f"q{n}" for n in range(25)))
    rig.mocks.llm.routes["default"] = ["model-a"]
    rig.mocks.llm.fail_when = lambda call: ErrorClass.MODEL_NOT_FOUND

    handle = await start_batch(rig, "abort", concurrency=4, max_failure_rate=0.5)
    result = await handle.result()

    assert (result.status, result.failed, result.skipped, result.ok) == ("aborted", 20, 5, 0)
    assert result.reason is not None
    assert result.reason.startswith("failure rate 100.0% crossed the limit of 50.0%")
    assert final_status(rig).skip_pending
    assert rig.mocks.audit.types(handle.id)[-1] == "batch.aborted"


async def test_pause_cancels_the_running_page_and_resume_runs_the_rest(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    hold = rig.mocks.batch.page_hold = asyncio.Event()

    handle = await start_batch(rig, "pause", concurrency=2)

    async def page_started() -> bool:
        return len(pages(rig)) == 1

    await eventually(page_started, "the first page")
    ack = await handle.execute_update(
        PagedBatchWorkflow.pause, ControlRequest(by="ops", reason="maintenance")
    )
    assert (ack.status, ack.in_flight) == ("paused", 2)

    async def page_handed_back() -> bool:
        state = await progress(handle)
        return state.in_flight == 0 and rig.mocks.batch.counts().pending == 5

    # The page learns of the pause through its heartbeat and hands its items back.
    await eventually(page_handed_back, "the page to stop")
    assert (await progress(handle)).status == "paused"
    assert len(pages(rig)) == 1
    hold.set()
    await handle.execute_update(PagedBatchWorkflow.resume, ControlRequest(by="ops"))
    result = await handle.result()

    assert (result.status, result.ok) == ("completed", 5)
    assert len(pages(rig)) == 2
    statuses = [s.status for s in rig.mocks.inputs("set_batch_status") if not s.final]
    assert statuses[:2] == ["paused", "running"]


async def test_cancel_mid_page_skips_what_the_page_did_not_answer(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.batch.page_hold = asyncio.Event()

    handle = await start_batch(rig, "cancel", concurrency=2)

    async def page_started() -> bool:
        return len(pages(rig)) == 1

    await eventually(page_started, "the first page")
    ack = await handle.execute_update(
        PagedBatchWorkflow.cancel, ControlRequest(by="ops", reason="wrong file")
    )
    assert ack.status == "cancelling"
    result = await handle.result()

    assert (result.status, result.ok, result.skipped) == ("cancelled", 0, 5)
    assert result.reason == "cancelled by ops: wrong file"
    assert final_status(rig).skip_pending
    assert len(pages(rig)) == 1


async def test_the_budget_gate_opens_between_pages_and_approval_goes_on(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    handle = await start_batch(rig, "gated", concurrency=1, budget_usd=Decimal("0.0025"))

    async def gate_open() -> bool:
        return (await progress(handle)).pending_gate == "budget-1"

    await eventually(gate_open, "the budget gate to open")
    state = await progress(handle)
    # Two items at $0.001 each; a third would cross $0.0025.
    assert (state.ok, state.status, state.spent_usd) == (2, "paused", Decimal("0.002"))
    receipt = await handle.execute_update(
        "approve", ApproveDecision(reviewer="owner"), result_type=DecisionReceipt
    )
    assert receipt.status == GateStatus.APPROVED
    result = await handle.result()

    assert (result.status, result.ok) == ("completed", 5)
    raised = rig.mocks.audit.of_type("batch.budget_raised")[0]
    assert raised.actor == "owner" and raised.payload["budget_usd"] == "0.02"
    assert final_status(rig).budget_usd == Decimal("0.02")


async def test_continue_as_new_carries_the_state_and_runs_each_item_once(rig: Rig) -> None:
    prompts = [f"q{n}" for n in range(200)]
    rig.mocks.batch.load(*prompts)

    handle = await rig.start(
        PagedBatchWorkflow.run,
        BatchInput(
            batch_id="long",
            # The smallest limit, and more slots than a full page's worst case leaves room for
            # (24 slow items): pages take only what could all fall to the slow path.
            options=BatchOptions(concurrency=12, budget_usd=Decimal("100")),
            history_event_limit=200,
        ),
        workflow_id="batch-long",
    )
    result = await handle.result()

    assert result.status == "completed" and result.ok == 200
    assert result.runs >= 3
    assert len(rig.mocks.inputs("begin_batch_run")) == result.runs
    assert all(len(item.outcomes) == 1 for item in rig.mocks.batch.items.values())
    # Each run's pages took no more than its history could absorb at the worst case.
    assert max(page.quota for page in pages(rig)) <= (200 - 100 - 10) // 8
    # The budget was carried to the last run, and the start was audited once.
    assert final_status(rig).budget_usd == Decimal("100")
    assert rig.mocks.audit.types(handle.id).count("batch.started") == 1
    assert result.spent_usd == Decimal("0.200")


async def test_at_the_default_limit_a_thousand_items_are_one_run_of_full_pages(rig: Rig) -> None:
    rig.mocks.batch.load(*(f"q{n}" for n in range(1000)))
    handle = await rig.start(
        PagedBatchWorkflow.run,
        BatchInput(batch_id="big", options=BatchOptions(concurrency=10, budget_usd=None)),
    )
    result = await handle.result()

    assert (result.status, result.ok, result.runs) == ("completed", 1000, 1)
    # A run reserves history for what a page can hand back, not for every item it takes.
    assert [page.quota for page in pages(rig)][:2] == [10 * ITEMS_PER_SLOT] * 2


async def test_a_slow_item_the_tenant_budget_refuses_goes_back_under_its_page_claim(
    rig: Rig,
) -> None:
    rig.mocks.batch.load(*PROMPTS)
    # Item 2 fails on model-a in the page; the tenant's budget refuses it on model-b.
    rig.mocks.llm.fail_when = lambda call: (
        ErrorClass.SERVER_ERROR
        if call.model == "model-a" and call.request.messages[-1].content.endswith("2")
        else None
    )
    rig.mocks.llm.calls_refused_for_budget = {"model-b"}

    handle = await start_batch(rig, "slow-refused", concurrency=5)

    async def released() -> bool:
        return bool(rig.mocks.inputs("release_batch_items"))

    await eventually(released, "the refused slow item to go back")
    (release,) = rig.mocks.inputs("release_batch_items")
    (page,) = pages(rig)
    # Released as the page's claim: only the page's own hold on the item is given up.
    assert (release.custom_ids, release.claim_token) == (["item-2"], page.page_token)
    assert rig.mocks.batch.items["item-2"].status == "pending"
    await handle.terminate()
