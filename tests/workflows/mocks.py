"""Stand-ins for keel's activities, for workflow tests that need no Postgres and no simulator.

Each mock is registered under the real activity's name and takes and returns the real pydantic
models, so the workflow under test schedules exactly what it schedules in production (local
activities resolve by name against the same registry) and a payload that no longer fits the
contract fails the test. What the mocks hold instead of Postgres is plain Python state, shared
through one :class:`KeelMocks` per test; every call is kept in order in ``KeelMocks.calls``.

Behaviour is set on the mock before (or while) the workflow runs: which models fail and how, what
the route planner says about budgets, which reviewers hold which roles, what a batch holds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts import activities as activity_refs
from contracts.approvals import (
    GateEvent,
    OpenGateInput,
    RefreshInput,
    Roster,
    RosterRequest,
)
from contracts.audit import AuditEventInput
from contracts.batch import (
    BatchCounts,
    BeginRunInput,
    BeginRunResult,
    ClaimedItem,
    ClaimInput,
    ItemOutcome,
    ItemRequest,
    LoadFileInput,
    LoadSummary,
    MeterInput,
    PageInput,
    PageResult,
    PageStop,
    RecordOutcomesInput,
    RecordOutcomesResult,
    ReleaseInput,
    ResetFailedInput,
    SlowItem,
    StatusInput,
    item_llm_request,
)
from contracts.batch_pacing import budget_allows_one_more, failure_rate_crossed
from contracts.jobs import (
    CallbackDelivery,
    CallbackOutcome,
    JobRecord,
)
from contracts.llm import (
    AttemptInput,
    BudgetState,
    CallPolicy,
    ChatMessage,
    ErrorClass,
    FallbackPolicy,
    LlmAnswer,
    LlmRequest,
    ModelCandidate,
    RoutePlan,
    Usage,
    answered_audit,
    provider_for_model,
)
from contracts.provider_batch import (
    ChunkInput,
    ChunkRef,
    ChunkState,
    ChunkStatus,
    CollectResult,
    PlanChunksInput,
    PlanChunksResult,
)
from contracts.publishing import (
    PublishInput,
    WebhookDelivery,
    WebhookInput,
)
from contracts.sessions import (
    FailTurnInput,
    FinishTurnInput,
    FoldPlan,
    PrepareTurnInput,
    StoredAnswer,
    StoreSummaryInput,
    TurnContext,
    turn_answer,
    turn_request,
)
from contracts.tools import ToolInput, ToolOutput
from contracts.traffic import BudgetPolicy

# The registered activity names the mocks stand in for.
COMPLETE_CHAT = activity_refs.COMPLETE_CHAT.name
DELIVER_CALLBACK = activity_refs.DELIVER_JOB_CALLBACK.name
FAIL_TURN = activity_refs.FAIL_TURN.name
FINISH_TURN = activity_refs.FINISH_TURN.name
PLAN_LLM_ROUTE = activity_refs.PLAN_LLM_ROUTE.name
PREPARE_TURN = activity_refs.PREPARE_TURN.name
RECORD_AUDIT_EVENT = activity_refs.RECORD_AUDIT_EVENT.name
RECORD_JOB = activity_refs.RECORD_JOB.name
STORE_SUMMARY = activity_refs.STORE_SUMMARY.name

# Short enough that a retried call costs no noticeable wall time even where time is not skipped
# (an Update waits in real time); long enough that nothing times out on a loaded machine.
TEST_CALL_POLICY = CallPolicy(
    start_to_close_seconds=60,
    heartbeat_seconds=60,
    schedule_to_close_seconds=300,
    maximum_attempts=3,
    initial_interval_seconds=0.05,
    backoff_coefficient=1.0,
    maximum_interval_seconds=0.05,
)
ANSWER_COST = Decimal("0.001")


@dataclass
class Call:
    name: str
    input: Any
    attempt: int


@dataclass
class CallLog:
    """Every mocked activity call, in the order the worker ran them."""

    calls: list[Call] = field(default_factory=list)

    def add(self, name: str, value: Any) -> None:
        self.calls.append(Call(name, value, activity.info().attempt))

    def inputs(self, name: str) -> list[Any]:
        return [call.input for call in self.calls if call.name == name]


def llm_failure(error_class: ErrorClass, model: str) -> ApplicationError:
    """What the real ``complete_chat`` raises for a classified failure (same type, same details,
    non-retryable when the class is)."""
    return ApplicationError(
        f"{model}: {error_class.value}: mocked failure",
        {"error_class": error_class.value, "status_code": None},
        type=error_class.error_type,
        non_retryable=not error_class.retryable,
    )


def last_user_message(request: LlmRequest) -> str:
    return next((m.content for m in reversed(request.messages) if m.role == "user"), "")


class LlmMocks:
    """``plan_llm_route`` (local activity) and ``complete_chat``.

    The planner turns ``routes`` into candidates; ``failures[model]`` lists the error classes the
    model's next calls raise, in order, before it answers (``fail_when`` decides by the call);
    ``answer`` decides the text."""

    def __init__(self, calls: CallLog, task_queue: str) -> None:
        self._calls = calls
        self.task_queue = task_queue
        self.routes: dict[str, list[str]] = {
            "default": ["model-a", "model-b"],
            "cheap": ["cheap-model"],
            "quality": ["quality-model", "cheap-model"],
        }
        self.downgrade_to: dict[str, str] = {}
        self.breaker_open: set[str] = set()
        self.budget_policy = BudgetPolicy.REFUSE
        # The next N plans say the budget cannot cover the call (the planner's own check).
        self.plans_refused_for_budget = 0
        # Models whose calls the budget refuses (complete_chat's check, the one that holds).
        self.calls_refused_for_budget: set[str] = set()
        self.blocking_budget = BudgetState(
            tenant="default", period="day", limit_usd=Decimal("1.00"), spent_usd=Decimal("1.00")
        )
        self.pause_poll_seconds = 60.0
        self.pause_poll_max_seconds = 240.0
        self.pause_max_seconds = 3600.0
        self.failures: dict[str, list[ErrorClass]] = {}
        # Asked after ``failures``: the error class a call fails with, if it fails.
        self.fail_when: Callable[[AttemptInput], ErrorClass | None] = lambda call: None
        self.answer: Callable[[AttemptInput], str] = lambda call: (
            f"{call.model} answers: {last_user_message(call.request)}"
        )
        self.cost = ANSWER_COST
        # What each workflow's answered calls cost (the batch meters its spend from this).
        self.spent: dict[str, Decimal] = {}
        # Set: calls wait for it before answering (a test holds items in flight with it).
        self.hold: asyncio.Event | None = None
        self.holding = 0
        # Where a call's ``AnswerRecords`` go (set by KeelMocks).
        self.audit: AuditMocks | None = None
        self.sessions: SessionMocks | None = None

    def activities(self) -> list[Callable[..., Any]]:
        return [self.plan_llm_route, self.complete_chat]

    def attempts(self) -> list[AttemptInput]:
        return list(self._calls.inputs(COMPLETE_CHAT))

    def models_called(self) -> list[str]:
        return [call.model for call in self.attempts()]

    @activity.defn(name=PLAN_LLM_ROUTE)
    async def plan_llm_route(self, request: LlmRequest) -> RoutePlan:
        self._calls.add(PLAN_LLM_ROUTE, request)
        return self.plan(request)

    def plan(self, request: LlmRequest) -> RoutePlan:
        """What the planner says (also for ``prepare_turn``, which plans a turn's call)."""
        route = None if request.models else (request.route or "default")
        models = request.models or self.routes[route or "default"]
        refused = self.plans_refused_for_budget > 0
        if refused:
            self.plans_refused_for_budget -= 1
        refusal = f"{self.blocking_budget.describe()}: mocked refusal"
        return RoutePlan(
            route=route,
            candidates=[
                ModelCandidate(
                    model=model,
                    provider=provider_for_model(model)[0],
                    breaker_open=model in self.breaker_open,
                )
                for model in models
            ],
            policy=TEST_CALL_POLICY,
            task_queue=self.task_queue,
            fallback_policy=request.fallback_policy or FallbackPolicy.FAIL,
            fallback_response=request.fallback_response,
            downgrade_route=self.downgrade_to.get(route) if route else None,
            budget_policy=request.budget_policy or self.budget_policy,
            budget_refusal=refusal if refused else None,
            budget_blocking=self.blocking_budget if refused else None,
            pause_poll_seconds=self.pause_poll_seconds,
            pause_poll_max_seconds=self.pause_poll_max_seconds,
            pause_max_seconds=self.pause_max_seconds,
        )

    @activity.defn(name=COMPLETE_CHAT)
    async def complete_chat(self, call: AttemptInput) -> LlmAnswer:
        self._calls.add(COMPLETE_CHAT, call)
        if self.hold is not None:
            self.holding += 1
            try:
                await self.hold.wait()
            finally:
                self.holding -= 1
        if call.model in self.calls_refused_for_budget:
            raise ApplicationError(
                f"{self.blocking_budget.describe()}: mocked refusal",
                self.blocking_budget.model_dump(mode="json"),
                type=ErrorClass.BUDGET_EXCEEDED.error_type,
                non_retryable=True,
            )
        pending = self.failures.get(call.model)
        if pending:
            raise llm_failure(pending.pop(0), call.model)
        failure = self.fail_when(call)
        if failure is not None:
            raise llm_failure(failure, call.model)
        workflow_id = activity.info().workflow_id or ""
        self.spent[workflow_id] = self.spent.get(workflow_id, Decimal(0)) + self.cost
        answer = LlmAnswer(
            text=self.answer(call),
            model=call.model,
            provider=call.provider,
            usage=Usage(input_tokens=10, output_tokens=5),
            cost_usd=self.cost,
            finish_reason="stop",
            attempts=activity.info().attempt,
        )
        return self._write_records(call, answer)

    def _write_records(self, call: AttemptInput, answer: LlmAnswer) -> LlmAnswer:
        """What the real call writes with its answer (activities/llm/answer_records.py), into
        the audit and session mocks (set by :class:`KeelMocks`)."""
        records = call.records
        if records is None:
            return answer
        if records.audit is not None and self.audit is not None:
            self.audit.record(answered_audit(records.audit, answer))
        stored = None
        if records.turn is not None and self.sessions is not None:
            stored = self.sessions.store(turn_answer(records.turn, answer))
        return answer.model_copy(update={"records_written": True, "stored": stored})


class AuditMocks:
    """``record_audit_event`` (a local activity of every workflow)."""

    def __init__(self, calls: CallLog) -> None:
        self._calls = calls

    def activities(self) -> list[Callable[..., Any]]:
        return [self.record_audit_event]

    def events(self, workflow_id: str | None = None) -> list[AuditEventInput]:
        events: list[AuditEventInput] = self._calls.inputs(RECORD_AUDIT_EVENT)
        return [e for e in events if workflow_id is None or e.workflow_id == workflow_id]

    def types(self, workflow_id: str | None = None) -> list[str]:
        return [event.event_type for event in self.events(workflow_id)]

    def of_type(self, event_type: str) -> list[AuditEventInput]:
        return [event for event in self.events() if event.event_type == event_type]

    @activity.defn(name=RECORD_AUDIT_EVENT)
    async def record_audit_event(self, event: AuditEventInput) -> None:
        self.record(event)

    def record(self, event: AuditEventInput) -> None:
        """An audit row, from the local activity or written by an LLM call with its answer."""
        self._calls.add(RECORD_AUDIT_EVENT, event)


class ApprovalMocks:
    """The approval gate's roster and records; ``reviewers`` is the reviewers table."""

    def __init__(self, calls: CallLog) -> None:
        self._calls = calls
        self.reviewers: dict[str, list[str]] = {
            "alice": ["editor"],
            "bob": ["editor"],
            "maria": ["managing-editor"],
            "owner": ["batch-owner"],
        }

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.load_reviewer_roster,
            self.open_approval_gate,
            self.record_gate_event,
            self.refresh_gate,
        ]

    def roster(self, roles: list[str]) -> Roster:
        return Roster(
            reviewers={
                name: [role for role in held if role in roles]
                for name, held in self.reviewers.items()
                if any(role in roles for role in held)
            }
        )

    def gate_events(self) -> list[GateEvent]:
        """Every event of every gate, opening ones included, in the order they were written."""
        events: list[GateEvent] = []
        for call in self._calls.calls:
            if call.name in ("open_approval_gate", "refresh_gate"):
                events.append(call.input.event)
            elif call.name == "record_gate_event":
                events.append(call.input)
        return events

    def gate_event_types(self) -> list[str]:
        return [event.event_type for event in self.gate_events()]

    @activity.defn(name="load_reviewer_roster")
    async def load_reviewer_roster(self, request: RosterRequest) -> Roster:
        self._calls.add("load_reviewer_roster", request)
        return self.roster(request.roles)

    @activity.defn(name="open_approval_gate")
    async def open_approval_gate(self, request: OpenGateInput) -> None:
        self._calls.add("open_approval_gate", request)

    @activity.defn(name="record_gate_event")
    async def record_gate_event(self, event: GateEvent) -> None:
        self._calls.add("record_gate_event", event)

    @activity.defn(name="refresh_gate")
    async def refresh_gate(self, request: RefreshInput) -> Roster:
        self._calls.add("refresh_gate", request)
        return self.roster(request.roles)


