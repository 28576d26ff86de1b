"""Provider batch mode (`keel batch start --via provider`): items go through OpenAI's Batch API and
Anthropic's Message Batches — the real SDKs against the simulator — at half the live price, wait
durably, and what the provider fails, expires or has not finished by the deadline runs again or
live. Real dev server, real Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.approvals import add_reviewer
from activities.batch.files import BatchFileLimits, parse_lines
from activities.batch.provider_batches import PROVIDER_BATCH_RUN
from activities.llm.budgets import budget_states
from activities.llm.pricing import price_usd
from contracts.approvals import ApproveDecision
from contracts.batch import BatchOptions, BatchResult, ControlRequest
from contracts.llm import Usage, provider_for_model
from contracts.provider_batch import ProviderBatchSettings
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import Budget, LlmCall, ProviderBatchChunk
from llmsim import SimServer
from services.batches import (
    BatchControl,
    BatchError,
    BudgetDecision,
    control_batch,
    decide_budget,
    provider_chunks_of,
    report_of,
    submit_provider_batch,
)
from services.costs import CostGrouping, cost_report, start_of_month
from starters.batch import run_demo_provider_batch
from starters.cost import print_cost_report
from tests.batch.conftest import BACKUP, CHEAP, items_of, prompt_lines, start_batch
from tests.conftest import reconfigure

FAST = ProviderBatchSettings(poll_initial_seconds=0.2, poll_max_seconds=0.5)


@pytest.fixture
def sim(simulator: SimServer) -> Iterator[SimServer]:
    """The simulator with quick batches; its batch settings restored after the test."""
    before = simulator.state.config.batch.model_dump()
    simulator.configure(batch={"processing_s": 0.3})
    yield simulator
    simulator.configure(batch=before)


async def start_provider_batch(
    client: Client,
    settings: KeelSettings,
    lines: list[str],
    *,
    provider_settings: ProviderBatchSettings = FAST,
    deadline: timedelta | None = None,
    **options: Any,
) -> tuple[str, WorkflowHandle[Any, BatchResult]]:
    batch_id = f"p{uuid.uuid4().hex[:10]}"
    handle = await submit_provider_batch(
        client,
        settings,
        session_factory(),
        list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
        batch_id=batch_id,
        options=BatchOptions(**options),
        source_name="test.jsonl",
        deadline=deadline,
        provider_settings=provider_settings,
    )
    return batch_id, handle


async def ledger_of(workflow_id: str) -> list[LlmCall]:
    async with session_factory()() as session:
        rows = await session.execute(
            select(LlmCall).where(LlmCall.workflow_id == workflow_id).order_by(LlmCall.id)
        )
        return list(rows.scalars())


def live_price(row: LlmCall) -> Decimal:
    _, name = provider_for_model(row.model)
    usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
    price = price_usd(row.provider, name, usage)
    assert price is not None
    return price


def mixed_lines(count: int) -> list[str]:
    """Half on an OpenAI model, half on an Anthropic one."""
    return prompt_lines(count // 2, model=CHEAP, prefix="o") + prompt_lines(
        count - count // 2, model=BACKUP, prefix="a"
    )


async def test_both_providers_answer_every_item_through_their_batch_apis_at_half_price(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    settings = FAST.model_copy(update={"max_requests_per_chunk": 3})
    batch_id, handle = await start_provider_batch(
        client, keel_settings, mixed_lines(10), provider_settings=settings
    )
    result = await handle.result()
    assert (result.status, result.total, result.ok, result.failed) == ("completed", 10, 10, 0)

    items = await items_of(batch_id)
    assert {i.status for i in items} == {"ok"}
    assert all(i.response and i.response["text"] and i.response["provider_batch_id"] for i in items)
    assert {i.response["provider"] for i in items if i.response} == {"openai", "anthropic"}

    # Grouped by provider and model, split at the chunk size: 5 + 5 items → 3 + 2 each.
    chunks = await provider_chunks_of(session_factory(), batch_id)
    assert sorted((c.provider, c.items) for c in chunks) == [
        ("anthropic", 2),
        ("anthropic", 3),
        ("openai", 2),
        ("openai", 3),
    ]
    assert {c.status for c in chunks} == {"ended"}
    assert {c.provider_status for c in chunks} == {"completed", "ended"}
    submissions = sim.batch_submissions()
    assert len(submissions) == 4
    assert sorted(s.provider for s in submissions) == ["anthropic"] * 2 + ["openai"] * 2
    openai_chunks = {c.chunk_id for c in chunks if c.provider == "openai"}
    assert {s.metadata["keel_chunk"] for s in submissions if s.provider == "openai"} == (
        openai_chunks
    )
    # No live call: every answer came from a batch.
    assert sim.stats()["totals"]["requests"] == 0

    # One ledger row per line, from the provider's usage, at half the live price.
    ledger = await ledger_of(handle.id)
    assert len(ledger) == 10
    assert {r.run_id for r in ledger} == {PROVIDER_BATCH_RUN}
    assert {r.outcome for r in ledger} == {"ok"}
    assert all(r.input_tokens > 0 and r.output_tokens > 0 for r in ledger)
    batch_cost = sum((r.cost_usd or Decimal(0) for r in ledger), Decimal(0))
    live_cost = sum((live_price(r) for r in ledger), Decimal(0))
    assert batch_cost == pytest.approx(live_cost / 2, abs=Decimal("0.00000010"))
    assert result.spent_usd == batch_cost == sum(i.cost_usd or 0 for i in items)


async def test_a_provider_batch_costs_half_of_the_same_items_run_live(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    lines = mixed_lines(8)
    _, provider = await start_provider_batch(client, keel_settings, lines)
    _, live = await start_batch(client, keel_settings, lines, concurrency=4)
    provider_result, live_result = await provider.result(), await live.result()
    assert provider_result.ok == live_result.ok == 8
    provider_rows, live_rows = await ledger_of(provider.id), await ledger_of(live.id)
    # The same tokens either way (the simulator bills a batch line as it bills a live call).
    assert sorted((r.input_tokens, r.output_tokens) for r in provider_rows) == sorted(
        (r.input_tokens, r.output_tokens) for r in live_rows
    )
    assert provider_result.spent_usd == pytest.approx(
        live_result.spent_usd / 2, abs=Decimal("0.00000010")
    )
    assert provider_result.spent_usd > 0


async def test_lines_the_provider_expired_run_in_a_new_provider_batch_then_live(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    # Each provider batch answers about a third of its lines before it expires.
    sim.configure(batch={"processing_s": 3.0, "expire_after_s": 1.0})
    settings = FAST.model_copy(update={"max_rounds": 2})
    batch_id, handle = await start_provider_batch(
        client, keel_settings, prompt_lines(9), provider_settings=settings
    )
    result = await handle.result()
    assert (result.status, result.ok, result.failed) == ("completed", 9, 0)

    chunks = await provider_chunks_of(session_factory(), batch_id)
    assert [c.chunk_id.rsplit(".", 2)[1] for c in chunks] == ["r0", "r1"]
    assert {c.provider_status for c in chunks} == {"expired"}
    first, second = chunks
    assert first.items == 9 and 0 < first.succeeded < 9
    assert second.items == first.returned
    items = await items_of(batch_id)
    by_provider = [i for i in items if i.response and i.response.get("provider_batch_id")]
    live = [i for i in items if i.response and not i.response.get("provider_batch_id")]
    assert len(by_provider) == first.succeeded + second.succeeded
    assert len(live) == 9 - len(by_provider) > 0
    assert len(sim.batch_submissions()) == 2
    # Exactly one result each; the ledger has a row per answered batch line and per live call.
    ledger = await ledger_of(handle.id)
    assert sum(1 for r in ledger if r.run_id == PROVIDER_BATCH_RUN) == len(by_provider)
    assert sum(1 for r in ledger if r.run_id != PROVIDER_BATCH_RUN) == len(live)
    assert sim.stats()["totals"]["requests"] == len(live)


async def test_at_the_deadline_the_provider_batch_is_cancelled_and_the_rest_runs_live(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    sim.configure(batch={"processing_s": 600.0})
    batch_id, handle = await start_provider_batch(
        client, keel_settings, prompt_lines(6, model=BACKUP), deadline=timedelta(seconds=2)
    )
    result = await handle.result()
    assert (result.status, result.ok, result.failed) == ("completed", 6, 0)
    (chunk,) = await provider_chunks_of(session_factory(), batch_id)
    assert chunk.provider_status == "ended" and chunk.request_counts["canceled"] == 6
    assert (chunk.succeeded, chunk.returned) == (0, 6)
    items = await items_of(batch_id)
    assert all(i.response and not i.response.get("provider_batch_id") for i in items)
    assert sim.stats()["totals"]["requests"] == 6
    ledger = await ledger_of(handle.id)
    assert len(ledger) == 6 and PROVIDER_BATCH_RUN not in {r.run_id for r in ledger}
    async with session_factory()() as session:
        row = await session.get(ProviderBatchChunk, chunk.chunk_id)
        assert row is not None and row.provider_batch_id == chunk.provider_batch_id


async def test_the_demo_shows_a_provider_batch_at_half_the_live_cost(
    client: Client,
    keel_settings: KeelSettings,
    batch_worker: Worker,
    sim: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = reconfigure(monkeypatch, TEMPORAL_ADDRESS=client.service_client.config.target_host)
    batch_id = await run_demo_provider_batch(settings, items=6)
    # Words, not lines: the console wraps at the terminal's width (80 columns under xdist).
    shown = " ".join(capsys.readouterr().out.split())
    assert "6 done · 0 failed · 0 skipped · 0 to go · 6 total" in shown
    assert f"provider batch {batch_id}.r0.c" in shown and "completed" in shown
    assert "(50% of live)" in shown

    # keel cost shows the saving against live prices for the same tokens.
    report = await cost_report(session_factory(), CostGrouping.MODEL, start_of_month())
    assert report.batch_saving is not None and report.batch_saving.lines == 6
    assert report.batch_saving.batch_cost_usd == pytest.approx(
        report.batch_saving.live_cost_usd / 2, abs=Decimal("0.00000010")
    )
    print_cost_report(report)
    assert "provider batches: 6 line(s)" in capsys.readouterr().out


async def wait_until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_chunk_whose_worst_case_does_not_fit_waits_at_the_budget_gate_unsubmitted(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    async with session_factory().begin() as session:
        await add_reviewer(session, "alice", "batch-owner", added_by="test")
    batch_id, handle = await start_provider_batch(
        client, keel_settings, prompt_lines(4), budget_usd=Decimal("0.000001")
    )

    async def at_gate() -> bool:
        return (await report_of(session_factory(), batch_id)).pending_gate == "budget-1"

    await wait_until(at_gate, "the budget gate")
    report = await report_of(session_factory(), batch_id)
    assert report.status == "paused" and report.pending_gate_draft is not None
    assert sim.batch_submissions() == []  # the worst case was reserved before submitting
    await decide_budget(
        client,
        keel_settings,
        session_factory(),
        batch_id,
        BudgetDecision(reviewer="alice", raise_to=Decimal(report.pending_gate_draft)),
    )
    result = await handle.result()
    assert (result.status, result.ok) == ("completed", 4)
    assert len(sim.batch_submissions()) == 1
    assert result.spent_usd <= Decimal(report.pending_gate_draft)


async def test_a_spent_tenant_budget_holds_the_provider_batch_at_a_tenant_gate(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    """As a live batch does: the tenant's budget (keel budget set) limits what is sent to the
    provider, and what the provider batch cost is the tenant's spend."""
    async with session_factory().begin() as session:
        await add_reviewer(session, "alice", "batch-owner", added_by="test")
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    await set_day_budget(tenant, Decimal("0.000001"))
    batch_id, handle = await start_provider_batch(
        client, keel_settings, prompt_lines(4), tenant=tenant
    )

    async def at_gate() -> bool:
        return (await report_of(session_factory(), batch_id)).pending_gate == "tenant-budget-1"

    await wait_until(at_gate, "the tenant budget gate")
    report = await report_of(session_factory(), batch_id)
    assert report.status == "paused"
    assert f"keel budget set {tenant}" in (report.status_reason or "")
    assert sim.batch_submissions() == []  # nothing was sent
    assert await chunk_statuses(batch_id) == ["planned"]
    await set_day_budget(tenant, Decimal("1"))
    await handle.execute_update(
        "approve", ApproveDecision(reviewer="alice", gate="tenant-budget-1")
    )
    result = await handle.result()

    assert (result.status, result.ok) == ("completed", 4)
    assert await chunk_statuses(batch_id) == ["ended"]
    async with session_factory()() as session:
        (budget,) = await budget_states(session, tenant, keel_settings)
    assert budget.spent_usd == result.spent_usd > 0 and budget.reserved_usd == 0


