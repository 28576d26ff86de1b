"""Submitting a chunk is idempotent across a crash between the provider accepting it and keel
storing its id: the retried activity finds the provider batch it made (OpenAI: by the chunk key in
the batch's metadata; Anthropic: by size and time, as Message Batches carry no metadata) instead
of submitting again. The activities run as the worker would call them, against the simulator
through the real SDKs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from activities.batch.files import BatchFileLimits, parse_lines
from activities.batch.items import create_batch, insert_items
from activities.batch.provider_api import batch_api
from activities.batch.provider_batches import ProviderBatchActivities
from activities.llm.providers import ProviderClients
from contracts.batch import BatchOptions, ItemRequest
from contracts.llm import provider_for_model
from contracts.provider_batch import ChunkInput, ChunkStatus, PlanChunksInput
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import BatchItem, ProviderBatchChunk
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

    state = await activities.submit_provider_chunk(ChunkInput(chunk_id=chunk.chunk_id))
    assert (state.status, state.provider_batch_id) == (ChunkStatus.SUBMITTED, made)
    assert len(simulator.batch_submissions()) == 1
    # And once more (a replayed activity): nothing new either.
    again = await activities.submit_provider_chunk(ChunkInput(chunk_id=chunk.chunk_id))
    assert again.provider_batch_id == made and len(simulator.batch_submissions()) == 1