@dataclass
class FakeItem:
    custom_id: str
    line_no: int
    request: ItemRequest
    status: str = "pending"
    claim_token: str | None = None
    outcomes: list[Any] = field(default_factory=list)


class BatchMocks:
    """The batch activities over an in-memory ``batch_items`` table, with the real ones'
    idempotency rules: a claim token returns the items it took the first time; only a running
    item takes an outcome; a new run puts claimed-but-unstarted items back."""

    def __init__(self, calls: CallLog, llm: LlmMocks) -> None:
        self._calls = calls
        self._llm = llm
        self.items: dict[str, FakeItem] = {}
        # Set: a page waits for it after claiming its items (a test pauses or cancels it then).
        self.page_hold: asyncio.Event | None = None

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.load_batch_file,
            self.begin_batch_run,
            self.claim_batch_items,
            self.release_batch_items,
            self.record_batch_item_outcomes,
            self.reset_failed_batch_items,
            self.meter_batch_spend,
            self.set_batch_status,
            self.run_batch_page,
        ]

    def load(self, *prompts: str) -> None:
        for prompt in prompts:
            line_no = len(self.items) + 1
            custom_id = f"item-{line_no}"
            self.items[custom_id] = FakeItem(
                custom_id,
                line_no,
                ItemRequest(messages=[ChatMessage(role="user", content=prompt)]),
            )

    def counts(self) -> BatchCounts:
        counts = BatchCounts()
        for item in self.items.values():
            setattr(counts, item.status, getattr(counts, item.status) + 1)
            counts.total += 1
        return counts

    def statuses(self) -> dict[str, str]:
        return {item.custom_id: item.status for item in self.items.values()}

    @activity.defn(name="load_batch_file")
    async def load_batch_file(self, params: LoadFileInput) -> LoadSummary:
        self._calls.add("load_batch_file", params)
        return LoadSummary(total=len(self.items), invalid=0, created=True)

    @activity.defn(name="begin_batch_run")
    async def begin_batch_run(self, params: BeginRunInput) -> BeginRunResult:
        self._calls.add("begin_batch_run", params)
        released = 0
        for item in self.items.values():
            if item.status == "running":
                item.status, item.claim_token = "pending", None
                released += 1
        return BeginRunResult(
            counts=self.counts(),
            spent_usd=self._llm.spent.get(params.workflow_id, Decimal(0)),
            released=released,
        )

    @activity.defn(name="claim_batch_items")
    async def claim_batch_items(self, params: ClaimInput) -> list[ClaimedItem]:
        self._calls.add("claim_batch_items", params)
        taken = [i for i in self.items.values() if i.claim_token == params.claim_token]
        if not taken:
            pending = [i for i in self.items.values() if i.status == "pending"]
            taken = sorted(pending, key=lambda i: i.line_no)[: params.limit]
            for item in taken:
                item.status, item.claim_token = "running", params.claim_token
        return [
            ClaimedItem(custom_id=i.custom_id, line_no=i.line_no, request=i.request) for i in taken
        ]

    @activity.defn(name="release_batch_items")
    async def release_batch_items(self, params: ReleaseInput) -> int:
        self._calls.add("release_batch_items", params)
        released = 0
        if params.claim_token is not None:
            chosen = [i for i in self.items.values() if i.claim_token == params.claim_token]
            if params.custom_ids:
                chosen = [i for i in chosen if i.custom_id in params.custom_ids]
        else:
            run_claims = f"{activity.info().workflow_run_id}/"
            chosen = [
                self.items[custom_id]
                for custom_id in params.custom_ids
                if (self.items[custom_id].claim_token or "").startswith(run_claims)
            ]
        for item in chosen:
            if item.status == "running":
                item.status, item.claim_token = "pending", None
                released += 1
        return released

    @activity.defn(name="record_batch_item_outcomes")
    async def record_batch_item_outcomes(self, params: RecordOutcomesInput) -> RecordOutcomesResult:
        self._calls.add("record_batch_item_outcomes", params)
        recorded = 0
        for outcome in params.outcomes:
            item = self.items[outcome.custom_id]
            item.outcomes.append(outcome)
            if item.status == "running":
                item.status = outcome.status
                recorded += 1
        spent = (
            self._llm.spent.get(params.meter_workflow_id, Decimal(0))
            if params.meter_workflow_id
            else None
        )
        return RecordOutcomesResult(recorded=recorded, spent_usd=spent)

    @activity.defn(name="reset_failed_batch_items")
    async def reset_failed_batch_items(self, params: ResetFailedInput) -> int:
        self._calls.add("reset_failed_batch_items", params)
        failed = [i for i in self.items.values() if i.status == "failed"]
        for item in failed:
            item.status, item.claim_token = "pending", None
        return len(failed)

    @activity.defn(name="meter_batch_spend")
    async def meter_batch_spend(self, params: MeterInput) -> Decimal:
        self._calls.add("meter_batch_spend", params)
        return self._llm.spent.get(params.workflow_id, Decimal(0))

    @activity.defn(name="run_batch_page")
    async def run_batch_page(self, page: PageInput) -> PageResult:
        """The page driver over the in-memory items: each item's first model answers, or fails
        with ``llm.fail_when``; a failure with models left is a slow item, else a failed one.
        While ``page_hold`` is set, the page waits after claiming (heartbeating), so a test can
        pause or cancel it mid-page; cancelled, it answers nothing more and hands items back."""
        self._calls.add("run_batch_page", page)
        counts = page.counts
        ran, ran_failed = counts.ok + counts.failed, counts.failed
        spent, priced = page.spent_usd, page.priced_items
        claimed = sorted(
            (i for i in self.items.values() if i.status == "pending"), key=lambda i: i.line_no
        )[: page.quota]
        for item in claimed:
            item.status, item.claim_token = "running", page.page_token
        stop, slow, reason = PageStop.NONE, [], None
        answered = failed = 0
        try:
            while self.page_hold is not None and not self.page_hold.is_set():
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            stop = PageStop.CANCELLED
        for item in claimed if stop == PageStop.NONE else []:
            reason = failure_rate_crossed(
                page.options.max_failure_rate, ran, ran_failed, counts.total
            )
            if reason is not None:
                stop = PageStop.FAILURE_RATE
                break
            if not budget_allows_one_more(page.budget_usd, spent, priced, 0):
                stop = PageStop.BUDGET
                break
            request = item_llm_request(page.options, item.request)
            models = request.models or self._llm.routes[request.route or "default"]
            call = AttemptInput(
                request=request, model=models[0], provider=provider_for_model(models[0])[0]
            )
            failure = self._llm.fail_when(call)
            workflow_id = activity.info().workflow_id or ""
            if failure is None:
                self._llm.spent[workflow_id] = self._llm.spent.get(workflow_id, Decimal(0)) + (
                    self._llm.cost
                )
                spent += self._llm.cost
                item.status = "ok"
                item.outcomes.append(
                    ItemOutcome(
                        custom_id=item.custom_id,
                        status="ok",
                        text=self._llm.answer(call),
                        model=call.model,
                        cost_usd=self._llm.cost,
                    )
                )
                answered += 1
            elif len(models) > 1:
                slow.append(
                    SlowItem(
                        item=ClaimedItem(
                            custom_id=item.custom_id, line_no=item.line_no, request=item.request
                        ),
                        failed_models=[(models[0], failure.value)],
                        remaining_models=models[1:],
                        route=request.route,
                    )
                )
                continue
            else:
                item.status = "failed"
                item.outcomes.append(
                    ItemOutcome(
                        custom_id=item.custom_id,
                        status="failed",
                        error_class=failure.value,
                        error_message=f"{models[0]}: {failure.value}: mocked",
                    )
                )
                failed += 1
                ran_failed += 1
            ran += 1
            priced += 1
        slow_ids = {s.item.custom_id for s in slow}
        for item in claimed:
            if item.status == "running" and item.custom_id not in slow_ids:
                item.status, item.claim_token = "pending", None
        if stop == PageStop.NONE and not any(i.status == "pending" for i in self.items.values()):
            stop = PageStop.EXHAUSTED
        return PageResult(
            claimed=len(claimed),
            answered=answered,
            failed=failed,
            counts=self.counts(),
            spent_usd=spent,
            priced_items=priced,
            slow=slow,
            stop=stop,
            failure_reason=reason,
        )

    @activity.defn(name="set_batch_status")
    async def set_batch_status(self, params: StatusInput) -> BatchCounts:
        self._calls.add("set_batch_status", params)
        if params.skip_pending:
            for item in self.items.values():
                if item.status in ("pending", "running"):
                    item.status = "skipped"
        return self.counts()


