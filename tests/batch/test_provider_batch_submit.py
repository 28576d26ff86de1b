"""Submitting a chunk is idempotent across a crash between the provider accepting it and keel
storing its id: the retried activity finds the provider batch it made (OpenAI: by the chunk key in
the batch's metadata; Anthropic: by size and time, as Message Batches carry no metadata) instead
of submitting again. The activities run as the worker would call them, against the simulator
through the real SDKs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities.batch.files import BatchFileLimits, parse_lines
from activities.batch.items import create_batch, insert_items
from activities.batch.provider_api import LineResult, Lookup, batch_api
from activities.batch.provider_batches import ProviderBatchActivities, _lookup
from activities.llm.budgets import budget_states
from activities.llm.providers import ProviderClients
from contracts.batch import BatchOptions, ItemRequest
from contracts.llm import BudgetState, Usage, provider_for_model
from contracts.provider_batch import ChunkInput, ChunkStatus, PlanChunksInput
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import BatchItem, Budget, ProviderBatchChunk
from llmsim import SimServer
from tests.batch.conftest import BACKUP, CHEAP, prompt_lines


@pytest.mark.parametrize("model", [CHEAP, BACKUP])
async def test_a_retried_submission_finds_the_provider_batch_instead_of_submitting_twice(
    keel_settings: KeelSettings, simulator: SimServer, model: str
) -> None:
    sessions = session_factory()
    batch_id = f"s{uuid.uuid4().hex[:8]}"
    options = BatchOptions()
    lines = parse_lines(prompt_lines(4, model=model), BatchFileLimits.from_settings(keel_settings))
    async with sessions.begin() as session:
        await create_batch(session, batch_id, options, source_name="t.jsonl")
        await insert_items(session, batch_id, lines)
    providers = ProviderClients(keel_settings)
    activities = ProviderBatchActivities(keel_settings, sessions, providers)
    (chunk,) = (
        await activities.plan_provider_chunks(
            PlanChunksInput(batch_id=batch_id, options=options, round=0)
        )
    ).chunks

    # The first attempt marked the chunk, the provider accepted it, the worker died before the
    # provider's id was stored.
    async with sessions.begin() as session:
        row = await session.get(ProviderBatchChunk, chunk.chunk_id)
        assert row is not None and row.status == ChunkStatus.PLANNED.value
        row.status = ChunkStatus.SUBMITTING.value
        row.submit_started_at = datetime.now(UTC)
        stored = await session.execute(select(BatchItem).where(BatchItem.batch_id == batch_id))
        items = [
            (item.line_no, ItemRequest.model_validate(item.request)) for item in stored.scalars()
        ]
    provider, name = provider_for_model(model)
    made, _ = await batch_api(providers, provider).submit(chunk.chunk_id, name, sorted(items))
    assert len(simulator.batch_submissions()) == 1

    state = await ActivityEnvironment().run(
        activities.submit_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
    )
    assert (state.status, state.provider_batch_id) == (ChunkStatus.SUBMITTED, made)
    assert len(simulator.batch_submissions()) == 1
    # And once more (a replayed activity): nothing new either.
    again = await ActivityEnvironment().run(
        activities.submit_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
    )
    assert again.provider_batch_id == made and len(simulator.batch_submissions()) == 1


async def set_day_budget(tenant: str, usd: Decimal) -> None:
    async with session_factory().begin() as session:
        await session.merge(Budget(tenant=tenant, period="day", limit_usd=usd))


async def tenant_budget(keel_settings: KeelSettings, tenant: str) -> BudgetState:
    async with session_factory()() as session:
        (state,) = await budget_states(session, tenant, keel_settings)
        return state


async def test_the_tenant_budget_limits_reserves_and_is_charged_by_provider_batches(
    keel_settings: KeelSettings, simulator: SimServer
) -> None:
    """As for live calls: a chunk is sent only when the tenant's budgets cover its worst case;
    at the provider it holds that much (a live call sees less left); collected, its real cost is
    the tenant's spend and the reservation ends."""
    sessions = session_factory()
    batch_id = f"t{uuid.uuid4().hex[:8]}"
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    options = BatchOptions(tenant=tenant)
    lines = parse_lines(prompt_lines(4), BatchFileLimits.from_settings(keel_settings))
    async with sessions.begin() as session:
        await create_batch(session, batch_id, options, source_name="t.jsonl")
        await insert_items(session, batch_id, lines)
    activities = ProviderBatchActivities(keel_settings, sessions, ProviderClients(keel_settings))
    (chunk,) = (
        await activities.plan_provider_chunks(
            PlanChunksInput(batch_id=batch_id, options=options, round=0)
        )
    ).chunks
    worst = chunk.worst_case_usd
    assert worst is not None and worst > 0
    await set_day_budget(tenant, worst / 2)
    sent_before = len(simulator.batch_submissions())

    refused = await ActivityEnvironment().run(
        activities.submit_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
    )

    assert refused.status == ChunkStatus.PLANNED and refused.provider_batch_id is None
    assert refused.budget_refusal is not None
    assert f"keel budget set {tenant} --usd <amount> --period day" in refused.budget_refusal
    assert len(simulator.batch_submissions()) == sent_before
    assert (await tenant_budget(keel_settings, tenant)).reserved_usd == 0

    await set_day_budget(tenant, worst * 3)
    before = simulator.state.config.batch.model_dump()
    simulator.configure(batch={"processing_s": 0})  # answered at once: ended at the first poll
    try:
        state = await ActivityEnvironment().run(
            activities.submit_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
        )
    finally:
        simulator.configure(batch=before)

    assert state.status == ChunkStatus.SUBMITTED and state.budget_refusal is None
    assert len(simulator.batch_submissions()) == sent_before + 1
    reserved = await tenant_budget(keel_settings, tenant)
    assert (reserved.reserved_usd, reserved.spent_usd) == (worst, 0)

    ended = await activities.poll_provider_chunk(ChunkInput(chunk_id=chunk.chunk_id))
    assert ended.provider_ended
    collected = await ActivityEnvironment().run(
        activities.collect_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
    )

    charged = await tenant_budget(keel_settings, tenant)
    assert collected.succeeded == 4 and collected.cost_usd > 0
    assert (charged.reserved_usd, charged.spent_usd) == (0, collected.cost_usd)


