"""Every activity a workflow calls: the name it is registered under, the input it takes and the
output it returns.

Workflows call activities through these references (``workflows/activity_calls.py``), never by
importing the activity functions: importing them would pull SQLAlchemy, httpx and the provider
SDKs into workflow code. The names are the compatibility surface with running executions and
recorded histories (tests/replay): never rename one. tests/foundation/test_activity_refs.py checks
that each reference matches the registered activity's name and type hints.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from contracts.approvals import GateEvent, OpenGateInput, RefreshInput, Roster, RosterRequest
from contracts.audit import AuditEventInput
from contracts.batch import (
    BatchCounts,
    BeginRunInput,
    BeginRunResult,
    ClaimedItem,
    ClaimInput,
    LoadFileInput,
    LoadSummary,
    MeterInput,
    PageInput,
    PageResult,
    RecordOutcomesInput,
    RecordOutcomesResult,
    ReleaseInput,
    ResetFailedInput,
    StatusInput,
)
from contracts.jobs import CallbackDelivery, CallbackOutcome, JobRecord
from contracts.llm import AttemptInput, LlmAnswer, LlmRequest, RoutePlan
from contracts.provider_batch import (
    ChunkInput,
    ChunkState,
    CollectResult,
    PlanChunksInput,
    PlanChunksResult,
)
from contracts.publishing import PublishInput, WebhookDelivery, WebhookInput
from contracts.sessions import (
    FailTurnInput,
    FinishTurnInput,
    PrepareTurnInput,
    StoredAnswer,
    StoreSummaryInput,
    TurnContext,
)
from contracts.tools import ToolInput, ToolOutput

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


@dataclass(frozen=True)
class ActivityRef(Generic[InputT, OutputT]):
    """One activity as a workflow sees it. ``output`` is what the result is decoded into (the
    activity's return annotation; ``type(None)`` for activities that return nothing)."""

    name: str
    input: type[InputT]
    output: Any  # type[OutputT], or a generic alias such as list[ClaimedItem]


NONE = type(None)

# --- The example tool agent's tools (activities/example_tools.py, workflows/tool_agent.py) ------
LOOK_UP_WEATHER = ActivityRef[ToolInput, ToolOutput]("look_up_weather", ToolInput, ToolOutput)
SEND_EMAIL = ActivityRef[ToolInput, ToolOutput]("send_email", ToolInput, ToolOutput)

# --- LLM calls (activities/llm/activities.py) and the audit trail (activities/audit_trail.py)
PLAN_LLM_ROUTE = ActivityRef[LlmRequest, RoutePlan]("plan_llm_route", LlmRequest, RoutePlan)
COMPLETE_CHAT = ActivityRef[AttemptInput, LlmAnswer]("complete_chat", AttemptInput, LlmAnswer)
RECORD_AUDIT_EVENT = ActivityRef[AuditEventInput, None]("record_audit_event", AuditEventInput, NONE)

# --- Chat sessions (activities/sessions.py)
PREPARE_TURN = ActivityRef[PrepareTurnInput, TurnContext](
    "prepare_turn", PrepareTurnInput, TurnContext
)
STORE_SUMMARY = ActivityRef[StoreSummaryInput, None]("store_summary", StoreSummaryInput, NONE)
FINISH_TURN = ActivityRef[FinishTurnInput, StoredAnswer](
    "finish_turn", FinishTurnInput, StoredAnswer
)
FAIL_TURN = ActivityRef[FailTurnInput, None]("fail_turn", FailTurnInput, NONE)

# --- Async jobs (activities/jobs.py)
RECORD_JOB = ActivityRef[JobRecord, None]("record_job", JobRecord, NONE)
DELIVER_JOB_CALLBACK = ActivityRef[CallbackDelivery, CallbackOutcome](
    "deliver_job_callback", CallbackDelivery, CallbackOutcome
)

# --- Approval gates (activities/approvals.py)
LOAD_REVIEWER_ROSTER = ActivityRef[RosterRequest, Roster](
    "load_reviewer_roster", RosterRequest, Roster
)
OPEN_APPROVAL_GATE = ActivityRef[OpenGateInput, None]("open_approval_gate", OpenGateInput, NONE)
RECORD_GATE_EVENT = ActivityRef[GateEvent, None]("record_gate_event", GateEvent, NONE)
REFRESH_GATE = ActivityRef[RefreshInput, Roster]("refresh_gate", RefreshInput, Roster)

# --- Document review (activities/publishing.py)
PUBLISH_DOCUMENT = ActivityRef[PublishInput, int]("publish_document", PublishInput, int)
DELIVER_REVIEW_WEBHOOK = ActivityRef[WebhookInput, WebhookDelivery](
    "deliver_review_webhook", WebhookInput, WebhookDelivery
)

# --- Batches (activities/batch/items.py)
LOAD_BATCH_FILE = ActivityRef[LoadFileInput, LoadSummary](
    "load_batch_file", LoadFileInput, LoadSummary
)
BEGIN_BATCH_RUN = ActivityRef[BeginRunInput, BeginRunResult](
    "begin_batch_run", BeginRunInput, BeginRunResult
)
RESET_FAILED_BATCH_ITEMS = ActivityRef[ResetFailedInput, int](
    "reset_failed_batch_items", ResetFailedInput, int
)
CLAIM_BATCH_ITEMS = ActivityRef[ClaimInput, list[ClaimedItem]](
    "claim_batch_items", ClaimInput, list[ClaimedItem]
)
RELEASE_BATCH_ITEMS = ActivityRef[ReleaseInput, int]("release_batch_items", ReleaseInput, int)
RECORD_BATCH_ITEM_OUTCOMES = ActivityRef[RecordOutcomesInput, RecordOutcomesResult](
    "record_batch_item_outcomes", RecordOutcomesInput, RecordOutcomesResult
)
METER_BATCH_SPEND = ActivityRef[MeterInput, Decimal]("meter_batch_spend", MeterInput, Decimal)
SET_BATCH_STATUS = ActivityRef[StatusInput, BatchCounts](
    "set_batch_status", StatusInput, BatchCounts
)
# --- Batch pages (activities/batch/pages.py)
RUN_BATCH_PAGE = ActivityRef[PageInput, PageResult]("run_batch_page", PageInput, PageResult)

# --- Provider batches (activities/batch/provider_batches.py)
PLAN_PROVIDER_CHUNKS = ActivityRef[PlanChunksInput, PlanChunksResult](
    "plan_provider_chunks", PlanChunksInput, PlanChunksResult
)
SUBMIT_PROVIDER_CHUNK = ActivityRef[ChunkInput, ChunkState](
    "submit_provider_chunk", ChunkInput, ChunkState
)
POLL_PROVIDER_CHUNK = ActivityRef[ChunkInput, ChunkState](
    "poll_provider_chunk", ChunkInput, ChunkState
)
COLLECT_PROVIDER_CHUNK = ActivityRef[ChunkInput, CollectResult](
    "collect_provider_chunk", ChunkInput, CollectResult
)
CANCEL_PROVIDER_CHUNK = ActivityRef[ChunkInput, ChunkState](
    "cancel_provider_chunk", ChunkInput, ChunkState
)

ALL: tuple[ActivityRef[Any, Any], ...] = (
    PLAN_LLM_ROUTE,
    COMPLETE_CHAT,
    RECORD_AUDIT_EVENT,
    PREPARE_TURN,
    STORE_SUMMARY,
    FINISH_TURN,
    FAIL_TURN,
    RECORD_JOB,
    DELIVER_JOB_CALLBACK,
    LOAD_REVIEWER_ROSTER,
    OPEN_APPROVAL_GATE,
    RECORD_GATE_EVENT,
    REFRESH_GATE,
    PUBLISH_DOCUMENT,
    DELIVER_REVIEW_WEBHOOK,
    LOAD_BATCH_FILE,
    BEGIN_BATCH_RUN,
    RESET_FAILED_BATCH_ITEMS,
    CLAIM_BATCH_ITEMS,
    RELEASE_BATCH_ITEMS,
    RECORD_BATCH_ITEM_OUTCOMES,
    METER_BATCH_SPEND,
    SET_BATCH_STATUS,
    RUN_BATCH_PAGE,
    LOOK_UP_WEATHER,
    SEND_EMAIL,
    PLAN_PROVIDER_CHUNKS,
    SUBMIT_PROVIDER_CHUNK,
    POLL_PROVIDER_CHUNK,
    COLLECT_PROVIDER_CHUNK,
    CANCEL_PROVIDER_CHUNK,
)