class SessionMocks:
    """The chat-session activities over an in-memory conversation. ``fold_before`` names turns
    (update ids) whose context must be folded into a summary before the call."""

    def __init__(self, calls: CallLog) -> None:
        self._calls = calls
        self.messages: list[ChatMessage] = []
        self.summary: str | None = None
        self.answered: dict[str, StoredAnswer] = {}
        # Every store of a turn's answer, by whichever activity.
        self.stored_turns: list[FinishTurnInput] = []
        # The calls prepare_turn planned (with the LLM mocks' planner, set by KeelMocks).
        self.planner: LlmMocks | None = None
        self.planned: list[LlmRequest] = []
        self.fold_before: set[str] = set()
        self._seq = itertools.count(1)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.prepare_turn, self.store_summary, self.finish_turn, self.fail_turn]

    @activity.defn(name=PREPARE_TURN)
    async def prepare_turn(self, params: PrepareTurnInput) -> TurnContext:
        self._calls.add(PREPARE_TURN, params)
        if params.turn_id in self.answered:
            return TurnContext(answered=self.answered[params.turn_id])
        next(self._seq)
        self.messages.append(ChatMessage(role="user", content=params.content))
        fold = None
        if params.turn_id in self.fold_before:
            fold = FoldPlan(
                previous_summary=self.summary,
                messages=self.messages[:-1],
                through_seq=len(self.messages) - 1,
                summary_route="cheap",
                summary_max_tokens=200,
            )
        recent = self.messages[-1:] if fold else list(self.messages)
        plan = None
        if params.plan_for is not None and fold is None and self.planner is not None:
            # As the real one: the call the context makes, planned in the same activity.
            request = turn_request(params.plan_for, params.system_prompt, self.summary, recent)
            self.planned.append(request)
            plan = self.planner.plan(request)
        return TurnContext(
            system_prompt=params.system_prompt,
            summary=self.summary,
            recent=recent,
            fold=fold,
            budget_tokens=1000,
            context_tokens=10 * len(recent),
            plan=plan,
        )

    @activity.defn(name=STORE_SUMMARY)
    async def store_summary(self, params: StoreSummaryInput) -> None:
        self._calls.add(STORE_SUMMARY, params)
        self.summary = params.summary

    @activity.defn(name=FINISH_TURN)
    async def finish_turn(self, params: FinishTurnInput) -> StoredAnswer:
        self._calls.add(FINISH_TURN, params)
        return self.store(params)

    def store(self, params: FinishTurnInput) -> StoredAnswer:
        """A turn's answer, stored once (by ``finish_turn`` or by the LLM call itself)."""
        self.stored_turns.append(params)
        if params.turn_id not in self.answered:
            self.messages.append(ChatMessage(role="assistant", content=params.text))
            self.answered[params.turn_id] = StoredAnswer(
                text=params.text,
                model=params.model,
                message_seq=next(self._seq),
                input_tokens=params.usage.input_tokens,
                output_tokens=params.usage.output_tokens,
                cost_usd=params.cost_usd,
            )
        return self.answered[params.turn_id]

    @activity.defn(name=FAIL_TURN)
    async def fail_turn(self, params: FailTurnInput) -> None:
        self._calls.add(FAIL_TURN, params)