class SilentProvider:
    """A provider batch API whose upload and download each take as long as the activity does
    not heartbeat: they return once a heartbeat arrives (a real one of 200 MB takes minutes,
    longer than the heartbeat timeout)."""

    def __init__(self, heard: asyncio.Event, line_nos: list[int]) -> None:
        self._heard = heard
        self._line_nos = line_nos

    async def _until_heard(self) -> None:
        self._heard.clear()
        await asyncio.wait_for(self._heard.wait(), timeout=5)

    async def find(self, lookup: Lookup) -> str | None:
        return None

    async def submit(
        self, chunk_key: str, model: str, lines: list[tuple[int, ItemRequest]]
    ) -> tuple[str, str | None]:
        await self._until_heard()
        return f"silent-{chunk_key}", None

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        await self._until_heard()
        for line_no in self._line_nos:
            yield LineResult(
                line_no=line_no, ok=True, text="ok", usage=Usage(input_tokens=5, output_tokens=2)
            )


async def test_a_long_upload_and_download_heartbeat_all_along(
    keel_settings: KeelSettings,
) -> None:
    sessions = session_factory()
    batch_id = f"h{uuid.uuid4().hex[:8]}"
    options = BatchOptions(tenant=f"hb-{uuid.uuid4().hex[:6]}")
    lines = parse_lines(prompt_lines(3), BatchFileLimits.from_settings(keel_settings))
    async with sessions.begin() as session:
        await create_batch(session, batch_id, options, source_name="t.jsonl")
        await insert_items(session, batch_id, lines)
    heard = asyncio.Event()
    silent = SilentProvider(heard, [1, 2, 3])

    class Activities(ProviderBatchActivities):
        def _api(self, provider: str) -> Any:
            return silent

    activities = Activities(keel_settings, sessions, ProviderClients(keel_settings))
    environment = ActivityEnvironment()
    environment.on_heartbeat = lambda *details: heard.set()
    (chunk,) = (
        await activities.plan_provider_chunks(
            PlanChunksInput(batch_id=batch_id, options=options, round=0)
        )
    ).chunks

    state = await environment.run(
        activities.submit_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
    )
    assert state.provider_batch_id == f"silent-{chunk.chunk_id}"
    collected = await environment.run(
        activities.collect_provider_chunk, ChunkInput(chunk_id=chunk.chunk_id)
    )
    assert collected.succeeded == 3


async def test_the_lookup_after_a_crash_reads_only_ids_stored_since_the_submission_began(
    keel_settings: KeelSettings,
) -> None:
    """Anthropic's lookup skips batches other chunks hold; only those stored since this chunk's
    submission began (less a margin for the clocks) can be among the batches it looks at."""
    sessions = session_factory()
    batch_id = f"l{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        await create_batch(session, batch_id, BatchOptions(), source_name="t.jsonl")
        for seq, (provider_id, stored_at) in enumerate(
            [
                (f"old-{tag}", now - timedelta(days=3)),
                (f"recent-{tag}", now - timedelta(minutes=5)),
                (f"unstamped-{tag}", None),
            ]
        ):
            session.add(
                ProviderBatchChunk(
                    id=f"{batch_id}.r0.c{seq}", batch_id=batch_id, round=0, seq=seq,
                    provider="anthropic", model=BACKUP, status=ChunkStatus.SUBMITTED.value,
                    line_nos=[seq], item_count=1, request_bytes=1,
                    provider_batch_id=provider_id, submitted_at=stored_at,
                )
            )  # fmt: skip
        crashed = ProviderBatchChunk(
            id=f"{batch_id}.r0.c9", batch_id=batch_id, round=0, seq=9, provider="anthropic",
            model=BACKUP, status=ChunkStatus.SUBMITTING.value, line_nos=[9, 10], item_count=2,
            request_bytes=1, submit_started_at=now - timedelta(minutes=10),
        )  # fmt: skip
        session.add(crashed)
        await session.flush()
        lookup = await _lookup(session, crashed)

    assert (lookup.chunk_key, lookup.first_line_no, lookup.size) == (crashed.id, 9, 2)
    mine = {i for i in lookup.known_ids if i.endswith(tag)}
    assert mine == {f"recent-{tag}", f"unstamped-{tag}"}
