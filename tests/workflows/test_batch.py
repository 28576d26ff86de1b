"""The frozen per-item BatchWorkflow's orchestration (kept until its runs drain): items through
the LLM exactly once, the controls (pause, resume,
cancel), the failure-rate stop, the budget gate, and continue-as-new carrying its state."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from contracts.approvals import (
    ApproveDecision,
    DecisionReceipt,
    GateStatus,
)
from contracts.batch import (
    BatchInput,
    BatchOptions,
    BatchProgress,
    ControlRequest,
    StatusInput,
)
from contracts.llm import (
    CallClass,
    ErrorClass,
    FallbackPolicy,
)
from tests.workflows.conftest import Rig, eventually
from workflows.batch_v1 import BatchWorkflow

PROMPTS = [f"question {n}" for n in range(1, 6)]


async def start_batch(rig: Rig, batch_id: str, **options: object) -> WorkflowHandle:
    params = BatchInput(batch_id=batch_id, options=BatchOptions.model_validate(options))
    return await rig.start(BatchWorkflow.run, params, workflow_id=f"batch-{batch_id}")


async def progress(handle: WorkflowHandle) -> BatchProgress:
    return await handle.query(BatchWorkflow.progress)


async def scheduled_calls(handle: WorkflowHandle) -> int:
    """complete_chat activities the workflow scheduled so far, from its history."""
    count = 0
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            count += event.activity_task_scheduled_event_attributes.activity_type.name == (
                "complete_chat"
            )
    return count


def final_status(rig: Rig) -> StatusInput:
    finals = [s for s in rig.mocks.inputs("set_batch_status") if s.final]
    assert len(finals) == 1
    return finals[0]


async def test_every_item_is_answered_once_and_recorded(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)

    handle = await start_batch(rig, "all-ok", concurrency=2, tenant="acme")
    result = await handle.result()

    assert (result.status, result.total, result.ok, result.failed, result.skipped) == (
        "completed",
        5,
        5,
        0,
        0,
    )
    assert result.runs == 1 and result.reason is None
    for item, prompt in zip(rig.mocks.batch.items.values(), PROMPTS, strict=True):
        assert item.status == "ok"
        assert [o.text for o in item.outcomes] == [f"model-a answers: {prompt}"]
    attempts = rig.mocks.llm.attempts()
    assert sorted(a.request.messages[-1].content for a in attempts) == PROMPTS
    request = attempts[0].request
    assert request.call_class == CallClass.BATCH and request.purpose == "batch"
    # A batch item that cannot be answered is a failed item, never a canned answer.
    assert request.fallback_policy == FallbackPolicy.FAIL and request.tenant == "acme"
    # One route plan for the page of items, not one per item.
    assert len(rig.mocks.inputs("plan_llm_route")) == 1
    assert final_status(rig).status == "completed" and not final_status(rig).skip_pending
    types = rig.mocks.audit.types(handle.id)
    assert types[0] == "batch.started" and types[-1] == "batch.completed"
    assert rig.mocks.audit.of_type("batch.completed")[0].payload["ok"] == 5


async def test_failed_items_are_recorded_with_their_error_class(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.llm.fail_when = lambda call: (
        ErrorClass.BAD_REQUEST if call.request.messages[-1].content.endswith(("2", "4")) else None
    )

    result = await (await start_batch(rig, "some-fail", concurrency=5)).result()

    assert (result.status, result.ok, result.failed) == ("completed", 3, 2)
    failed = {
        item.custom_id: item.outcomes[0]
        for item in rig.mocks.batch.items.values()
        if item.status == "failed"
    }
    assert sorted(failed) == ["item-2", "item-4"]
    assert {o.error_class for o in failed.values()} == {"bad_request"}
    assert all("model-b: bad_request" in (o.error_message or "") for o in failed.values())


async def test_crossing_the_failure_rate_aborts_and_skips_the_rest(rig: Rig) -> None:
    rig.mocks.batch.load(*(f"q{n}" for n in range(25)))
    rig.mocks.llm.fail_when = lambda call: ErrorClass.MODEL_NOT_FOUND

    handle = await start_batch(rig, "abort", concurrency=1, max_failure_rate=0.5)
    result = await handle.result()

    # Judged once 20 items ran: all of them failed, so the other 5 never start.
    assert (result.status, result.failed, result.skipped, result.ok) == ("aborted", 20, 5, 0)
    assert result.reason is not None
    assert result.reason.startswith("failure rate 100.0% crossed the limit of 50.0%")
    assert final_status(rig).skip_pending
    assert len(rig.mocks.llm.attempts()) == 20 * 2  # both models of the chain, per item
    assert rig.mocks.audit.types(handle.id)[-1] == "batch.aborted"


async def test_pause_holds_new_items_until_resume(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS[:4])
    llm = rig.mocks.llm
    llm.hold = asyncio.Event()
    handle = await start_batch(rig, "paused", concurrency=1)
    await eventually(lambda: _true(llm.holding == 1), "the first item in flight")

    ack = await handle.execute_update(
        BatchWorkflow.pause, ControlRequest(by="ops", reason="maintenance")
    )
    assert (ack.status, ack.in_flight) == ("paused", 1)
    llm.hold.set()

    async def first_item_done() -> bool:
        state = await progress(handle)
        return state.ok == 1 and state.in_flight == 0

    await eventually(first_item_done, "the item in flight to finish")
    state = await progress(handle)
    assert (state.status, state.reason) == ("paused", "paused by ops: maintenance")
    assert await scheduled_calls(handle) == 1  # nothing new started while paused
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(BatchWorkflow.pause, ControlRequest(by="someone"))
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "BatchControlRefused"
    assert "already paused (by ops)" in refused.value.cause.message

    resumed = await handle.execute_update(BatchWorkflow.resume, ControlRequest(by="ops"))
    assert resumed.status == "running"
    result = await handle.result()

    assert (result.status, result.ok) == ("completed", 4)
    assert len(llm.attempts()) == 4
    paused, resumed_event = (
        rig.mocks.audit.of_type("batch.paused")[0],
        rig.mocks.audit.of_type("batch.resumed")[0],
    )
    assert paused.actor == "ops" and resumed_event.actor == "ops"
    statuses = [s.status for s in rig.mocks.inputs("set_batch_status")]
    assert statuses == ["paused", "running", "completed"]


async def test_cancel_lets_the_item_in_flight_finish_and_skips_the_rest(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    llm = rig.mocks.llm
    llm.hold = asyncio.Event()
    handle = await start_batch(rig, "cancelled", concurrency=1)
    await eventually(lambda: _true(llm.holding == 1), "the first item in flight")

    ack = await handle.execute_update(
        BatchWorkflow.cancel, ControlRequest(by="ops", reason="wrong file")
    )
    assert (ack.status, ack.in_flight) == ("cancelling", 1)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(BatchWorkflow.cancel, ControlRequest(by="ops"))
    assert isinstance(refused.value.cause, ApplicationError)
    assert "already stopping" in refused.value.cause.message
    llm.hold.set()
    result = await handle.result()

    assert (result.status, result.ok, result.skipped) == ("cancelled", 1, 4)
    assert result.reason == "cancelled by ops: wrong file"
    assert len(llm.attempts()) == 1
    assert final_status(rig).skip_pending
    assert rig.mocks.batch.statuses()["item-1"] == "ok"


async def test_continue_as_new_carries_the_budget_and_runs_each_item_once(rig: Rig) -> None:
    prompts = [f"q{n}" for n in range(40)]
    rig.mocks.batch.load(*prompts)

    handle = await rig.start(
        BatchWorkflow.run,
        BatchInput(
            batch_id="long",
            options=BatchOptions(concurrency=2, budget_usd=Decimal("100")),
            # The smallest limit: a run holds a handful of items, so the batch continues often.
            history_event_limit=200,
        ),
        workflow_id="batch-long",
    )
    result = await handle.result()

    assert result.status == "completed" and result.ok == 40
    assert result.runs >= 3
    assert len(rig.mocks.inputs("begin_batch_run")) == result.runs
    assert all(len(item.outcomes) == 1 for item in rig.mocks.batch.items.values())
    assert sorted(a.request.messages[-1].content for a in rig.mocks.llm.attempts()) == sorted(
        prompts
    )
    # The budget was carried to the last run, and the start was audited once.
    assert final_status(rig).budget_usd == Decimal("100")
    assert rig.mocks.audit.types(handle.id).count("batch.started") == 1
    assert result.spent_usd == Decimal("0.040")


async def test_the_budget_gate_raises_the_budget_when_approved(rig: Rig) -> None:
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
    opened = rig.mocks.audit.of_type("batch.budget_gate_opened")[0].payload
    raised = rig.mocks.audit.of_type("batch.budget_raised")[0]
    assert raised.actor == "owner"
    assert raised.payload["budget_usd"] == opened["suggested_usd"] == "0.02"
    assert final_status(rig).budget_usd == Decimal("0.02")
    gate_request = rig.mocks.inputs("open_approval_gate")[0]
    assert gate_request.required_role == "batch-owner" and gate_request.draft == "0.02"


async def _true(value: bool) -> bool:
    return value
