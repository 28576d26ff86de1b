"""Provider batch activities: plan a batch's pending items into provider batches (chunks), submit
each exactly once, read its state, collect its results into ``batch_items`` and the ledger, cancel.

Exactly once, across retries and crashes:
- a round's chunks are planned in one transaction; a retried plan returns the same chunks;
- a chunk's row says ``submitting`` (committed) before the provider sees anything, and holds the
  provider's id right after; a retry that finds ``submitting`` looks the chunk up at the provider
  (OpenAI: the batch's metadata carries the chunk key) before it would submit again;
- results are written in one transaction that also ends the chunk; only items the chunk still
  holds (``running`` with its claim token) take a result, and each line's ledger row is keyed by
  the chunk and the item, so a replay writes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.batch.provider_api import BatchApi, LineResult, Lookup, batch_api, request_bytes
from activities.llm.budgets import blocking_budget, budget_states, lock_budgets
from activities.llm.ledger import AttemptRecord, record_attempt
from activities.llm.pricing import price_usd
from activities.llm.providers import ProviderClients
from contracts.batch import BatchOptions, ItemRequest, batch_workflow_id
from contracts.llm import LedgerOutcome, Usage, provider_for_model
from contracts.provider_batch import (
    PROVIDER_LIMITS,
    ChunkInput,
    ChunkRef,
    ChunkState,
    ChunkStatus,
    CollectResult,
    PlanChunksInput,
    PlanChunksResult,
)
from infra.settings import KeelSettings
from infra.tables import Batch, BatchItem, ProviderBatchChunk
from llmsim.tokens import count_message_tokens

log = structlog.get_logger(__name__)

# Ledger rows of provider batch lines: run_id says which path billed them (keel cost tells them
# apart by it), activity_id is "<chunk>/<item custom id>".
PROVIDER_BATCH_RUN = "provider-batch"
# While a submission uploads, a collection downloads and writes (each may take minutes for a
# chunk of 50,000 lines), the activity heartbeats this often: well inside its heartbeat timeout
# (workflows/activity_calls.py), and it is how a cancellation reaches it.
HEARTBEAT_SECONDS = 10.0
# How far a provider's clock and Postgres's may disagree, for the lookup after a crash.
LOOKUP_CLOCK_MARGIN = timedelta(hours=1)


@contextlib.asynccontextmanager
async def heartbeating(progress: Callable[[], object] = lambda: None) -> AsyncIterator[None]:
    """Heartbeat (with ``progress()``) at once and every ``HEARTBEAT_SECONDS`` while the block
    runs, whether it is awaiting the provider or writing to Postgres."""

    async def beat() -> None:
        while True:
            activity.heartbeat(progress())
            await asyncio.sleep(HEARTBEAT_SECONDS)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


def chunk_id_of(batch_id: str, round_no: int, seq: int) -> str:
    return f"{batch_id}.r{round_no}.c{seq}"


def item_model(options: BatchOptions, request: ItemRequest, settings: KeelSettings) -> str:
    """The model a line runs on: --model, else the line's own, else the route's first model
    (the model the live path would try first)."""
    if options.model:
        return options.model
    if request.model and options.route is None:
        return request.model
    route = options.route or settings.default_route
    return settings.routes[route][0]


def worst_case_usd(provider: str, model: str, request: ItemRequest) -> Decimal | None:
    """The most a line can cost at batch prices: its prompt and an answer of max_tokens."""
    prompt = count_message_tokens(m.content for m in request.messages)
    usage = Usage(input_tokens=prompt, output_tokens=request.parameters().max_tokens)
    return price_usd(provider, model, usage, batch=True)


def _state(row: ProviderBatchChunk, ended: bool = False) -> ChunkState:
    counts = row.request_counts or {}
    total = row.item_count
    processing = counts.get("processing")
    if processing is not None:
        done = total - int(processing)
    else:
        done = int(counts.get("completed", 0)) + int(counts.get("failed", 0))
    return ChunkState(
        chunk_id=row.id,
        status=ChunkStatus(row.status),
        provider_batch_id=row.provider_batch_id,
        provider_status=row.provider_status,
        provider_ended=ended,
        done=done,
        total=total,
    )


class ProviderBatchActivities:
    """The provider batch activities, with the worker's settings, database sessions and
    provider clients."""

    def __init__(
        self,
        settings: KeelSettings,
        sessions: async_sessionmaker[AsyncSession],
        providers: ProviderClients,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._providers = providers

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.plan_provider_chunks,
            self.submit_provider_chunk,
            self.poll_provider_chunk,
            self.collect_provider_chunk,
            self.cancel_provider_chunk,
        ]

    def _api(self, provider: str) -> BatchApi:
        try:
            return batch_api(self._providers, provider)
        except LookupError as error:
            raise ApplicationError(
                str(error), type="ProviderUnavailable", non_retryable=True
            ) from error

    # --- Planning -----------------------------------------------------------------------------

    @activity.defn(name="plan_provider_chunks")
    async def plan_provider_chunks(self, params: PlanChunksInput) -> PlanChunksResult:
        """The round's chunks: the batch's pending items grouped by provider and model, split at
        each provider's limits, their items taken (``running``, claimed by the chunk)."""
        async with self._sessions.begin() as session:
            existing = (
                await session.execute(
                    select(ProviderBatchChunk)
                    .where(
                        ProviderBatchChunk.batch_id == params.batch_id,
                        ProviderBatchChunk.round == params.round,
                    )
                    .order_by(ProviderBatchChunk.seq)
                )
            ).scalars()
            refs = [_ref(row) for row in existing]
            if refs:
                return PlanChunksResult(chunks=refs)
            await session.execute(
                update(Batch)
                .where(Batch.id == params.batch_id)
                .values(started_at=func.coalesce(Batch.started_at, func.now()))
            )
            rows = await session.execute(
                select(BatchItem.line_no, BatchItem.request)
                .where(BatchItem.batch_id == params.batch_id, BatchItem.status == "pending")
                .order_by(BatchItem.line_no)
            )
            groups: dict[tuple[str, str], list[tuple[int, ItemRequest, int, Decimal | None]]]
            groups = defaultdict(list)
            for line_no, raw in rows:
                request = ItemRequest.model_validate(raw)
                model = item_model(params.options, request, self._settings)
                provider, name = provider_for_model(model)
                size = request_bytes(provider, name, line_no, request)
                groups[(provider, model)].append(
                    (line_no, request, size, worst_case_usd(provider, name, request))
                )
            seq = 0
            for (provider, model), lines in groups.items():
                limits = PROVIDER_LIMITS[provider]
                most = min(
                    limits.max_requests, params.max_requests_per_chunk or limits.max_requests
                )
                chunk: list[tuple[int, ItemRequest, int, Decimal | None]] = []
                for line in [*lines, None]:
                    full = line is None or (
                        chunk
                        and (
                            len(chunk) >= most
                            or sum(c[2] for c in chunk) + line[2] > limits.max_bytes
                        )
                    )
                    if full and chunk:
                        refs.append(
                            await self._insert_chunk(session, params, seq, provider, model, chunk)
                        )
                        seq += 1
                        chunk = []
                    if line is not None:
                        chunk.append(line)
        return PlanChunksResult(chunks=refs)

    async def _insert_chunk(
        self,
        session: AsyncSession,
        params: PlanChunksInput,
        seq: int,
        provider: str,
        model: str,
        lines: list[tuple[int, ItemRequest, int, Decimal | None]],
    ) -> ChunkRef:
        chunk_id = chunk_id_of(params.batch_id, params.round, seq)
        costs = [c[3] for c in lines]
        worst = None if any(c is None for c in costs) else sum((c for c in costs if c), Decimal(0))
        line_nos = [c[0] for c in lines]
        row = ProviderBatchChunk(
            id=chunk_id,
            batch_id=params.batch_id,
            round=params.round,
            seq=seq,
            provider=provider,
            model=model,
            status=ChunkStatus.PLANNED.value,
            line_nos=line_nos,
            item_count=len(lines),
            request_bytes=sum(c[2] for c in lines),
            worst_case_usd=worst,
        )
        session.add(row)
        await session.execute(
            update(BatchItem)
            .where(BatchItem.batch_id == params.batch_id, BatchItem.line_no.in_(line_nos))
            .values(status="running", claim_token=chunk_id, run_count=BatchItem.run_count + 1)
        )
        return _ref(row)

    # --- Submitting ---------------------------------------------------------------------------

    @activity.defn(name="submit_provider_chunk")
    async def submit_provider_chunk(self, params: ChunkInput) -> ChunkState:
        """Send the chunk to its provider, once: the row says ``submitting`` before the provider
        sees it, and a retry looks it up there before submitting again."""
        async with self._sessions.begin() as session:
            row = await _chunk(session, params.chunk_id, lock=True)
            if (
                row.status != ChunkStatus.PLANNED.value
                and row.status != ChunkStatus.SUBMITTING.value
            ):
                return _state(row)
            api = self._api(row.provider)
            if row.status == ChunkStatus.SUBMITTING.value:
                async with heartbeating():
                    found = await api.find(await _lookup(session, row))
                if found is not None:
                    log.warning("provider_batch.found_after_retry", chunk=row.id, batch=found)
                    row.provider_batch_id = found
                    row.status = ChunkStatus.SUBMITTED.value
                    row.submitted_at = func.now()
                    await session.flush()
                    return _state(row)
            else:
                # Checked and reserved in one transaction, under the tenant's budget lock: the
                # next check (a live call's, another chunk's) sees this chunk's worst case.
                refusal = await self._tenant_budget_refusal(session, row)
                if refusal is not None:
                    log.info("provider_batch.tenant_budget_refused", chunk=row.id)
                    return _state(row).model_copy(update={"budget_refusal": refusal})
                row.status = ChunkStatus.SUBMITTING.value
                row.submit_started_at = func.now()
            line_nos = list(row.line_nos)
            _provider, model, batch_id = row.provider, row.model, row.batch_id
        # Committed: from here a retry of this activity looks the chunk up before submitting.
        async with self._sessions() as session:
            items = await session.execute(
                select(BatchItem.line_no, BatchItem.request).where(
                    BatchItem.batch_id == batch_id, BatchItem.line_no.in_(line_nos)
                )
            )
            lines = [(line_no, ItemRequest.model_validate(raw)) for line_no, raw in items]
        lines.sort(key=lambda line: line[0])
        _, name = provider_for_model(model)
        async with heartbeating():
            provider_id, file_id = await api.submit(params.chunk_id, name, lines)
        async with self._sessions.begin() as session:
            row = await _chunk(session, params.chunk_id, lock=True)
            row.provider_batch_id = provider_id
            row.provider_file_id = file_id
            row.status = ChunkStatus.SUBMITTED.value
            row.submitted_at = func.now()
            await session.flush()
            await session.refresh(row)
            log.info("provider_batch.submitted", chunk=row.id, batch=provider_id, items=len(lines))
            return _state(row)

    async def _tenant_budget_refusal(
        self, session: AsyncSession, row: ProviderBatchChunk
    ) -> str | None:
        """Why the tenant's budgets cannot cover the chunk at its worst, or None (as for a live
        call: a chunk of unknown price goes through until a budget is spent)."""
        batch = await session.get(Batch, row.batch_id)
        assert batch is not None
        if not await lock_budgets(session, batch.tenant):
            return None
        states = await budget_states(session, batch.tenant, self._settings)
        blocking = blocking_budget(states, row.worst_case_usd)
        if blocking is None:
            return None
        needs = (
            f"up to ${row.worst_case_usd:.6f}"
            if row.worst_case_usd is not None
            else "an unpriced amount"
        )
        return (
            f"{blocking.describe()}; provider batch {row.id} ({row.item_count} items on "
            f"{row.model}) needs {needs}. Raise it with: keel budget set {blocking.tenant} "
            f"--usd <amount> --period {blocking.period}"
        )

    # --- Waiting ------------------------------------------------------------------------------

    @activity.defn(name="poll_provider_chunk")
    async def poll_provider_chunk(self, params: ChunkInput) -> ChunkState:
        async with self._sessions() as session:
            row = await _chunk(session, params.chunk_id)
            if row.status != ChunkStatus.SUBMITTED.value or row.provider_batch_id is None:
                return _state(row)
            provider, provider_id = row.provider, row.provider_batch_id
        remote = await self._api(provider).state(provider_id)
        async with self._sessions.begin() as session:
            row = await _chunk(session, params.chunk_id, lock=True)
            row.provider_status = remote.status
            row.request_counts = remote.counts
            await session.flush()
            return _state(row, ended=remote.ended)

    # --- Results ------------------------------------------------------------------------------

    @activity.defn(name="collect_provider_chunk")
    async def collect_provider_chunk(self, params: ChunkInput) -> CollectResult:
        """Write an ended chunk's results: answers to their items (and one ledger row per line
        the provider ran, at batch prices); lines the provider failed for its own reasons,
        expired or cancelled back to pending; lines it refused as invalid failed."""
        async with self._sessions() as session:
            row = await _chunk(session, params.chunk_id)
            if row.status == ChunkStatus.ENDED.value:
                return _collected(row)
            provider, provider_id = row.provider, row.provider_batch_id
        if provider_id is None:
            raise ApplicationError(
                f"chunk {params.chunk_id} was never submitted", non_retryable=True
            )
        results: dict[int, LineResult] = {}
        refused: LineResult | None = None
        # Reading tens of thousands of lines and writing them takes a while: heartbeat all along.
        async with heartbeating(lambda: len(results)):
            async for line in self._api(provider).results(provider_id):
                if line.line_no < 0:
                    refused = line
                else:
                    results[line.line_no] = line
            async with self._sessions.begin() as session:
                row = await _chunk(session, params.chunk_id, lock=True)
                if row.status == ChunkStatus.ENDED.value:
                    return _collected(row)
                batch = await session.get(Batch, row.batch_id)
                assert batch is not None
                held = await session.execute(
                    select(BatchItem.line_no, BatchItem.custom_id, BatchItem.request).where(
                        BatchItem.batch_id == row.batch_id,
                        BatchItem.claim_token == row.id,
                        BatchItem.status == "running",
                    )
                )
                succeeded = failed = returned = 0
                cost = Decimal(0)
                back: list[int] = []
                _, name = provider_for_model(row.model)
                for line_no, custom_id, raw in held:
                    found = results.get(line_no) or refused
                    if found is None or (not found.ok and found.retryable):
                        back.append(line_no)
                        returned += 1
                        if found is not None and found.error_class not in ("expired", "cancelled"):
                            await self._ledger(session, row, batch, custom_id, raw, found, None)
                        continue
                    line = found
                    usage = line.usage
                    line_cost = price_usd(row.provider, name, usage, batch=True) if usage else None
                    await self._ledger(session, row, batch, custom_id, raw, line, line_cost)
                    if line.ok:
                        succeeded += 1
                        cost += line_cost or 0
                        values: dict[str, Any] = {
                            "status": "ok",
                            "response": {
                                "text": line.text,
                                "model": row.model,
                                "provider": row.provider,
                                "finish_reason": line.finish_reason,
                                "usage": (line.usage or Usage()).model_dump(),
                                "attempts": 1,
                                "failed_models": [],
                                "provider_batch_id": provider_id,
                            },
                            "cost_usd": line_cost,
                            "error_class": None,
                            "error_message": None,
                        }
                    else:
                        failed += 1
                        values = {
                            "status": "failed",
                            "error_class": line.error_class,
                            "error_message": line.error_message,
                        }
                    await session.execute(
                        update(BatchItem)
                        .where(
                            BatchItem.batch_id == row.batch_id,
                            BatchItem.line_no == line_no,
                            BatchItem.claim_token == row.id,
                            BatchItem.status == "running",
                        )
                        .values(model=row.model, finished_at=func.now(), **values)
                    )
                if back:
                    await session.execute(
                        update(BatchItem)
                        .where(
                            BatchItem.batch_id == row.batch_id,
                            BatchItem.line_no.in_(back),
                            BatchItem.claim_token == row.id,
                            BatchItem.status == "running",
                        )
                        .values(status="pending", claim_token=None)
                    )
                row.status = ChunkStatus.ENDED.value
                row.succeeded, row.failed, row.returned = succeeded, failed, returned
                row.cost_usd = cost
                row.ended_at = func.now()
                await session.flush()
                await session.refresh(row)
                return _collected(row)

    async def _ledger(
        self,
        session: AsyncSession,
        row: ProviderBatchChunk,
        batch: Batch,
        custom_id: str,
        raw: dict[str, Any] | None,
        line: LineResult,
        cost: Decimal | None,
    ) -> None:
        """One ledger row per line the provider ran, from the usage it reported."""
        digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
        await record_attempt(
            session,
            AttemptRecord(
                workflow_id=batch_workflow_id(batch.id),
                run_id=PROVIDER_BATCH_RUN,
                activity_id=f"{row.id}/{custom_id}"[:200],
                attempt=1,
                tenant=batch.tenant,
                route=batch.route,
                provider=row.provider,
                model=row.model,
                prompt_hash=digest,
                usage=line.usage or Usage(),
                cost_usd=cost if line.ok else Decimal(0),
                latency_ms=0,
                first_token_ms=None,
                streamed=False,
                outcome=LedgerOutcome.OK.value if line.ok else LedgerOutcome.ERROR.value,
                error_class=line.error_class,
                error_message=line.error_message,
            ),
        )

    # --- Cancelling ---------------------------------------------------------------------------

    @activity.defn(name="cancel_provider_chunk")
    async def cancel_provider_chunk(self, params: ChunkInput) -> ChunkState:
        """Cancel a submitted chunk at its provider (its results are collected when it ends);
        a chunk never submitted is withdrawn and its items go back to pending."""
        async with self._sessions.begin() as session:
            row = await _chunk(session, params.chunk_id, lock=True)
            if row.status == ChunkStatus.SUBMITTING.value:
                found = await self._api(row.provider).find(await _lookup(session, row))
                if found is not None:
                    row.provider_batch_id, row.status = found, ChunkStatus.SUBMITTED.value
                    row.submitted_at = func.now()
            if (
                row.status == ChunkStatus.PLANNED.value
                or row.status == ChunkStatus.SUBMITTING.value
            ):
                await session.execute(
                    update(BatchItem)
                    .where(
                        BatchItem.batch_id == row.batch_id,
                        BatchItem.claim_token == row.id,
                        BatchItem.status == "running",
                    )
                    .values(status="pending", claim_token=None)
                )
                row.status = ChunkStatus.WITHDRAWN.value
                row.ended_at = func.now()
                await session.flush()
                await session.refresh(row)
                return _state(row)
            provider, provider_id, status = row.provider, row.provider_batch_id, row.status
            await session.flush()
            state = _state(row)
        if status == ChunkStatus.SUBMITTED.value and provider_id is not None:
            await self._api(provider).cancel(provider_id)
        return state


