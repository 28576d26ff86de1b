"""A batch's contracts: its options, one item's request and outcome, and the inputs and results of
the batch activities."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.llm import ChatMessage, LlmParameters, Usage


class ItemStatus(StrEnum):
    """``batch_items.status``: where one item is."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class BatchStatus(StrEnum):
    """``batches.status``, which the batch workflow keeps as its own status too."""

    LOADING = "loading"
    REFUSED = "refused"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"


class ItemRequest(BaseModel):
    """One item's request in keel's normalized form (``batch_items.request``)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    json_schema: dict[str, Any] | None = None
    json_schema_name: str = "answer"
    metadata: dict[str, Any] | None = None

    def parameters(self) -> LlmParameters:
        defaults = LlmParameters()
        return LlmParameters(
            max_tokens=self.max_tokens or defaults.max_tokens,
            temperature=self.temperature,
            json_schema=self.json_schema,
            json_schema_name=self.json_schema_name,
        )


def batch_workflow_id(batch_id: str) -> str:
    return f"batch-{batch_id}"


class BatchOptions(BaseModel):
    """How a batch runs; set at start, kept in the ``batches`` row and the workflow's input."""

    tenant: str = "default"
    concurrency: int = Field(default=50, ge=1, le=2000)
    # --route / --model override the models named in the file; neither: each line's model,
    # else the default route.
    route: str | None = None
    model: str | None = None
    budget_usd: Decimal | None = Field(default=None, gt=0)
    max_failure_rate: float | None = Field(default=None, ge=0, le=1)
    # Refuse a file with any malformed line (default: they become failed items).
    strict: bool = False
    # Who may raise the budget (or stop the batch) at its gate, and how long the gate waits
    # before its default action: stop.
    budget_role: str = "batch-owner"
    budget_gate_deadline: timedelta = timedelta(hours=72)


class LoadSummary(BaseModel):
    total: int
    invalid: int
    created: bool


class LoadFileInput(BaseModel):
    batch_id: str
    path: str
    options: BatchOptions
    schedule_id: str | None = None


class BatchCounts(BaseModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    # Failed because the line was malformed (never sent to a model).
    invalid: int = 0

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.skipped


class BeginRunInput(BaseModel):
    batch_id: str
    workflow_id: str
    # A new execution started by `keel batch retry-failed` after the batch had finished.
    retry_failed: bool = False


class BeginRunResult(BaseModel):
    counts: BatchCounts
    spent_usd: Decimal
    retried: int = 0
    released: int = 0


class ResetFailedInput(BaseModel):
    batch_id: str


class ClaimInput(BaseModel):
    batch_id: str
    claim_token: str
    limit: int = Field(ge=1)
    # Keep one claim's requests well under Temporal's 2 MB payload limit.
    max_bytes: int = 1_000_000


class ClaimedItem(BaseModel):
    custom_id: str
    line_no: int
    request: ItemRequest


class ReleaseInput(BaseModel):
    batch_id: str
    custom_ids: list[str]


class ItemOutcome(BaseModel):
    """What happened to one item: its answer, or why it failed."""

    custom_id: str
    status: Literal["ok", "failed"]
    text: str | None = None
    model: str | None = None
    provider: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost_usd: Decimal | None = None
    attempts: int = 0
    failed_models: list[tuple[str, str]] = Field(default_factory=list)
    error_class: str | None = None
    error_message: str | None = None

    def response(self) -> dict[str, Any] | None:
        if self.status != "ok":
            return None
        return {
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "finish_reason": self.finish_reason,
            "usage": (self.usage or Usage()).model_dump(),
            "attempts": self.attempts,
            "failed_models": [list(pair) for pair in self.failed_models],
        }


class RecordOutcomesInput(BaseModel):
    batch_id: str
    outcomes: list[ItemOutcome]
    # Also read the batch's spend from the ledger (when it has a budget).
    meter_workflow_id: str | None = None


class RecordOutcomesResult(BaseModel):
    recorded: int
    spent_usd: Decimal | None = None


class MeterInput(BaseModel):
    workflow_id: str


class StatusInput(BaseModel):
    batch_id: str
    status: str
    reason: str | None = None
    # Finish the batch: pending items become skipped (cancel, abort, budget stop).
    skip_pending: bool = False
    skip_reason: str | None = None
    final: bool = False
    budget_usd: Decimal | None = None
