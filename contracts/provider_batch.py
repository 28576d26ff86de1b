"""Provider batch mode's contracts: a batch run through OpenAI's Batch API and Anthropic's Message
Batches (half price, results within 24 h) instead of live calls.

A *chunk* is one provider batch: one provider, one model, at most that provider's limits. Its
row in ``provider_batch_chunks`` holds the provider's batch id and which items it carries; the
workflow carries only chunk ids and counters.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field

from contracts.batch import BatchOptions


class ChunkStatus(StrEnum):
    """``provider_batch_chunks.status``: keel's side of a chunk."""

    PLANNED = "planned"
    """Items assigned, nothing sent to the provider yet (held by pause, a budget gate)."""
    SUBMITTING = "submitting"
    """keel began to submit it: the provider may or may not have it (looked up on retry)."""
    SUBMITTED = "submitted"
    """The provider has it; its id is stored."""
    ENDED = "ended"
    """Its results are in ``batch_items`` (what failed went back to pending)."""
    WITHDRAWN = "withdrawn"
    """Never submitted (cancel, deadline): its items went back to pending or were skipped."""


class ProviderLimits(BaseModel):
    """What one provider batch may hold (the providers' documented limits)."""

    max_requests: int = Field(ge=1)
    max_bytes: int = Field(ge=1)


# OpenAI: 50,000 requests and 200 MB per input file, one model per file. Anthropic: 100,000
# requests or 256 MB per batch. keel keeps a margin under the byte limits for the envelope.
PROVIDER_LIMITS: dict[str, ProviderLimits] = {
    "openai": ProviderLimits(max_requests=50_000, max_bytes=190 * 1024 * 1024),
    "anthropic": ProviderLimits(max_requests=100_000, max_bytes=240 * 1024 * 1024),
}


class ProviderBatchSettings(BaseModel):
    """How a provider batch waits: polls with backoff, and the deadline for live fallback."""

    poll_initial_seconds: float = Field(default=30, gt=0)
    poll_max_seconds: float = Field(default=600, gt=0)
    # Rounds of provider batches for lines the provider failed or expired, before they go live.
    max_rounds: int = Field(default=3, ge=1, le=20)
    # Test hook: split chunks smaller than the providers' limits.
    max_requests_per_chunk: int | None = Field(default=None, ge=1)


class ProviderBatchInput(BaseModel):
    batch_id: str
    options: BatchOptions
    settings: ProviderBatchSettings = Field(default_factory=ProviderBatchSettings)
    # After this, what the provider has not finished is cancelled there and run live.
    deadline: datetime | None = None


class ChunkRef(BaseModel):
    chunk_id: str
    provider: str
    model: str
    items: int
    worst_case_usd: Decimal | None


class PlanChunksInput(BaseModel):
    batch_id: str
    options: BatchOptions
    round: int = Field(ge=0)
    max_requests_per_chunk: int | None = None


class PlanChunksResult(BaseModel):
    chunks: list[ChunkRef]


class ChunkInput(BaseModel):
    chunk_id: str


class ChunkState(BaseModel):
    chunk_id: str
    status: ChunkStatus
    provider_batch_id: str | None = None
    provider_status: str | None = None
    # The provider ended it (completed, failed, expired, cancelled): results can be collected.
    provider_ended: bool = False
    done: int = 0
    total: int = 0
    # Not submitted: the tenant's budget (keel budget set) cannot cover the chunk's worst case.
    # The chunk stays planned; the workflow asks at a tenant budget gate, then submits again.
    budget_refusal: str | None = None


class CollectResult(BaseModel):
    chunk_id: str
    succeeded: int
    failed: int
    # Failed by the provider (server error, expired, cancelled): pending again, for another round
    # or the live path.
    returned: int
    cost_usd: Decimal