def _ref(row: ProviderBatchChunk) -> ChunkRef:
    return ChunkRef(
        chunk_id=row.id,
        provider=row.provider,
        model=row.model,
        items=row.item_count,
        worst_case_usd=row.worst_case_usd,
    )


def _collected(row: ProviderBatchChunk) -> CollectResult:
    return CollectResult(
        chunk_id=row.id,
        succeeded=row.succeeded,
        failed=row.failed,
        returned=row.returned,
        cost_usd=row.cost_usd or Decimal(0),
    )


async def _chunk(session: AsyncSession, chunk_id: str, lock: bool = False) -> ProviderBatchChunk:
    statement = select(ProviderBatchChunk).where(ProviderBatchChunk.id == chunk_id)
    if lock:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).scalar_one_or_none()
    if row is None:
        raise ApplicationError(f"no provider batch chunk {chunk_id!r}", non_retryable=True)
    return row


async def _lookup(session: AsyncSession, row: ProviderBatchChunk) -> Lookup:
    """What finds the chunk's batch at its provider. The ids other chunks hold matter only for
    batches created since this chunk's submission began (older ones are skipped by their
    creation time): an id stored before then, less a margin for the clocks, cannot be one."""
    assert row.submit_started_at is not None
    known = await session.execute(
        select(ProviderBatchChunk.provider_batch_id).where(
            ProviderBatchChunk.provider == row.provider,
            ProviderBatchChunk.provider_batch_id.is_not(None),
            ProviderBatchChunk.id != row.id,
            or_(
                ProviderBatchChunk.submitted_at.is_(None),
                ProviderBatchChunk.submitted_at >= row.submit_started_at - LOOKUP_CLOCK_MARGIN,
            ),
        )
    )
    return Lookup(
        chunk_key=row.id,
        first_line_no=min(row.line_nos),
        size=row.item_count,
        since=row.submit_started_at,
        known_ids=frozenset(provider_id for (provider_id,) in known if provider_id),
    )


async def chunk_rows(session: AsyncSession, batch_id: str) -> list[ProviderBatchChunk]:
    """A batch's provider chunks in order (``keel batch status``)."""
    result = await session.execute(
        select(ProviderBatchChunk)
        .where(ProviderBatchChunk.batch_id == batch_id)
        .order_by(ProviderBatchChunk.round, ProviderBatchChunk.seq)
    )
    return list(result.scalars())
