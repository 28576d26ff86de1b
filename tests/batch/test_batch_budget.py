"""Budgets: spend is metered from the ledger as items finish; before the next item would cross
the budget the batch pauses at an approval gate ("raise the budget to Y, or stop"), and it never
overspends by more than what was already in flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.batch.items import BatchReport, batch_report
from contracts.approvals import ApproveDecision, EditDecision, RejectDecision
from contracts.batch import BatchResult, ControlRequest
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import Approval, Batch, Budget
from llmsim import SimServer
from tests.batch.conftest import items_of, prompt_lines, simulator_requests, start_batch
from tests.conftest import reconfigure
from tests.helpers import audit_events, ledger_rows
from workers.builder import build_worker
from workflows.batch import PagedBatchWorkflow

BUDGET = Decimal("0.0001")  # about four gpt-4o-mini items of this size
CONCURRENCY = 4


@pytest.fixture
def owner_settings(monkeypatch: pytest.MonkeyPatch, keel_settings: KeelSettings) -> KeelSettings:
    """Settings under which alice may decide budget gates (the roster the gate reads when it
    opens): the batch worker is built with them."""
    return reconfigure(monkeypatch, KEEL_REVIEWERS='{"alice": ["batch-owner"]}')


@pytest.fixture
def owner(owner_settings: KeelSettings) -> str:
    return "alice"


@pytest.fixture
async def owners_batch_worker(
    client: Client, owner_settings: KeelSettings
) -> AsyncIterator[Worker]:
    """The batch worker, its roster the one that names the owner."""
    async with build_worker(client, owner_settings.batch_task_queue, owner_settings) as worker:
        yield worker


@pytest.fixture
async def gated_batch(
    client: Client, keel_settings: KeelSettings, owners_batch_worker: Worker, owner: str
) -> tuple[str, WorkflowHandle[PagedBatchWorkflow, BatchResult]]:
    """20 items under BUDGET, running on the batch worker; the owner decides its gates."""
    return await start_batch(
        client, keel_settings, prompt_lines(20), concurrency=CONCURRENCY, budget_usd=BUDGET
    )


async def report_of(batch_id: str) -> BatchReport:
    async with session_factory()() as session:
        report = await batch_report(session, batch_id)
    assert report is not None
    return report


async def at_the_gate(batch_id: str, gate: str | None = None, timeout: float = 30) -> BatchReport:
    """The batch's report once a gate (``gate``, or any) is pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        report = await report_of(batch_id)
        if report.pending_gate is not None and gate in (None, report.pending_gate):
            return report
        assert not report.terminal, f"batch ended without a gate: {report.status}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"no gate opened (waited for {gate or 'any gate'})")


async def approvals_of(workflow_id: str) -> list[Approval]:
    async with session_factory()() as session:
        result = await session.execute(
            select(Approval).where(Approval.workflow_id == workflow_id).order_by(Approval.id)
        )
        return list(result.scalars())


async def max_item_cost(workflow_id: str) -> Decimal:
    return max(row.cost_usd or Decimal(0) for row in await ledger_rows(workflow_id))


async def test_the_batch_pauses_before_crossing_its_budget_and_a_raise_finishes_it(
    gated_batch: tuple[str, WorkflowHandle[PagedBatchWorkflow, BatchResult]],
    simulator: SimServer,
    owner: str,
) -> None:
    batch_id, handle = gated_batch
    report = await at_the_gate(batch_id)
    assert report.status == "paused" and (report.status_reason or "").startswith("budget:")
    spent_at_gate = report.spent_usd
    ran_at_gate = report.counts.ok
    assert 0 < ran_at_gate < 20
    # Never over by more than what was in flight; with even item costs, not over at all.
    assert spent_at_gate <= BUDGET + CONCURRENCY * await max_item_cost(handle.id)
    assert spent_at_gate <= BUDGET
    assert spent_at_gate + await max_item_cost(handle.id) > BUDGET  # the next would cross it
    await asyncio.sleep(0.5)
    assert simulator_requests(simulator.stats()) == ran_at_gate  # nothing started at the gate
    (gate,) = await approvals_of(handle.id)
    assert (gate.gate, gate.status, gate.required_role) == ("budget-1", "pending", "batch-owner")
    proposed = Decimal(gate.draft or "0")
    assert proposed > BUDGET

    # A pause is not a gate: resume says what to do instead.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(PagedBatchWorkflow.resume, ControlRequest(by=owner))
    assert isinstance(refused.value.cause, ApplicationError)
    assert f"keel batch budget {batch_id} --raise-to {proposed}" in refused.value.cause.message

    await handle.execute_update("approve", ApproveDecision(reviewer=owner, gate="budget-1"))
    result = await handle.result()
    assert (result.status, result.ok) == ("completed", 20)
    (gate,) = await approvals_of(handle.id)
    assert gate.status == "approved" and gate.decided_by == [owner]
    async with session_factory()() as session:
        batch = await session.get(Batch, batch_id)
    assert batch is not None and batch.budget_usd == proposed
    events = [(e.event_type, e.actor) for e in await audit_events(handle.id)]
    assert ("batch.budget_gate_opened", "keel") in events
    assert ("approval.approved", owner) in events
    assert ("batch.budget_raised", owner) in events
    assert result.spent_usd == sum(r.cost_usd or 0 for r in await ledger_rows(handle.id))


