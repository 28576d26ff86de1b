"""BatchWorkflow (frozen): the per-item batch workflow, kept registered until its runs drain.

New batches run as ``PagedBatchWorkflow`` (workflows/batch.py). This one stays, unchanged in
behaviour, so batches started before pages existed finish after the upgrade (and its recorded
history replays, tests/replay). Delete it once no ``BatchWorkflow`` execution is open
(``temporal workflow list --query 'WorkflowType="BatchWorkflow" AND ExecutionStatus="Running"'``).
Its input, result and controls are the paged workflow's (contracts/batch.py).

Every item of a batch through the LLM, under a concurrency cap, exactly once.

The items live in Postgres (``batch_items``); the workflow holds counters and the few items it
has claimed. It reads top to bottom like the process:

1. begin the run (a scheduled batch first loads its file on the worker);
2. keep a sliding window of up to ``concurrency`` items in flight, each answered by
   ``ask_llm`` (route, retries, fallbacks, ledger) and its outcome written to its own row;
3. stop launching when the user pauses, when the budget would be crossed (then ask: raise it,
   or stop), when the failure rate crosses the limit (abort), or when the run's history nears
   its event limit (drain, then continue-as-new with the counters);
4. when nothing is pending and nothing is in flight, finish: completed, cancelled or aborted.

Items in flight when a stop is asked for are allowed to finish: their calls are already paid
for, and an answer that arrives is worth keeping. That is also the budget's promise: it never
overspends by more than what was already in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from decimal import ROUND_UP, Decimal

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        BEGIN_BATCH_RUN,
        CLAIM_BATCH_ITEMS,
        LOAD_BATCH_FILE,
        METER_BATCH_SPEND,
        RECORD_BATCH_ITEM_OUTCOMES,
        RELEASE_BATCH_ITEMS,
        RESET_FAILED_BATCH_ITEMS,
        SET_BATCH_STATUS,
    )
    from contracts.approvals import DefaultAction, GateOutcome, GateRequest
    from contracts.batch import (
        BatchCounts,
        BatchInput,
        BatchProgress,
        BatchResult,
        BatchStatus,
        BeginRunInput,
        CarriedState,
        ClaimedItem,
        ClaimInput,
        ControlAck,
        ControlRequest,
        ItemOutcome,
        LoadFileInput,
        MeterInput,
        RecordOutcomesInput,
        ReleaseInput,
        ResetFailedInput,
        RetryFailedAck,
        StatusInput,
    )
    from contracts.llm import (
        CallClass,
        FallbackPolicy,
        LlmAnswer,
        LlmFailureType,
        LlmRequest,
        RoutePlan,
        error_class_from_type,
    )
    from workflows.activity_calls import (
        BATCH_DATABASE,
        BATCH_DATABASE_LOCAL,
        BATCH_FILE_LOAD,
        call,
        call_local,
    )
    from workflows.approval_gate import ApprovalGate, describe
    from workflows.llm_calls import ask_llm, audit, plan_route

# Events one item may still add to the history once launched: its activity (scheduled, started,
# completed), the route-planning marker, and its share of workflow tasks and outcome markers.
EVENTS_PER_ITEM_IN_FLIGHT = 8
EVENTS_RESERVE = 100
# Temporal warns at 10 MB of history and fails a run at 50 MB.
HISTORY_BYTES_LIMIT = 8_000_000
OUTCOMES_PER_WRITE = 500
# The failure rate is judged once this many items ran (or all of a smaller batch).
FAILURE_RATE_MIN_SAMPLE = 20
REFUSED = "BatchControlRefused"
# What ask_llm raises when the tenant's own budget (keel budget set) cannot cover a call.
TENANT_BUDGET_REFUSED = LlmFailureType.BUDGET_EXCEEDED


def claim_page_size(concurrency: int) -> int:
    return max(10, min(concurrency, 500))


class _BudgetGate(BaseModel):
    name: str
    spent_usd: Decimal
    budget_usd: Decimal
    suggested_usd: Decimal


def _dollars(text: str | None) -> Decimal | None:
    """The amount a reviewer approved (the gate's draft, or their edit), if it is one."""
    try:
        amount = Decimal((text or "").strip().lstrip("$").replace(",", ""))
    except ArithmeticError:
        return None
    return amount if amount.is_finite() and amount > 0 else None


def _refusal(message: str) -> ApplicationError:
    """What a validator raises: the client sees ``message`` as is, under one error type."""
    return ApplicationError(message, type=REFUSED, non_retryable=True)


def _cents_up(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_UP)


def _failure_of(error: Exception) -> tuple[str, str]:
    """(error class, message) of an item whose LLM call failed for good."""
    cause: BaseException = error
    if isinstance(error, ActivityError) and error.cause is not None:
        cause = error.cause
    if isinstance(cause, ApplicationError):
        if cause.type == LlmFailureType.CHAIN_EXHAUSTED:
            failures = list(cause.details[0]) if cause.details else []
            error_class = str(failures[-1][1]) if failures else "chain_exhausted"
            return error_class, cause.message
        if cause.type == LlmFailureType.UNKNOWN_ROUTE:
            return "unknown_route", cause.message
        return error_class_from_type(cause.type).value, cause.message
    return "unknown", str(cause)


@workflow.defn
class BatchWorkflow:
    @workflow.init
    def __init__(self, params: BatchInput) -> None:
        self._batch_id = params.batch_id or workflow.info().workflow_id.removeprefix("batch-")
        self._options = params.options
        self._event_limit = params.history_event_limit
        carried = params.carried
        self._budget = carried.budget_usd if carried else params.options.budget_usd
        self._runs = (carried.runs if carried else 0) + 1
        self._gates_opened = carried.gates_opened if carried else 0
        self._status = "running"
        self._reason: str | None = None
        # Set once: the batch will finish with this status (cancelled / aborted).
        self._stop: tuple[str, str] | None = None
        self._paused_by: str | None = None
        self._gate: _BudgetGate | None = None
        self._begun = False
        self._counts = BatchCounts()
        self._in_flight = 0
        self._buffer: deque[ClaimedItem] = deque()
        self._claims = 0
        self._claiming = False
        self._plans: dict[str, RoutePlan] = {}
        self._plans_claim = -1
        # Why the tenant's budget (not the batch's) refused a call, while that holds the batch.
        self._tenant_refusal: str | None = None
        self._claim_token: str | None = None
        self._exhausted = False
        self._outcomes: list[ItemOutcome] = []
        self._writing = False
        self._spent = Decimal(0)
        # Items finished in total (all runs), and how many of them the last metering covered.
        self._ran = 0
        self._ran_metered = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # The budget gate: approve / edit / reject Updates, the approvals row, the audit trail.
        self._approval = ApprovalGate()

    # --- The process -----------------------------------------------------------------------

    @workflow.run
    async def run(self, params: BatchInput) -> BatchResult:
        if params.source_path is not None and params.carried is None:
            await self._load_file(params)
        await self._begin(params)
        writer = asyncio.create_task(self._write_outcomes_as_they_come())
        try:
            while self._stop is None:
                if self._tenant_refusal is not None:
                    await self._tenant_budget_gate()
                    continue
                if self._paused_by is not None or self._gate is not None:
                    await workflow.wait_condition(
                        lambda: (
                            self._stop is not None
                            or (self._paused_by is None and self._gate is None)
                        )
                    )
                    continue
                if self._history_nearly_full():
                    await self._continue_as_new(params)
                item = await self._next_item()
                if item is None:
                    if await self._all_done():
                        break
                    continue
                await workflow.wait_condition(
                    lambda: self._in_flight < self._options.concurrency or self._must_hold()
                )
                if self._must_hold():
                    self._buffer.appendleft(item)
                    continue
                if not self._budget_allows_one_more():
                    self._buffer.appendleft(item)
                    await self._settle_budget()
                    continue
                request = self._llm_request(item)
                self._launch(item, request, await self._plan_for(request))
            return await self._finish()
        finally:
            writer.cancel()

    async def _load_file(self, params: BatchInput) -> None:
        assert params.source_path is not None
        await call(
            LOAD_BATCH_FILE,
            LoadFileInput(
                batch_id=self._batch_id,
                path=params.source_path,
                options=self._options,
                schedule_id=params.schedule_id,
            ),
            **BATCH_FILE_LOAD,
        )

    async def _begin(self, params: BatchInput) -> None:
        info = workflow.info()
        begun = await call(
            BEGIN_BATCH_RUN,
            BeginRunInput(
                batch_id=self._batch_id,
                workflow_id=info.workflow_id,
                retry_failed=params.retry_failed,
            ),
            **BATCH_DATABASE,
        )
        self._counts = begun.counts
        self._spent = begun.spent_usd
        self._ran = self._ran_metered = begun.counts.ok + begun.counts.failed - begun.counts.invalid
        self._claim_token = f"{info.run_id}"
        self._begun = True
        if params.carried is None:
            await audit(
                "batch.started" if not params.retry_failed else "batch.retry_failed",
                self._options.tenant,
                {
                    "batch_id": self._batch_id,
                    "items": begun.counts.total,
                    "pending": begun.counts.pending,
                    "invalid": begun.counts.invalid,
                    "retried": begun.retried,
                    "concurrency": self._options.concurrency,
                    "budget_usd": str(self._budget) if self._budget is not None else None,
                },
            )

    async def _next_item(self) -> ClaimedItem | None:
        """The next claimed item, or None once nothing is left to claim. The next page is
        claimed while this one runs, so the window never waits for Postgres."""
        self._prefetch()
        await workflow.wait_condition(
            lambda: bool(self._buffer) or (self._exhausted and not self._claiming)
        )
        item = self._buffer.popleft() if self._buffer else None
        self._prefetch()
        return item

    def _prefetch(self) -> None:
        page = claim_page_size(self._options.concurrency)
        if self._claiming or self._exhausted or len(self._buffer) >= page:
            return
        self._claiming = True
        self._claims += 1
        task = asyncio.create_task(self._claim(f"{self._claim_token}/{self._claims}", page))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, token: str, page: int) -> None:
        try:
            claimed = await call(
                CLAIM_BATCH_ITEMS,
                ClaimInput(batch_id=self._batch_id, claim_token=token, limit=page),
                **BATCH_DATABASE,
                summary=f"claim {token}",
            )
        finally:
            self._claiming = False
        self._buffer.extend(claimed)
        self._exhausted = not claimed

    async def _all_done(self) -> bool:
        """Nothing left to claim: done once what is in flight has finished and been written,
        unless retry-failed put items back meanwhile."""
        await workflow.wait_condition(
            lambda: (
                (self._in_flight == 0 and not self._outcomes and not self._writing)
                or not self._exhausted
                or self._must_hold()
            )
        )
        return (
            self._exhausted and not self._buffer and self._in_flight == 0 and not self._must_hold()
        )

    async def _plan_for(self, request: LlmRequest) -> RoutePlan | None:
        """One route plan per claimed page and request shape, not one per item: planning is a
        local activity, and one per item held every workflow task open (the bench measured the
        workflow task busy 94% of the time). A page runs for about a second at full speed, so
        breaker states are that fresh; the call activity still checks its breaker and budget.
        None (ask_llm plans, and fails the item with the reason) when planning fails."""
        if self._plans_claim != self._claims:
            self._plans.clear()
            self._plans_claim = self._claims
        key = f"{request.route}|{','.join(request.models or [])}"
        if key not in self._plans:
            try:
                self._plans[key] = await plan_route(request)
            except ActivityError:
                return None
        return self._plans[key]

    def _launch(self, item: ClaimedItem, request: LlmRequest, plan: RoutePlan | None) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._run_item(item, request, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _llm_request(self, item: ClaimedItem) -> LlmRequest:
        options, request = self._options, item.request
        models = [options.model] if options.model else None
        if models is None and options.route is None and request.model:
            models = [request.model]
        return LlmRequest(
            messages=request.messages,
            route=options.route,
            models=models,
            parameters=request.parameters(),
            call_class=CallClass.BATCH,
            # A batch item that cannot be answered is a failed item, never a canned answer.
            fallback_policy=FallbackPolicy.FAIL,
            tenant=options.tenant,
            purpose="batch",
        )

    async def _run_item(
        self, item: ClaimedItem, request: LlmRequest, plan: RoutePlan | None
    ) -> None:
        try:
            answer: LlmAnswer = await ask_llm(request, plan)
            outcome = ItemOutcome(
                custom_id=item.custom_id,
                status="ok",
                text=answer.text,
                model=answer.model,
                provider=answer.provider,
                finish_reason=answer.finish_reason,
                usage=answer.usage,
                cost_usd=answer.cost_usd,
                attempts=answer.attempts,
                failed_models=answer.failed_models,
            )
            self._counts.ok += 1
        except (ActivityError, ApplicationError) as error:
            if isinstance(error, ApplicationError) and error.type == TENANT_BUDGET_REFUSED:
                # Not the item's failure: the tenant's budget is spent. The item goes back in
                # line (still claimed) and the batch pauses at its gate until someone decides.
                self._buffer.appendleft(item)
                self._in_flight -= 1
                self._tenant_refusal = self._tenant_refusal or error.message
                return
            error_class, message = _failure_of(error)
            outcome = ItemOutcome(
                custom_id=item.custom_id,
                status="failed",
                error_class=error_class,
                error_message=message,
            )
            self._counts.failed += 1
        self._outcomes.append(outcome)
        self._in_flight -= 1
        self._ran += 1
        self._check_failure_rate()

    async def _write_outcomes_as_they_come(self) -> None:
        """One writer, many outcomes per write: one activity per batch of outcomes, not per
        item, keeps the history (and Postgres round trips) small. A regular activity, not a
        local one: a local activity holds the workflow task open while it runs, and every
        completion and every new item would wait behind it."""
        while True:
            await workflow.wait_condition(lambda: bool(self._outcomes))
            batch = self._outcomes[:OUTCOMES_PER_WRITE]
            del self._outcomes[:OUTCOMES_PER_WRITE]
            ran_before_write = self._ran
            self._writing = True
            try:
                result = await call(
                    RECORD_BATCH_ITEM_OUTCOMES,
                    RecordOutcomesInput(
                        batch_id=self._batch_id,
                        outcomes=batch,
                        meter_workflow_id=workflow.info().workflow_id
                        if self._budget is not None
                        else None,
                    ),
                    **BATCH_DATABASE,
                    summary=f"record {len(batch)} outcomes",
                )
            finally:
                self._writing = False
            if result.spent_usd is not None:
                self._spent, self._ran_metered = result.spent_usd, ran_before_write
            if result.recorded != len(batch):
                workflow.logger.warning(
                    "batch %s: %d of %d outcomes found their item running",
                    self._batch_id,
                    result.recorded,
                    len(batch),
                )

    async def _written(self) -> None:
        await workflow.wait_condition(lambda: not self._outcomes and not self._writing)

    # --- Stops, pauses, limits ------------------------------------------------------------

    def _must_hold(self) -> bool:
        return (
            self._stop is not None
            or self._tenant_refusal is not None
            or self._paused_by is not None
            or self._gate is not None
            or self._history_nearly_full()
        )

    def _check_failure_rate(self) -> None:
        limit = self._options.max_failure_rate
        ran_failed = self._counts.failed - self._counts.invalid
        sample = min(FAILURE_RATE_MIN_SAMPLE, max(1, self._counts.total - self._counts.invalid))
        if limit is None or self._stop is not None or self._ran < sample:
            return
        rate = ran_failed / self._ran
        if rate > limit:
            self._stop = (
                "aborted",
                f"failure rate {rate:.1%} crossed the limit of {limit:.1%} after "
                f"{self._ran} items ran ({ran_failed} failed)",
            )

    def _history_nearly_full(self) -> bool:
        info = workflow.info()
        reserve = (self._in_flight + 1) * EVENTS_PER_ITEM_IN_FLIGHT + EVENTS_RESERVE
        return (
            info.get_current_history_length() + reserve >= self._event_limit
            or info.get_current_history_size() >= HISTORY_BYTES_LIMIT
        )

    async def _continue_as_new(self, params: BatchInput) -> None:
        """Drain what is in flight, write its outcomes, hand unstarted claims back, and start a
        fresh run with the counters (a run's history never carries more than its own items)."""
        await workflow.wait_condition(lambda: self._in_flight == 0 and not self._claiming)
        await self._written()
        if self._buffer:
            await call_local(
                RELEASE_BATCH_ITEMS,
                ReleaseInput(
                    batch_id=self._batch_id,
                    custom_ids=[item.custom_id for item in self._buffer],
                ),
                **BATCH_DATABASE_LOCAL,
            )
            self._buffer.clear()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            BatchInput(
                batch_id=self._batch_id,
                options=self._options,
                history_event_limit=self._event_limit,
                carried=CarriedState(
                    budget_usd=self._budget, runs=self._runs, gates_opened=self._gates_opened
                ),
            )
        )

    # --- Budget ------------------------------------------------------------------------------

    def _item_cost_estimate(self) -> Decimal | None:
        """Average metered cost of an item so far (every attempt counted), None before any."""
        if self._ran_metered == 0:
            return None
        return self._spent / self._ran_metered

    def _budget_allows_one_more(self) -> bool:
        if self._budget is None:
            return True
        estimate = self._item_cost_estimate()
        unmetered = self._ran - self._ran_metered
        if estimate is None:  # nothing priced yet: one item at a time until one is
            return self._in_flight == 0 and unmetered == 0
        projected = self._spent + (self._in_flight + unmetered + 1) * estimate
        return projected <= self._budget

    async def _settle_budget(self) -> None:
        """Let what is in flight finish, meter the ledger, and if even one more item would cross
        the budget, pause at a gate: raise the budget, or stop."""
        await workflow.wait_condition(lambda: self._in_flight == 0 or self._stop is not None)
        await self._written()
        self._spent = await call_local(
            METER_BATCH_SPEND,
            MeterInput(workflow_id=workflow.info().workflow_id),
            **BATCH_DATABASE_LOCAL,
        )
        self._ran_metered = self._ran
        if self._stop is not None or self._budget_allows_one_more():
            return
        await self._open_budget_gate()

    async def _open_budget_gate(self) -> None:
        """Ask a person (role ``budget_role``) through the approval gate: approving raises the
        budget to the amount proposed, an edit raises it to the reviewer's amount, a rejection
        (or nobody deciding before the deadline) stops the batch."""
        assert self._budget is not None
        estimate = self._item_cost_estimate() or Decimal(0)
        remaining = self._counts.total - self._counts.finished - self._in_flight
        suggested = max(
            _cents_up(self._spent + max(remaining, 1) * estimate),
            _cents_up(self._budget) + Decimal("0.01"),
        )
        self._gates_opened += 1
        gate = _BudgetGate(
            name=f"budget-{self._gates_opened}",
            spent_usd=self._spent,
            budget_usd=self._budget,
            suggested_usd=suggested,
        )
        reason = (
            f"budget: ${gate.spent_usd:.4f} of ${gate.budget_usd:.2f} spent and the next item "
            f"would cross it; {remaining} item(s) left, about ${suggested:.2f} in total to finish"
        )
        self._gate = gate
        await self._set_status("paused", reason)
        await audit(
            "batch.budget_gate_opened",
            self._options.tenant,
            {
                "batch_id": self._batch_id,
                "gate": gate.name,
                "spent_usd": str(gate.spent_usd),
                "budget_usd": str(gate.budget_usd),
                "suggested_usd": str(suggested),
                "remaining_items": remaining,
            },
        )
        asking = asyncio.create_task(
            self._approval.request(
                GateRequest(
                    gate=gate.name,
                    draft=f"{suggested:.2f}",
                    reason=reason,
                    role=self._options.budget_role,
                    tenant=self._options.tenant,
                    subject=f"batch {self._batch_id}: raise the budget to ${suggested:.2f}, "
                    "or stop",
                    deadline=self._options.budget_gate_deadline,
                    default_action=DefaultAction.REJECT,
                )
            )
        )
        await workflow.wait_condition(lambda: asking.done() or self._stop is not None)
        self._gate = None
        if not asking.done():  # cancelled while waiting: the gate closes undecided
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            return
        await self._apply_budget_decision(gate, asking.result())

    async def _apply_budget_decision(self, gate: _BudgetGate, outcome: GateOutcome) -> None:
        actor = ", ".join(outcome.decided_by) or "keel"
        amount = _dollars(outcome.final) if outcome.approved else None
        if outcome.approved and (amount is None or amount <= gate.spent_usd):
            # Approved, but not with a usable amount: ask again with the reason.
            await audit(
                "batch.budget_refused",
                self._options.tenant,
                {
                    "batch_id": self._batch_id,
                    "gate": gate.name,
                    "amount": outcome.final,
                    "why": f"not a dollar amount above the ${gate.spent_usd:.4f} spent",
                },
                actor=actor,
            )
            return
        if amount is not None:
            self._budget = amount
            event, payload = "batch.budget_raised", {"budget_usd": str(amount)}
            if self._paused_by is None and self._stop is None:
                await self._set_status("running", None)
        else:
            self._stop = ("cancelled", f"stopped at the budget gate: {describe(outcome)}")
            event, payload = "batch.budget_stop", {"outcome": outcome.status.value}
        await audit(
            event,
            self._options.tenant,
            {
                "batch_id": self._batch_id,
                "gate": gate.name,
                "spent_usd": str(gate.spent_usd),
                **payload,
            },
            actor=actor,
        )

    async def _tenant_budget_gate(self) -> None:
        """The tenant's budget refused a call: what is in flight finishes (it was covered), then
        a person raises the budget (``keel budget set``) and approves, or rejects to stop."""
        await workflow.wait_condition(lambda: self._in_flight == 0)
        refusal = self._tenant_refusal or "the tenant's budget is spent"
        tenant = self._options.tenant
        self._gates_opened += 1
        name = f"tenant-budget-{self._gates_opened}"
        reason = (
            f"tenant budget: {refusal}. Raise it (keel budget set {tenant} --usd AMOUNT "
            "--period day|month), then approve to go on; reject to stop the batch"
        )
        await self._set_status("paused", reason)
        await audit(
            "batch.tenant_budget_gate_opened",
            tenant,
            {"batch_id": self._batch_id, "gate": name, "refusal": refusal},
        )
        asking = asyncio.create_task(
            self._approval.request(
                GateRequest(
                    gate=name,
                    draft="resume",
                    reason=reason,
                    role=self._options.budget_role,
                    tenant=tenant,
                    subject=f"batch {self._batch_id}: tenant {tenant} is out of budget",
                    deadline=self._options.budget_gate_deadline,
                    default_action=DefaultAction.REJECT,
                )
            )
        )
        await workflow.wait_condition(lambda: asking.done() or self._stop is not None)
        if not asking.done():
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            return
        outcome = asking.result()
        actor = ", ".join(outcome.decided_by) or "keel"
        if outcome.approved:
            # Plans carry the budget's verdict: the next items are planned (and checked) anew.
            self._tenant_refusal = None
            self._plans.clear()
            await audit(
                "batch.tenant_budget_resumed", tenant, {"batch_id": self._batch_id}, actor=actor
            )
            if self._paused_by is None and self._stop is None:
                await self._set_status("running", None)
        else:
            self._stop = ("cancelled", f"stopped at the tenant budget gate: {describe(outcome)}")

    # --- Finishing ---------------------------------------------------------------------------

    async def _finish(self) -> BatchResult:
        # A claim still running would leave its items claimed in a finished batch.
        await workflow.wait_condition(lambda: self._in_flight == 0 and not self._claiming)
        await self._written()
        status, reason = self._stop or ("completed", None)
        counts = await call(
            SET_BATCH_STATUS,
            StatusInput(
                batch_id=self._batch_id,
                status=status,
                reason=reason,
                skip_pending=self._stop is not None,
                skip_reason=f"not run: batch {status} ({reason})" if reason else None,
                final=True,
                budget_usd=self._budget,
            ),
            **BATCH_DATABASE,
        )
        self._counts, self._status, self._reason = counts, status, reason
        self._spent = await call_local(
            METER_BATCH_SPEND,
            MeterInput(workflow_id=workflow.info().workflow_id),
            **BATCH_DATABASE_LOCAL,
        )
        await audit(
            f"batch.{status}",
            self._options.tenant,
            {
                "batch_id": self._batch_id,
                "reason": reason,
                "total": counts.total,
                "ok": counts.ok,
                "failed": counts.failed,
                "skipped": counts.skipped,
                "runs": self._runs,
            },
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return BatchResult(
            batch_id=self._batch_id,
            status=status,
            reason=reason,
            total=counts.total,
            ok=counts.ok,
            failed=counts.failed,
            skipped=counts.skipped,
            spent_usd=self._spent,
            runs=self._runs,
        )

    async def _set_status(self, status: str, reason: str | None) -> None:
        self._status, self._reason = status, reason
        await call_local(
            SET_BATCH_STATUS,
            StatusInput(batch_id=self._batch_id, status=status, reason=reason),
            **BATCH_DATABASE_LOCAL,
        )

    def _finishing(self) -> bool:
        return self._stop is not None or self._status in (
            BatchStatus.COMPLETED,
            BatchStatus.CANCELLED,
            BatchStatus.ABORTED,
        )

    # --- Controls: updates answer back; their validators refuse what cannot be done ------------

    @workflow.update
    async def pause(self, request: ControlRequest) -> ControlAck:
        self._paused_by = request.by
        reason = f"paused by {request.by}" + (f": {request.reason}" if request.reason else "")
        await workflow.wait_condition(lambda: self._begun)
        await self._set_status("paused", reason)
        await audit(
            "batch.paused", self._options.tenant, {"batch_id": self._batch_id}, actor=request.by
        )
        return ControlAck(
            status="paused",
            in_flight=self._in_flight,
            message=f"no new items start; {self._in_flight} in flight will finish",
        )

    @pause.validator
    def _validate_pause(self, request: ControlRequest) -> None:
        if self._finishing():
            raise _refusal(f"batch {self._batch_id} is {self._stop_word()}; nothing to pause")
        if self._paused_by is not None:
            raise _refusal(f"batch {self._batch_id} is already paused (by {self._paused_by})")

    @workflow.update
    async def resume(self, request: ControlRequest) -> ControlAck:
        self._paused_by = None
        await workflow.wait_condition(lambda: self._begun)
        if self._gate is None:
            await self._set_status("running", None)
        await audit(
            "batch.resumed", self._options.tenant, {"batch_id": self._batch_id}, actor=request.by
        )
        return ControlAck(status="running", in_flight=self._in_flight, message="items start again")

    @resume.validator
    def _validate_resume(self, request: ControlRequest) -> None:
        if self._finishing():
            raise _refusal(f"batch {self._batch_id} is {self._stop_word()}; nothing to resume")
        if self._paused_by is None:
            if self._tenant_refusal is not None:
                raise _refusal(
                    f"batch {self._batch_id} waits at its tenant budget gate, not a pause: "
                    f"raise the budget (keel budget set {self._options.tenant} --usd AMOUNT "
                    f"--period day|month), then keel approve {workflow.info().workflow_id} "
                    "--reviewer NAME"
                )
            if self._gate is not None:
                raise _refusal(
                    f"batch {self._batch_id} waits at its budget gate, not a pause: raise the "
                    f"budget (keel batch budget {self._batch_id} --raise-to "
                    f"{self._gate.suggested_usd:.2f}) or stop it (--stop)"
                )
            raise _refusal(f"batch {self._batch_id} is not paused")

    @workflow.update
    async def cancel(self, request: ControlRequest) -> ControlAck:
        reason = f"cancelled by {request.by}" + (f": {request.reason}" if request.reason else "")
        self._stop = ("cancelled", reason)
        return ControlAck(
            status="cancelling",
            in_flight=self._in_flight,
            message=f"pending items will be skipped; {self._in_flight} in flight will finish",
        )

    @cancel.validator
    def _validate_cancel(self, request: ControlRequest) -> None:
        if self._finishing():
            raise _refusal(f"batch {self._batch_id} is already {self._stop_word()}")

    @workflow.update
    async def retry_failed(self, request: ControlRequest) -> RetryFailedAck:
        await workflow.wait_condition(lambda: self._begun)
        # Outcomes still being written are not failed in Postgres yet: let them land first.
        await self._written()
        reset = await call_local(
            RESET_FAILED_BATCH_ITEMS,
            ResetFailedInput(batch_id=self._batch_id),
            **BATCH_DATABASE_LOCAL,
        )
        if reset:
            self._counts.failed -= reset
            self._counts.pending += reset
            self._ran -= reset
            self._ran_metered = min(self._ran_metered, self._ran)
            self._exhausted = False
        await audit(
            "batch.retry_failed",
            self._options.tenant,
            {"batch_id": self._batch_id, "reset": reset},
            actor=request.by,
        )
        return RetryFailedAck(
            reset=reset,
            message=f"{reset} failed item(s) will run again" if reset else "none failed",
        )

    @retry_failed.validator
    def _validate_retry_failed(self, request: ControlRequest) -> None:
        if self._finishing():
            raise _refusal(f"batch {self._batch_id} is {self._stop_word()}")

    def _stop_word(self) -> str:
        if self._stop is not None:
            return "stopping"
        return self._status

    @workflow.query
    def progress(self) -> BatchProgress:
        return BatchProgress(
            batch_id=self._batch_id,
            status=self._status if self._stop is None else f"{self._stop[0]} (finishing)",
            reason=self._reason if self._stop is None else self._stop[1],
            in_flight=self._in_flight,
            total=self._counts.total,
            ok=self._counts.ok,
            failed=self._counts.failed,
            skipped=self._counts.skipped,
            spent_usd=self._spent,
            budget_usd=self._budget,
            pending_gate=self._gate.name if self._gate else None,
            runs=self._runs,
            history_length=workflow.info().get_current_history_length(),
        )
