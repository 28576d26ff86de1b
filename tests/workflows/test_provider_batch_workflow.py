"""ProviderBatchWorkflow's orchestration with mocked activities: a round's chunks are submitted,
waited for with timers, collected; lines the provider failed go back to pending for another round
or the live path; the budget gate holds a chunk; and the hand-over to the live engine
(continue-as-new as ``PagedBatchWorkflow``) carries the run's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

from temporalio.client import WorkflowHandle

from contracts.approvals import (
    ApproveDecision,
    DecisionReceipt,
    EditDecision,
    GateStatus,
    OpenGateInput,
    RejectDecision,
)
from contracts.batch import BatchOptions, BatchProgress, BatchResult, ControlRequest, StatusInput
from contracts.provider_batch import ProviderBatchInput, ProviderBatchSettings
from tests.workflows.conftest import Rig, eventually
from workflows.batch import PagedBatchWorkflow
from workflows.provider_batch import ProviderBatchWorkflow

PROMPTS = [f"question {n}" for n in range(1, 6)]
QUICK = ProviderBatchSettings(poll_initial_seconds=1, poll_max_seconds=4)


async def start_provider_batch(
    rig: Rig,
    batch_id: str,
    settings: ProviderBatchSettings = QUICK,
    **options: object,
) -> WorkflowHandle:
    params = ProviderBatchInput(
        batch_id=batch_id, options=BatchOptions.model_validate(options), settings=settings
    )
    return await rig.start(ProviderBatchWorkflow.run, params, workflow_id=f"batch-{batch_id}")


def statuses(rig: Rig) -> list[StatusInput]:
    return list(rig.mocks.inputs("set_batch_status"))


def final_status(rig: Rig) -> StatusInput:
    finals = [s for s in statuses(rig) if s.final]
    assert len(finals) == 1
    return finals[0]


def gates(rig: Rig) -> list[str]:
    opened: list[OpenGateInput] = rig.mocks.inputs("open_approval_gate")
    return [g.event.gate for g in opened]


def gate_opened(rig: Rig, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return name in gates(rig)

    return check


async def test_the_live_run_after_the_provider_rounds_keeps_budget_gates_and_pause(
    rig: Rig,
) -> None:
    """The provider run raised its budget at gate budget-1 and was paused when it handed over:
    the live run starts paused, with the raised budget, and its next gate is budget-2."""
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.provider_batches.worst_case_per_item = Decimal("0.0001")
    rig.mocks.provider_batches.fail_custom_ids = {"item-3", "item-4", "item-5"}
    handle = await start_provider_batch(
        rig,
        "carried",
        settings=QUICK.model_copy(update={"max_rounds": 1}),
        concurrency=1,
        budget_usd=Decimal("0.0001"),
    )

    # The chunk's worst case ($0.0005) does not fit $0.0001: the budget gate; raised to $0.0025.
    await eventually(gate_opened(rig, "budget-1"), "the provider run's budget gate")
    receipt = await handle.execute_update(
        "edit", EditDecision(reviewer="owner", text="0.0025"), result_type=DecisionReceipt
    )
    assert receipt.status == GateStatus.EDITED

    async def submitted() -> bool:
        return bool(rig.mocks.inputs("submit_provider_chunk"))

    await eventually(submitted, "the chunk's submission")
    await handle.execute_update(ProviderBatchWorkflow.pause, ControlRequest(by="ops"))

    async def live_began() -> bool:
        return bool(rig.mocks.inputs("begin_batch_run"))

    # The chunk ends: two lines answered, three back to pending; one round only, so live.
    await eventually(live_began, "the hand-over to the live engine")
    live = rig.client.get_workflow_handle(handle.id, result_type=BatchResult)

    async def live_paused() -> bool:
        state: BatchProgress = await live.query("progress", result_type=BatchProgress)
        return state.status == "paused"

    await eventually(live_paused, "the live run's progress")
    state = await live.query("progress", result_type=BatchProgress)
    assert state.budget_usd == Decimal("0.0025")
    assert rig.mocks.inputs("run_batch_page") == []
    handover = [s for s in statuses(rig) if s.reason == "paused by ops"]
    assert handover[-1].budget_usd == Decimal("0.0025")

    await live.execute_update(PagedBatchWorkflow.resume, ControlRequest(by="ops"))
    # Live items cost $0.001 each: after two, a third would cross $0.0025 — the next gate.
    await eventually(gate_opened(rig, "budget-2"), "the live run's budget gate")
    assert gates(rig) == ["budget-1", "budget-2"]
    await live.execute_update(
        "approve", ApproveDecision(reviewer="owner", gate="budget-2"), result_type=DecisionReceipt
    )
    result = await live.result()

    assert (result.status, result.ok) == ("completed", 5)
    raised = final_status(rig).budget_usd
    assert raised is not None and raised > Decimal("0.0025")


async def test_a_chunk_the_tenant_budget_refuses_waits_at_a_tenant_gate(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.provider_batches.tenant_refusals = ["budget acme/day: $1 spent of $1"]
    handle = await start_provider_batch(rig, "tenant", tenant="acme")

    await eventually(gate_opened(rig, "tenant-budget-1"), "the tenant budget gate")
    paused = statuses(rig)[-1]
    assert paused.status == "paused"
    assert paused.reason is not None and "keel budget set acme" in paused.reason
    # Nothing reached the provider: the chunk was refused before it was sent.
    assert len(rig.mocks.inputs("submit_provider_chunk")) == 1
    assert rig.mocks.inputs("poll_provider_chunk") == []
    await handle.execute_update(
        "approve",
        ApproveDecision(reviewer="owner", gate="tenant-budget-1"),
        result_type=DecisionReceipt,
    )
    result = await handle.result()

    assert (result.status, result.ok) == ("completed", 5)
    assert len(rig.mocks.inputs("submit_provider_chunk")) == 2
    types = rig.mocks.audit.types(handle.id)
    assert "batch.tenant_budget_gate_opened" in types and "batch.tenant_budget_resumed" in types


async def test_rejecting_the_tenant_gate_stops_the_batch(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.provider_batches.tenant_refusals = ["budget acme/day: $1 spent of $1"]
    handle = await start_provider_batch(rig, "tenant-stop", tenant="acme")

    await eventually(gate_opened(rig, "tenant-budget-1"), "the tenant budget gate")
    await handle.execute_update(
        "reject",
        RejectDecision(reviewer="owner", reason="not this month"),
        result_type=DecisionReceipt,
    )
    result = await handle.result()

    assert (result.status, result.skipped) == ("cancelled", 5)
    assert result.reason is not None and result.reason.startswith("stopped at the tenant budget")
    # The refused chunk was withdrawn (its items back in line, then skipped), never sent.
    assert len(rig.mocks.inputs("cancel_provider_chunk")) == 1
    assert rig.mocks.inputs("poll_provider_chunk") == []


async def test_crossing_the_max_failure_rate_aborts_instead_of_another_round(rig: Rig) -> None:
    rig.mocks.batch.load(*(f"q{n}" for n in range(25)))
    # 15 lines refused as invalid, 5 failed by the provider (pending again), 5 answered.
    rig.mocks.provider_batches.invalid_custom_ids = {f"item-{n}" for n in range(1, 16)}
    rig.mocks.provider_batches.fail_custom_ids = {f"item-{n}" for n in range(16, 21)}
    handle = await start_provider_batch(rig, "abort", max_failure_rate=0.5)
    result = await handle.result()

    assert (result.status, result.ok, result.failed, result.skipped) == ("aborted", 5, 15, 5)
    assert result.reason is not None
    assert result.reason.startswith("failure rate 75.0% crossed the limit of 50.0%")
    assert final_status(rig).status == "aborted" and final_status(rig).skip_pending
    # No second round and no live run for the lines the provider failed: they were skipped.
    assert len(rig.mocks.inputs("plan_provider_chunks")) == 1
    assert rig.mocks.inputs("begin_batch_run") == []
    assert rig.mocks.audit.types(handle.id)[-1] == "batch.aborted"


async def test_under_the_max_failure_rate_the_rounds_go_on(rig: Rig) -> None:
    rig.mocks.batch.load(*(f"q{n}" for n in range(25)))
    rig.mocks.provider_batches.invalid_custom_ids = {"item-1", "item-2"}
    handle = await start_provider_batch(rig, "under", max_failure_rate=0.5)
    result = await handle.result()

    assert (result.status, result.ok, result.failed) == ("completed", 23, 2)