async def test_stopping_at_the_gate_skips_the_rest_and_spends_nothing_more(
    gated_batch: tuple[str, WorkflowHandle[PagedBatchWorkflow, BatchResult]],
    simulator: SimServer,
    owner: str,
) -> None:
    batch_id, handle = gated_batch
    report = await at_the_gate(batch_id)
    await handle.execute_update(
        "reject", RejectDecision(reviewer=owner, gate="budget-1", reason="enough for today")
    )
    result = await handle.result()
    assert result.status == "cancelled" and "rejected by alice" in (result.reason or "")
    assert result.ok == report.counts.ok and result.skipped == 20 - result.ok
    assert result.spent_usd == report.spent_usd <= BUDGET
    assert simulator_requests(simulator.stats()) == result.ok
    (gate,) = await approvals_of(handle.id)
    assert gate.status == "rejected"
    skipped = [i for i in await items_of(batch_id) if i.status == "skipped"]
    assert all("budget gate" in (i.error_message or "") for i in skipped)


async def test_an_edited_amount_becomes_the_budget_and_the_gate_opens_again_before_it(
    gated_batch: tuple[str, WorkflowHandle[PagedBatchWorkflow, BatchResult]], owner: str
) -> None:
    batch_id, handle = gated_batch
    await at_the_gate(batch_id)
    with pytest.raises(WorkflowUpdateFailedError):  # bob holds no batch-owner role
        await handle.execute_update("approve", ApproveDecision(reviewer="bob", gate="budget-1"))
    raised = BUDGET * 2
    await handle.execute_update(
        "edit", EditDecision(reviewer=owner, gate="budget-1", text=str(raised))
    )
    # Still short of 20 items: the second gate opens before the raised budget is crossed.
    report = await at_the_gate(batch_id, "budget-2")
    assert report.spent_usd <= raised < report.spent_usd + await max_item_cost(handle.id)
    await handle.execute_update("reject", RejectDecision(reviewer=owner, reason="stop"))
    result = await handle.result()
    assert result.status == "cancelled" and result.spent_usd <= raised
    assert [g.status for g in await approvals_of(handle.id)] == ["edited", "rejected"]


# --- The gate's deadline (time-skipping) -------------------------------------------------------


@pytest.fixture
def skipping_client(time_skipping_env: WorkflowEnvironment) -> Client:
    return time_skipping_env.client


@pytest.fixture
async def skipping_worker(
    skipping_client: Client, owner_settings: KeelSettings
) -> AsyncIterator[Worker]:
    queue = owner_settings.batch_task_queue
    async with build_worker(skipping_client, queue, owner_settings) as w:
        yield w


async def test_an_undecided_gate_stops_the_batch_at_its_deadline(
    skipping_client: Client,
    keel_settings: KeelSettings,
    skipping_worker: Worker,
    simulator: SimServer,
    owner: str,
) -> None:
    _batch_id, handle = await start_batch(
        skipping_client,
        keel_settings,
        prompt_lines(12),
        concurrency=CONCURRENCY,
        budget_usd=BUDGET,
        budget_gate_deadline=timedelta(hours=72),
    )
    result = await handle.result()  # time skips through the 72 hours nobody decides in
    assert result.status == "cancelled"
    assert "timed_out" in (result.reason or "")
    (gate,) = await approvals_of(handle.id)
    assert gate.status == "timed_out"
    assert result.skipped == 12 - result.ok and result.spent_usd <= BUDGET
    assert simulator_requests(simulator.stats()) == result.ok


async def set_tenant_budget(tenant: str, usd: str) -> None:
    async with session_factory().begin() as session:
        await session.merge(Budget(tenant=tenant, period="day", limit_usd=Decimal(usd)))


async def test_a_spent_tenant_budget_pauses_the_batch_instead_of_failing_items(
    client: Client,
    keel_settings: KeelSettings,
    owners_batch_worker: Worker,
    simulator: SimServer,
    owner: str,
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    await set_tenant_budget(tenant, "0.0001")  # `keel budget set`: a few items' worth
    batch_id, handle = await start_batch(
        client, keel_settings, prompt_lines(12), concurrency=2, tenant=tenant
    )
    report = await at_the_gate(batch_id)
    assert report.pending_gate == "tenant-budget-1"
    assert f"keel budget set {tenant}" in (report.status_reason or "")
    assert report.counts.failed == 0 and 0 < report.counts.ok < 12
    await set_tenant_budget(tenant, "1")
    await handle.execute_update("approve", ApproveDecision(reviewer=owner, gate="tenant-budget-1"))
    result = await handle.result()
    assert (result.status, result.ok, result.failed) == ("completed", 12, 0)
    events = [e.event_type for e in await audit_events(handle.id)]
    assert "batch.tenant_budget_gate_opened" in events
    assert "batch.tenant_budget_resumed" in events