class JobMocks:
    """``record_job`` and ``deliver_job_callback``: the callback fails ``callback_failures``
    times (retryable, as an unreachable receiver does), or is refused for good."""

    def __init__(self, calls: CallLog) -> None:
        self._calls = calls
        self.callback_failures = 0
        self.callback_refused = False

    def activities(self) -> list[Callable[..., Any]]:
        return [self.record_job, self.deliver_job_callback]

    @activity.defn(name=RECORD_JOB)
    async def record_job(self, record: JobRecord) -> None:
        self._calls.add(RECORD_JOB, record)

    @activity.defn(name=DELIVER_CALLBACK)
    async def deliver_job_callback(self, delivery: CallbackDelivery) -> CallbackOutcome:
        self._calls.add(DELIVER_CALLBACK, delivery)
        attempt = activity.info().attempt
        if self.callback_refused:
            raise ApplicationError(
                f"callback for job {delivery.job_id} refused: mocked",
                type="CallbackDestinationRefused",
                non_retryable=True,
            )
        if attempt <= self.callback_failures:
            raise ApplicationError(
                f"callback for job {delivery.job_id}: receiver answered 503 (mocked)",
                type="CallbackNotAcknowledged",
            )
        return CallbackOutcome(status_code=200, attempts=attempt)