async def set_day_budget(tenant: str, usd: Decimal) -> None:
    async with session_factory().begin() as session:
        await session.merge(Budget(tenant=tenant, period="day", limit_usd=usd))


async def chunk_statuses(batch_id: str) -> list[str]:
    async with session_factory()() as session:
        rows = await session.execute(
            select(ProviderBatchChunk.status)
            .where(ProviderBatchChunk.batch_id == batch_id)
            .order_by(ProviderBatchChunk.round, ProviderBatchChunk.seq)
        )
        return list(rows.scalars())


async def test_cancel_cancels_the_provider_batch_and_skips_what_it_did_not_answer(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    sim.configure(batch={"processing_s": 600.0})
    batch_id, handle = await start_provider_batch(client, keel_settings, prompt_lines(5))

    async def submitted() -> bool:
        chunks = await provider_chunks_of(session_factory(), batch_id)
        return bool(chunks) and chunks[0].provider_batch_id is not None

    await wait_until(submitted, "the provider batch")
    ack = await control_batch(
        client, session_factory(), batch_id, BatchControl.CANCEL, ControlRequest(by="alice")
    )
    assert ack.status == "cancelling"
    with pytest.raises(BatchError, match="nothing to pause"):
        await control_batch(
            client, session_factory(), batch_id, BatchControl.PAUSE, ControlRequest(by="alice")
        )
    result = await handle.result()
    assert (result.status, result.ok, result.skipped) == ("cancelled", 0, 5)
    (chunk,) = await provider_chunks_of(session_factory(), batch_id)
    assert chunk.provider_status == "cancelled" and chunk.returned == 5
    assert sim.stats()["totals"]["requests"] == 0  # nothing ran live either
    assert {i.status for i in await items_of(batch_id)} == {"skipped"}


async def test_lines_the_provider_failed_run_again_in_a_new_provider_batch(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    sim.configure(batch={"processing_s": 0.2, "line_error_rate": 0.4})
    settings = FAST.model_copy(update={"max_rounds": 6})
    batch_id, handle = await start_provider_batch(
        client, keel_settings, mixed_lines(10), provider_settings=settings
    )
    result = await handle.result()
    assert (result.status, result.ok, result.failed) == ("completed", 10, 0)
    chunks = await provider_chunks_of(session_factory(), batch_id)
    first_round = [c for c in chunks if ".r0." in c.chunk_id]
    failed_first = sum(c.returned for c in first_round)
    assert failed_first > 0  # the provider answered some lines with 500s
    later = [c for c in chunks if ".r0." not in c.chunk_id]
    assert sum(c.items for c in later if ".r1." in c.chunk_id) == failed_first
    # Every item has exactly one answer; the ledger has a row for every line the provider ran
    # (its 500s included, at no cost) and for every live call if any were needed.
    items = await items_of(batch_id)
    assert len({i.custom_id for i in items if i.status == "ok"}) == 10
    ledger = await ledger_of(handle.id)
    batch_rows = [r for r in ledger if r.run_id == PROVIDER_BATCH_RUN]
    sent = sum(s.requests for s in sim.batch_submissions())
    assert len(batch_rows) == sent
    assert sum(1 for r in batch_rows if r.outcome == "ok") + sim.stats()["totals"]["requests"] == 10
    assert all(r.cost_usd == 0 for r in batch_rows if r.outcome == "error")


async def test_a_temperature_above_anthropics_range_fails_its_line_instead_of_being_clamped(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, sim: SimServer
) -> None:
    """OpenAI's temperature goes up to 2, Anthropic's to 1: a Claude line asking 1.5 was sent
    at 1. Now it is sent as asked, and the provider's refusal fails that line, saying why."""
    lines = [
        json.dumps(
            {"custom_id": name, "prompt": "Name a river.", "model": BACKUP, "temperature": t}
        )
        for name, t in (("hot", 1.5), ("warm", 1.0))
    ]
    batch_id, handle = await start_provider_batch(client, keel_settings, lines)
    result = await handle.result()
    assert (result.total, result.ok, result.failed) == (2, 1, 1)
    by_id = {item.custom_id: item for item in await items_of(batch_id)}
    assert by_id["warm"].status == "ok"
    assert by_id["hot"].status == "failed"
    assert "temperature" in (by_id["hot"].error_message or "")
