"""A batch's contracts: its options, one item's request and outcome, and the inputs and results of
the batch activities."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.approvals import DefaultAction, GateRequest
from contracts.llm import CallClass, ChatMessage, FallbackPolicy, LlmParameters, LlmRequest, Usage


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
    # Stored only when set (rows are dumped without None), so older rows read the same.
    json_schema_strict: bool | None = None
    json_schema_description: str | None = None
    metadata: dict[str, Any] | None = None

    def parameters(self) -> LlmParameters:
        defaults = LlmParameters()
        return LlmParameters(
            max_tokens=self.max_tokens or defaults.max_tokens,
            temperature=self.temperature,
            json_schema=self.json_schema,
            json_schema_name=self.json_schema_name,
            json_schema_strict=self.json_schema_strict,
            json_schema_description=self.json_schema_description,
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


def item_llm_request(options: BatchOptions, item: ItemRequest) -> LlmRequest:
    """The LLM request of one item: the batch's --route / --model override the line's model."""
    models = [options.model] if options.model else None
    if models is None and options.route is None and item.model:
        models = [item.model]
    return LlmRequest(
        messages=item.messages,
        route=options.route,
        models=models,
        parameters=item.parameters(),
        call_class=CallClass.BATCH,
        # A batch item that cannot be answered is a failed item, never a canned answer.
        fallback_policy=FallbackPolicy.FAIL,
        tenant=options.tenant,
        purpose="batch",
    )


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
    """Items a claim took and will not answer go back in line.

    Only items still ``running`` under ``claim_token`` are released: an item another claim has
    taken since (a later page, a later run) is not this claim's to hand back. ``custom_ids``
    narrows the release to those items of the claim; empty, every item still running under it
    goes back (a page that ended without reporting). Without a token (a ``BatchWorkflow`` run
    from before pages, whose buffer mixes several claims) the ids are released only if the
    calling run claimed them (its claim tokens start with its run id)."""

    batch_id: str
    custom_ids: list[str] = Field(default_factory=list)
    claim_token: str | None = None


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


# --- Pages (activities/batch/pages.py, workflows/batch.py) ---------------------------------------


class PageInput(BaseModel):
    """One page: a slice of a batch's items answered inside one activity, under the batch's cap.

    The page claims its items itself (token ``page_token``) until it has ``quota`` of them or
    ``seconds`` have passed, keeping ``slots`` calls in flight; what it did lives in
    ``batch_items`` and the ledger, so a retried page resumes where the last attempt stopped."""

    batch_id: str
    page_token: str
    options: BatchOptions
    quota: int = Field(ge=1)
    slots: int = Field(ge=1)
    seconds: float = Field(gt=0)
    # The batch's own budget and what the ledger says it spent when the page was scheduled.
    budget_usd: Decimal | None = None
    spent_usd: Decimal = Decimal(0)
    # Counts before this page: the failure rate and the cost per item are judged over the batch.
    counts: BatchCounts = Field(default_factory=BatchCounts)
    # Items finished so far whose cost is in ``spent_usd`` (the budget's cost-per-item estimate).
    priced_items: int = 0


class SlowItem(BaseModel):
    """An item the page could not answer on its model (retries spent, a non-retryable error, an
    open breaker) while the route has more models: the workflow runs it down the rest of the
    chain, one activity per call, with fallback audit rows."""

    item: ClaimedItem
    # What the page tried: (model, error class), in order.
    failed_models: list[tuple[str, str]]
    # The chain's models after the ones tried (the workflow plans the call on these).
    remaining_models: list[str]
    route: str | None = None


class PageStop(StrEnum):
    """Why a page ended before its quota and time were used."""

    NONE = "none"
    # Nothing pending is left to claim.
    EXHAUSTED = "exhausted"
    BUDGET = "budget"
    FAILURE_RATE = "failure_rate"
    TENANT_BUDGET = "tenant_budget"
    # The workflow cancelled the page (pause, cancel, a gate): in-flight calls were finished.
    CANCELLED = "cancelled"
    # Slow-path items hold every slot: the workflow must run them before more can start.
    SLOTS_HELD = "slots_held"


class PageResult(BaseModel):
    # Items the page claimed (all its attempts): the run keeps history room for each.
    claimed: int = 0
    answered: int
    failed: int
    counts: BatchCounts
    spent_usd: Decimal
    priced_items: int
    slow: list[SlowItem] = Field(default_factory=list)
    stop: PageStop = PageStop.NONE
    # The tenant budget's refusal (``keel budget set``); the refused items are pending again.
    tenant_refusal: str | None = None
    failure_reason: str | None = None


class PageProgress(BaseModel):
    """A page's heartbeat details: how far it got (a retried attempt resumes from Postgres, these
    say what the last attempt had done when it stopped)."""

    claimed: int = 0
    answered: int = 0
    failed: int = 0
    in_flight: int = 0


# --- The batch workflows' input, result, queries and controls ------------------------------------
# (workflows/batch.py and the frozen workflows/batch_v1.py share them; services/batches.py steers
# both by workflow id with the same update and query names.)


class CarriedState(BaseModel):
    """What a continued run of the per-item BatchWorkflow (batch_v1) inherits."""

    budget_usd: Decimal | None
    runs: int
    gates_opened: int


class BatchRunState(BaseModel):
    """Everything a paged batch's workflow knows, in one model carried across continue-as-new
    (the items themselves are in Postgres; counts are re-read at each run's start)."""

    budget_usd: Decimal | None = None
    runs: int = 0
    gates_opened: int = 0
    pages: int = 0
    # Items this run's pages took (reset by continue-as-new): see batch_pacing.history_room.
    items_taken: int = 0
    counts: BatchCounts = Field(default_factory=BatchCounts)
    spent_usd: Decimal = Decimal(0)
    # Finished items whose cost is in ``spent_usd``: the budget's cost-per-item estimate.
    priced_items: int = 0
    status: str = BatchStatus.RUNNING.value
    reason: str | None = None
    paused_by: str | None = None
    # Set once: the batch will finish with this status (cancelled / aborted) and reason.
    stop_status: str | None = None
    stop_reason: str | None = None
    # Why the tenant's budget (not the batch's) refused a call, while that holds the batch.
    tenant_refusal: str | None = None
    # Nothing pending was left when the last page looked.
    exhausted: bool = False


class BatchInput(BaseModel):
    # None for a scheduled run: the id is derived from the workflow id the schedule gives it.
    batch_id: str | None = None
    options: BatchOptions = Field(default_factory=BatchOptions)
    # A scheduled run loads this file (on the worker) before it starts.
    source_path: str | None = None
    schedule_id: str | None = None
    # A new execution after the batch finished: its failed items run again.
    retry_failed: bool = False
    # Continue-as-new before a run's history reaches this many events.
    history_event_limit: int = Field(default=9000, ge=200, le=50_000)
    # A continued run of batch_v1's BatchWorkflow.
    carried: CarriedState | None = None
    # A continued run of the paged workflow.
    state: BatchRunState | None = None


class BatchResult(BaseModel):
    batch_id: str
    status: str
    reason: str | None
    total: int
    ok: int
    failed: int
    skipped: int
    spent_usd: Decimal
    runs: int


class BatchProgress(BaseModel):
    batch_id: str
    status: str
    reason: str | None
    in_flight: int
    total: int
    ok: int
    failed: int
    skipped: int
    spent_usd: Decimal
    budget_usd: Decimal | None
    pending_gate: str | None
    runs: int
    history_length: int


class ControlRequest(BaseModel):
    by: str = Field(min_length=1, max_length=200)
    reason: str | None = None


class ControlAck(BaseModel):
    status: str
    in_flight: int
    message: str


class RetryFailedAck(BaseModel):
    reset: int
    message: str


def tenant_budget_gate(
    batch_id: str, options: BatchOptions, number: int, refusal: str
) -> GateRequest:
    """The gate a batch (live or provider) opens when its tenant's budget refuses a call:
    ``tenant-budget-N``; a person raises the budget and approves, or rejects to stop."""
    tenant = options.tenant
    return GateRequest(
        gate=f"tenant-budget-{number}",
        draft="resume",
        reason=(
            f"tenant budget: {refusal}. Raise it (keel budget set {tenant} --usd AMOUNT "
            "--period day|month), then approve to go on; reject to stop the batch"
        ),
        role=options.budget_role,
        tenant=tenant,
        subject=f"batch {batch_id}: tenant {tenant} is out of budget",
        deadline=options.budget_gate_deadline,
        default_action=DefaultAction.REJECT,
    )
