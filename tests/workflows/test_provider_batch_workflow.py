"""ProviderBatchWorkflow's orchestration with mocked activities: a round's chunks are submitted,
waited for with timers, collected; lines the provider failed go back to pending for another round
or the live path; the budget gate holds a chunk; and the hand-over to the live engine
(continue-as-new as ``PagedBatchWorkflow``) carries the run's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
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
from tests.workflows.conftest import Rig, eventually, timers
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


async def test_one_chunk_answers_every_item_waiting_on_a_timer(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    handle = await start_provider_batch(rig, "happy", tenant="acme")
    result = await handle.result()

    assert (result.status, result.total, result.ok, result.failed) == ("completed", 5, 5, 0)
    assert result.reason is None and result.runs == 1
    # Round 1 found nothing pending: done.
    plans = rig.mocks.inputs("plan_provider_chunks")
    assert [(p.round, p.options.tenant) for p in plans] == [(0, "acme"), (1, "acme")]
    chunk = "happy-r0"
    for name in ("submit", "poll", "collect"):
        assert [c.chunk_id for c in rig.mocks.inputs(f"{name}_provider_chunk")] == [chunk]
    # It waited on a durable timer (no activity held a slot) and never went live.
    started, fired = await timers(handle)
    assert started[0] == timedelta(seconds=1) and fired >= 1
    assert rig.mocks.inputs("begin_batch_run") == []
    assert final_status(rig).status == "completed" and not final_status(rig).skip_pending
    ended = rig.mocks.audit.of_type("batch.provider_chunk_ended")
    assert [(e.payload["chunk"], e.payload["succeeded"]) for e in ended] == [(chunk, 5)]
    assert rig.mocks.audit.types(handle.id)[-1] == "batch.completed"


async def test_lines_the_provider_failed_go_back_to_pending_then_run_live(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.provider_batches.fail_custom_ids = {"item-2"}
    handle = await start_provider_batch(
        rig, "returned", settings=QUICK.model_copy(update={"max_rounds": 2})
    )
    result = await handle.result()

    # Round 0 answered four; item-2 went back to pending, round 1 took it alone and failed it
    # again; with no rounds left the live engine answered it, in the same workflow id.
    assert (result.status, result.ok, result.failed) == ("completed", 5, 0)
    plans = rig.mocks.inputs("plan_provider_chunks")
    assert [p.round for p in plans] == [0, 1]
    collected = [c.chunk_id for c in rig.mocks.inputs("collect_provider_chunk")]
    assert collected == ["returned-r0", "returned-r1"]
    (live_page,) = rig.mocks.inputs("run_batch_page")
    assert live_page.counts.pending == 1
    assert rig.mocks.batch.items["item-2"].outcomes[0].text == "model-a answers: question 2"
    (handover,) = rig.mocks.audit.of_type("batch.provider_to_live")
    assert (handover.payload["items"], handover.payload["rounds"]) == (1, 2)


async def test_rejecting_the_budget_gate_withdraws_the_unsent_chunk(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.provider_batches.worst_case_per_item = Decimal("0.01")
    handle = await start_provider_batch(rig, "over", budget_usd=Decimal("0.02"))

    await eventually(gate_opened(rig, "budget-1"), "the budget gate")
    opened: OpenGateInput = rig.mocks.inputs("open_approval_gate")[0]
    assert opened.draft == "0.05"  # the chunk's worst case
    await handle.execute_update(
        "reject", RejectDecision(reviewer="owner", reason="too dear"), result_type=DecisionReceipt
    )
    result = await handle.result()

    assert (result.status, result.ok, result.skipped) == ("cancelled", 0, 5)
    assert result.reason is not None and result.reason.startswith("stopped at the budget gate")
    assert rig.mocks.inputs("submit_provider_chunk") == []
    assert [c.chunk_id for c in rig.mocks.inputs("cancel_provider_chunk")] == ["over-r0"]


async def test_cancel_cancels_the_chunk_at_the_provider_and_keeps_its_answers(rig: Rig) -> None:
    rig.mocks.batch.load(*PROMPTS)
    rig.mocks.provider_batches.polls_to_end = 100
    slow = ProviderBatchSettings(poll_initial_seconds=3600, poll_max_seconds=3600)
    handle = await start_provider_batch(rig, "cancel", settings=slow)

    async def submitted() -> bool:
        return bool(rig.mocks.inputs("submit_provider_chunk"))

    await eventually(submitted, "the chunk's submission")
    ack = await handle.execute_update(
        ProviderBatchWorkflow.cancel, ControlRequest(by="ops", reason="wrong file")
    )
    assert (ack.status, ack.in_flight) == ("cancelling", 1)
    result = await handle.result()

    assert result.status == "cancelled" and result.reason == "cancelled by ops: wrong file"
    assert [c.chunk_id for c in rig.mocks.inputs("cancel_provider_chunk")] == ["cancel-r0"]
    # The cancel cut the first wait short; once the provider ended the cancelled chunk, what it
    # had answered was collected (and kept), nothing ran live.
    started, fired = await timers(handle)
    assert (started, fired) == ([timedelta(seconds=3600)] * 2, 1)
    assert [c.chunk_id for c in rig.mocks.inputs("collect_provider_chunk")] == ["cancel-r0"]
    assert (result.ok, result.skipped) == (5, 0)
    assert rig.mocks.inputs("begin_batch_run") == []
    assert final_status(rig).skip_pending


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