class PublishingMocks:
    """``publish_document`` and ``deliver_review_webhook``."""

    def __init__(self, calls: CallLog) -> None:
        self._calls = calls
        self.published_id = 42

    def activities(self) -> list[Callable[..., Any]]:
        return [self.publish_document, self.deliver_review_webhook]

    @activity.defn(name="publish_document")
    async def publish_document(self, request: PublishInput) -> int:
        self._calls.add("publish_document", request)
        return self.published_id

    @activity.defn(name="deliver_review_webhook")
    async def deliver_review_webhook(self, request: WebhookInput) -> WebhookDelivery:
        self._calls.add("deliver_review_webhook", request)
        return WebhookDelivery(host="hooks.example.test", status=200)


class ToolMocks:
    """The example agent's tools, ``look_up_weather`` and ``send_email``: each answers with
    what it was asked, so a test sees which tool ran with which arguments."""

    def __init__(self, calls: CallLog) -> None:
        self._calls = calls

    def activities(self) -> list[Callable[..., Any]]:
        return [self.look_up_weather, self.send_email]

    @activity.defn(name="look_up_weather")
    async def look_up_weather(self, call: ToolInput) -> ToolOutput:
        self._calls.add("look_up_weather", call)
        return ToolOutput(content=f"weather asked for {call.arguments}")

    @activity.defn(name="send_email")
    async def send_email(self, call: ToolInput) -> ToolOutput:
        self._calls.add("send_email", call)
        return ToolOutput(content=f"email sent with {call.arguments}")


class ProviderBatchMocks:
    """Provider batch mode's activities over the batch mocks' in-memory items: one chunk takes
    every pending item, the provider has it once submitted, it ends at poll ``polls_to_end`` (or
    the first poll after a cancel) and its collection answers every item (``fail_custom_ids`` go
    back to pending, as lines a provider failed do; ``invalid_custom_ids`` fail). A chunk cancelled
    before it was submitted is withdrawn: its items go back to pending."""

    def __init__(self, calls: CallLog, batch: BatchMocks) -> None:
        self._calls = calls
        self._batch = batch
        self._chunks: dict[str, list[FakeItem]] = {}
        self.fail_custom_ids: set[str] = set()
        # Lines the provider refuses as invalid: failed for good (not pending again).
        self.invalid_custom_ids: set[str] = set()
        # Each item's worst case at batch prices (None: unpriced, the budget lets it through).
        self.worst_case_per_item: Decimal | None = None
        # Refusals the tenant's budget answers the next submissions with, in order.
        self.tenant_refusals: list[str] = []
        self.polls_to_end = 1
        self._submitted: set[str] = set()
        self._cancelled: set[str] = set()
        self._polls: dict[str, int] = {}

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.plan_provider_chunks,
            self.submit_provider_chunk,
            self.poll_provider_chunk,
            self.collect_provider_chunk,
            self.cancel_provider_chunk,
        ]

    def _state(self, chunk_id: str, status: ChunkStatus, ended: bool = False) -> ChunkState:
        items = self._chunks[chunk_id]
        return ChunkState(
            chunk_id=chunk_id,
            status=status,
            provider_batch_id=f"pb-{chunk_id}",
            provider_ended=ended,
            done=len(items) if ended else 0,
            total=len(items),
        )

    @activity.defn(name="plan_provider_chunks")
    async def plan_provider_chunks(self, params: PlanChunksInput) -> PlanChunksResult:
        self._calls.add("plan_provider_chunks", params)
        pending = [i for i in self._batch.items.values() if i.status == "pending"]
        if not pending:
            return PlanChunksResult(chunks=[])
        chunk_id = f"{params.batch_id}-r{params.round}"
        worst = self.worst_case_per_item
        self._chunks[chunk_id] = pending
        for item in pending:
            item.status = "running"
        ref = ChunkRef(
            chunk_id=chunk_id,
            provider="openai",
            model="gpt-4o-mini",
            items=len(pending),
            worst_case_usd=None if worst is None else worst * len(pending),
        )
        return PlanChunksResult(chunks=[ref])

    @activity.defn(name="submit_provider_chunk")
    async def submit_provider_chunk(self, params: ChunkInput) -> ChunkState:
        self._calls.add("submit_provider_chunk", params)
        if self.tenant_refusals:
            refused = self._state(params.chunk_id, ChunkStatus.PLANNED)
            return refused.model_copy(update={"budget_refusal": self.tenant_refusals.pop(0)})
        self._submitted.add(params.chunk_id)
        return self._state(params.chunk_id, ChunkStatus.SUBMITTED)

    @activity.defn(name="poll_provider_chunk")
    async def poll_provider_chunk(self, params: ChunkInput) -> ChunkState:
        self._calls.add("poll_provider_chunk", params)
        polls = self._polls[params.chunk_id] = self._polls.get(params.chunk_id, 0) + 1
        ended = polls >= self.polls_to_end or params.chunk_id in self._cancelled
        return self._state(params.chunk_id, ChunkStatus.SUBMITTED, ended=ended)

    @activity.defn(name="collect_provider_chunk")
    async def collect_provider_chunk(self, params: ChunkInput) -> CollectResult:
        self._calls.add("collect_provider_chunk", params)
        succeeded = failed = returned = 0
        for item in self._chunks[params.chunk_id]:
            if item.custom_id in self.fail_custom_ids:
                item.status, returned = "pending", returned + 1
            elif item.custom_id in self.invalid_custom_ids:
                item.status, failed = "failed", failed + 1
            else:
                item.status, succeeded = "ok", succeeded + 1
        return CollectResult(
            chunk_id=params.chunk_id,
            succeeded=succeeded,
            failed=failed,
            returned=returned,
            cost_usd=Decimal(0),
        )

    @activity.defn(name="cancel_provider_chunk")
    async def cancel_provider_chunk(self, params: ChunkInput) -> ChunkState:
        self._calls.add("cancel_provider_chunk", params)
        if params.chunk_id in self._submitted:  # cancelled at the provider: collected later
            self._cancelled.add(params.chunk_id)
            return self._state(params.chunk_id, ChunkStatus.SUBMITTED)
        for item in self._chunks[params.chunk_id]:
            if item.status == "running":
                item.status = "pending"
        return self._state(params.chunk_id, ChunkStatus.WITHDRAWN)


class KeelMocks:
    """Every keel activity, mocked, sharing one call log; ``activities()`` is what a worker
    registers in place of the real ones."""

    def __init__(self, task_queue: str) -> None:
        self.task_queue = task_queue
        self.log = CallLog()
        self.llm = LlmMocks(self.log, task_queue)
        self.audit = AuditMocks(self.log)
        self.approvals = ApprovalMocks(self.log)
        self.batch = BatchMocks(self.log, self.llm)
        self.sessions = SessionMocks(self.log)
        self.jobs = JobMocks(self.log)
        self.publishing = PublishingMocks(self.log)
        self.tools = ToolMocks(self.log)
        self.provider_batches = ProviderBatchMocks(self.log, self.batch)
        self.llm.audit, self.llm.sessions = self.audit, self.sessions
        self.sessions.planner = self.llm

    def activities(self) -> list[Callable[..., Any]]:
        return [
            *self.llm.activities(),
            *self.audit.activities(),
            *self.approvals.activities(),
            *self.batch.activities(),
            *self.sessions.activities(),
            *self.jobs.activities(),
            *self.publishing.activities(),
            *self.tools.activities(),
            *self.provider_batches.activities(),
        ]

    def inputs(self, name: str) -> list[Any]:
        return self.log.inputs(name)
