"""PagedBatchWorkflow: every item of a batch through the LLM, a page at a time, exactly once.

The items live in Postgres (``batch_items``); the workflow holds one state model and runs pages.
It reads top to bottom like the process:

1. begin the run (a scheduled batch first loads its file on the worker);
2. loop: run a page — one activity that claims items itself and answers them concurrently under
   the batch's cap, writing outcomes and ledger rows in bulk (activities/batch/pages.py) — and
   record what it reports; items the page could not answer on their model come back here and go
   down the rest of their route one call at a time (the slow path: ``ask_llm``, fallback audit
   rows), while the next page runs with the slots they leave;
3. between pages, hold for a pause, a budget gate (the batch's own, or the tenant's), a crossed
   failure rate, or a history near its limit (then continue-as-new with the state);
4. when nothing is pending and nothing is in flight, finish: completed, cancelled or aborted.

Pause and cancel reach a running page at once: the workflow cancels it, the cancellation reaches
the activity through its heartbeat (within about a second), the page starts nothing more, lets
the calls already at the provider finish and records them (they are paid for), and hands its
unstarted items back. That is also the budget's promise: it never overspends by more than what
was in flight. The arithmetic (page sizes, budget, failure rate, history room) is in
contracts/batch_pacing.py, shared with the page.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        BEGIN_BATCH_RUN,
        LOAD_BATCH_FILE,
        METER_BATCH_SPEND,
        RECORD_BATCH_ITEM_OUTCOMES,
        RELEASE_BATCH_ITEMS,
        RESET_FAILED_BATCH_ITEMS,
        RUN_BATCH_PAGE,
        SET_BATCH_STATUS,
    )
    from contracts.approvals import DefaultAction, GateOutcome, GateRequest
    from contracts.batch import (
        BatchInput,
        BatchProgress,
        BatchResult,
        BatchRunState,
        BatchStatus,
        BeginRunInput,
        ControlAck,
        ControlRequest,
        ItemOutcome,
        LoadFileInput,
        MeterInput,
        PageInput,
        PageResult,
        PageStop,
        RecordOutcomesInput,
        ReleaseInput,
        ResetFailedInput,
        RetryFailedAck,
        SlowItem,
        StatusInput,
        item_llm_request,
        tenant_budget_gate,
    )
    from contracts.batch_pacing import (
        HISTORY_BYTES_LIMIT,
        PAGE_SECONDS,
        budget_allows_one_more,
        failure_rate_crossed,
        full_page_quota,
        history_room,
        history_room_for_pages,
        page_quota,
        page_slots,
        suggested_budget,
    )
    from contracts.llm import LlmAnswer, LlmFailureType, error_class_from_type
    from workflows.activity_calls import (
        BATCH_DATABASE,
        BATCH_DATABASE_LOCAL,
        BATCH_FILE_LOAD,
        BATCH_PAGE,
        call,
        call_local,
    )
    from workflows.approval_gate import ApprovalGate, describe
    from workflows.llm_calls import ask_llm, audit

OUTCOMES_PER_WRITE = 500
REFUSED = "BatchControlRefused"
# A run reserves history for the most slow-path items a page can hand back, not for every item
# it took (2,000 -> 1 run instead of 2; 5,000 -> 1 instead of 5). Runs started before keep
# the old reservation (workflow.patched).
PAGES_RESERVE_THEIR_SLOW_CAP = "batch-pages-reserve-their-slow-cap"
# What ask_llm raises when the tenant's own budget (keel budget set) cannot cover a call.
TENANT_BUDGET_REFUSED = LlmFailureType.BUDGET_EXCEEDED


class _BudgetGate:
    def __init__(self, name: str, spent: Decimal, budget: Decimal, suggested: Decimal) -> None:
        self.name, self.spent_usd, self.budget_usd, self.suggested_usd = (
            name,
            spent,
            budget,
            suggested,
        )


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


def _failure_of(error: Exception) -> tuple[str, str]:
    """(error class, message) of a slow-path item whose LLM call failed for good."""
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
class PagedBatchWorkflow:
    @workflow.init
    def __init__(self, params: BatchInput) -> None:
        self._batch_id = params.batch_id or workflow.info().workflow_id.removeprefix("batch-")
        self._options = params.options
        self._event_limit = params.history_event_limit
        self._s = params.state or BatchRunState(budget_usd=params.options.budget_usd)
        self._s.runs += 1
        self._s.items_taken = 0
        self._begun = False
        self._gate: _BudgetGate | None = None
        # The page running now (its slots count as in flight) and the slow-path calls.
        self._page: workflow.ActivityHandle[PageResult] | None = None
        self._page_slots = 0
        self._slow_in_flight = 0
        self._outcomes: list[ItemOutcome] = []
        self._writing = False
        self._tasks: set[asyncio.Task[None]] = set()
        # The budget gate: approve / edit / reject Updates, the approvals row, the audit trail.
        self._approval = ApprovalGate()

    # --- The process -----------------------------------------------------------------------

    @workflow.run
    async def run(self, params: BatchInput) -> BatchResult:
        if params.source_path is not None and params.state is None:
            await self._load_file(params)
        await self._begin(params)
        writer = asyncio.create_task(self._write_outcomes_as_they_come())
        try:
            while self._s.stop_status is None:
                if self._s.tenant_refusal is not None:
                    await self._tenant_budget_gate()
                    continue
                if self._s.paused_by is not None or self._gate is not None:
                    await workflow.wait_condition(
                        lambda: self._stopping() or (self._s.paused_by is None and not self._gate)
                    )
                    continue
                if not self._budget_allows_one_more():
                    await self._settle_budget()
                    continue
                if self._s.exhausted:
                    if await self._all_done():
                        break
                    continue
                slots = page_slots(self._options.concurrency, self._slow_in_flight)
                if slots == 0:  # slow-path calls hold every slot: wait for one
                    await workflow.wait_condition(
                        lambda: (
                            self._slow_in_flight < self._options.concurrency or self._must_hold()
                        )
                    )
                    continue
                quota = self._page_quota(slots)
                if quota == 0:
                    await self._continue_as_new(params)
                await self._run_page(slots, quota)
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
        counts = begun.counts
        self._s.counts, self._s.spent_usd = counts, begun.spent_usd
        self._s.priced_items = counts.ok + counts.failed - counts.invalid
        self._s.exhausted = False
        self._begun = True
        if params.state is None:
            await audit(
                "batch.started" if not params.retry_failed else "batch.retry_failed",
                self._options.tenant,
                {
                    "batch_id": self._batch_id,
                    "items": counts.total,
                    "pending": counts.pending,
                    "invalid": counts.invalid,
                    "retried": begun.retried,
                    "concurrency": self._options.concurrency,
                    "budget_usd": str(self._s.budget_usd) if self._s.budget_usd else None,
                },
            )

    async def _run_page(self, slots: int, quota: int) -> None:
        """Run one page and record what it reports. A pause, cancel or the tenant's budget
        running out cancels it: it finishes what is in flight and hands back the rest."""
        self._s.pages += 1
        # The page claims its items under this token; only it hands them back.
        token = f"{workflow.info().run_id}/page-{self._s.pages}"
        page = workflow.start_activity(
            RUN_BATCH_PAGE.name,
            PageInput(
                batch_id=self._batch_id,
                page_token=token,
                options=self._options,
                quota=quota,
                slots=slots,
                seconds=PAGE_SECONDS,
                budget_usd=self._s.budget_usd,
                spent_usd=self._s.spent_usd,
                counts=self._s.counts,
                priced_items=self._s.priced_items,
            ),
            result_type=PageResult,
            summary=f"page {self._s.pages}: up to {quota} items, {slots} at a time",
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            **BATCH_PAGE,
        )
        self._page, self._page_slots = page, slots
        try:
            await workflow.wait_condition(lambda: page.done() or self._must_hold())
            if not page.done():
                page.cancel()
            try:
                result: PageResult | None = await page
            except ActivityError:
                result = None
        finally:
            self._page, self._page_slots = None, 0
        if result is None:
            # Cancelled before it could report: its unanswered items go back in line.
            await call(
                RELEASE_BATCH_ITEMS,
                ReleaseInput(batch_id=self._batch_id, claim_token=token),
                **BATCH_DATABASE,
            )
            await self._recount()
            return
        self._record_page(result, token)

    def _record_page(self, result: PageResult, token: str) -> None:
        self._s.items_taken += result.claimed
        self._s.counts = result.counts
        self._s.spent_usd = result.spent_usd
        self._s.priced_items = result.priced_items
        if result.stop == PageStop.EXHAUSTED:
            self._s.exhausted = True
        elif result.stop == PageStop.TENANT_BUDGET and result.tenant_refusal:
            self._s.tenant_refusal = self._s.tenant_refusal or result.tenant_refusal
        elif result.stop == PageStop.FAILURE_RATE and self._s.stop_status is None:
            self._s.stop_status, self._s.stop_reason = "aborted", result.failure_reason
        for slow in result.slow:
            self._launch_slow(slow, token)

    # --- The slow path: down the rest of the route, one call at a time -------------------------

    def _launch_slow(self, slow: SlowItem, token: str) -> None:
        """``token`` is the page's claim, under which the item stays running until answered."""
        self._slow_in_flight += 1
        task = asyncio.create_task(self._run_slow(slow, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_slow(self, slow: SlowItem, token: str) -> None:
        item = slow.item
        # The rest of the chain, planned anew (breakers and budgets as they are now).
        request = item_llm_request(self._options, item.request).model_copy(
            update={"models": slow.remaining_models}
        )
        last_model, cause = slow.failed_models[-1]
        await audit(
            "llm.fallback",
            self._options.tenant,
            {
                "purpose": request.purpose,
                "from_model": last_model,
                "cause": cause,
                "to_model": slow.remaining_models[0],
            },
        )
        try:
            answer: LlmAnswer = await ask_llm(request)
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
                failed_models=[*slow.failed_models, *answer.failed_models],
            )
            self._s.counts.ok += 1
        except (ActivityError, ApplicationError) as error:
            if isinstance(error, ApplicationError) and error.type == TENANT_BUDGET_REFUSED:
                # Not the item's failure: it goes back in line and the batch waits at its gate.
                await call(
                    RELEASE_BATCH_ITEMS,
                    ReleaseInput(
                        batch_id=self._batch_id, custom_ids=[item.custom_id], claim_token=token
                    ),
                    **BATCH_DATABASE,
                )
                self._slow_in_flight -= 1
                self._s.counts.running -= 1
                self._s.counts.pending += 1
                self._s.exhausted = False
                self._s.tenant_refusal = self._s.tenant_refusal or error.message
                return
            error_class, message = _failure_of(error)
            outcome = ItemOutcome(
                custom_id=item.custom_id,
                status="failed",
                error_class=error_class,
                error_message=message,
                failed_models=slow.failed_models,
            )
            self._s.counts.failed += 1
        self._s.counts.running = max(0, self._s.counts.running - 1)
        self._outcomes.append(outcome)
        self._slow_in_flight -= 1
        self._check_failure_rate()

    async def _write_outcomes_as_they_come(self) -> None:
        """The slow path's outcomes, many per write; also meters the batch's spend."""
        while True:
            await workflow.wait_condition(lambda: bool(self._outcomes))
            batch = self._outcomes[:OUTCOMES_PER_WRITE]
            del self._outcomes[:OUTCOMES_PER_WRITE]
            self._writing = True
            try:
                result = await call(
                    RECORD_BATCH_ITEM_OUTCOMES,
                    RecordOutcomesInput(
                        batch_id=self._batch_id,
                        outcomes=batch,
                        meter_workflow_id=workflow.info().workflow_id,
                    ),
                    **BATCH_DATABASE,
                    summary=f"record {len(batch)} outcomes",
                )
            finally:
                self._writing = False
            if result.spent_usd is not None:
                self._s.spent_usd = result.spent_usd
                self._s.priced_items += len(batch)

    async def _written(self) -> None:
        await workflow.wait_condition(lambda: not self._outcomes and not self._writing)

    async def _all_done(self) -> bool:
        """Nothing was left to claim: done once the slow path has finished and been written,
        unless retry-failed put items back meanwhile (or a stop came)."""
        await workflow.wait_condition(
            lambda: (
                (self._slow_in_flight == 0 and not self._outcomes and not self._writing)
                or not self._s.exhausted
                or self._must_hold()
            )
        )
        return self._s.exhausted and self._slow_in_flight == 0 and not self._must_hold()

    async def _recount(self) -> None:
        self._s.counts = await call_local(
            SET_BATCH_STATUS,
            StatusInput(batch_id=self._batch_id, status=self._s.status, reason=self._s.reason),
            **BATCH_DATABASE_LOCAL,
        )

    # --- Stops, pauses, limits ------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._s.stop_status is not None

    def _must_hold(self) -> bool:
        return (
            self._stopping()
            or self._s.tenant_refusal is not None
            or self._s.paused_by is not None
            or self._gate is not None
        )

    def _check_failure_rate(self) -> None:
        counts = self._s.counts
        reason = failure_rate_crossed(
            self._options.max_failure_rate,
            counts.ok + counts.failed - counts.invalid,
            counts.failed - counts.invalid,
            counts.total - counts.invalid,
        )
        if reason is not None and self._s.stop_status is None:
            self._s.stop_status, self._s.stop_reason = "aborted", reason

    def _page_quota(self, slots: int) -> int:
        """Items the next page may take; 0: the run continues-as-new first."""
        info = workflow.info()
        if info.get_current_history_size() >= HISTORY_BYTES_LIMIT:
            return 0
        length = info.get_current_history_length()
        if workflow.patched(PAGES_RESERVE_THEIR_SLOW_CAP):
            room = history_room_for_pages(length, self._event_limit, self._slow_in_flight)
            return full_page_quota(slots, room)
        # Runs started before: every item taken reserved as if it could fall to the slow path.
        return page_quota(slots, history_room(length, self._event_limit, self._s.items_taken))

    async def _continue_as_new(self, params: BatchInput) -> None:
        """Let the slow path finish and its outcomes land, then start a fresh run with the
        state (a run's history holds only its own pages)."""
        await workflow.wait_condition(lambda: self._slow_in_flight == 0)
        await self._written()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            BatchInput(
                batch_id=self._batch_id,
                options=self._options,
                history_event_limit=self._event_limit,
                state=self._s,
            )
        )

    # --- Budget ------------------------------------------------------------------------------

    def _budget_allows_one_more(self) -> bool:
        return budget_allows_one_more(
            self._s.budget_usd, self._s.spent_usd, self._s.priced_items, self._slow_in_flight
        )

    async def _settle_budget(self) -> None:
        """Let the slow path finish, meter the ledger, and if even one more item would cross
        the budget, pause at a gate: raise the budget, or stop."""
        await workflow.wait_condition(lambda: self._slow_in_flight == 0 or self._stopping())
        await self._written()
        self._s.spent_usd = await call_local(
            METER_BATCH_SPEND,
            MeterInput(workflow_id=workflow.info().workflow_id),
            **BATCH_DATABASE_LOCAL,
        )
        if self._stopping() or self._budget_allows_one_more():
            return
        await self._open_budget_gate()

    async def _open_budget_gate(self) -> None:
        """Ask a person (role ``budget_role``) through the approval gate: approving raises the
        budget to the amount proposed, an edit raises it to the reviewer's amount, a rejection
        (or nobody deciding before the deadline) stops the batch."""
        budget = self._s.budget_usd
        assert budget is not None
        counts = self._s.counts
        remaining = counts.total - counts.finished
        suggested = suggested_budget(self._s.spent_usd, budget, self._s.priced_items, remaining)
        self._s.gates_opened += 1
        gate = _BudgetGate(f"budget-{self._s.gates_opened}", self._s.spent_usd, budget, suggested)
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
        await workflow.wait_condition(lambda: asking.done() or self._stopping())
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
            self._s.budget_usd = amount
            event, payload = "batch.budget_raised", {"budget_usd": str(amount)}
            if self._s.paused_by is None and not self._stopping():
                await self._set_status("running", None)
        else:
            self._s.stop_status = "cancelled"
            self._s.stop_reason = f"stopped at the budget gate: {describe(outcome)}"
            event, payload = "batch.budget_stop", {"outcome": outcome.status.value}
        await audit(
            event,
            self._options.tenant,
            {"batch_id": self._batch_id, "gate": gate.name, "spent_usd": str(gate.spent_usd)}
            | payload,
            actor=actor,
        )

    async def _tenant_budget_gate(self) -> None:
        """The tenant's budget refused a call: what is in flight finishes (it was covered), then
        a person raises the budget (``keel budget set``) and approves, or rejects to stop."""
        await workflow.wait_condition(lambda: self._slow_in_flight == 0)
        refusal = self._s.tenant_refusal or "the tenant's budget is spent"
        self._s.gates_opened += 1
        request = tenant_budget_gate(self._batch_id, self._options, self._s.gates_opened, refusal)
        await self._set_status("paused", request.reason)
        await audit(
            "batch.tenant_budget_gate_opened",
            request.tenant,
            {"batch_id": self._batch_id, "gate": request.gate, "refusal": refusal},
        )
        asking = asyncio.create_task(self._approval.request(request))
        await workflow.wait_condition(lambda: asking.done() or self._stopping())
        if not asking.done():
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            return
        outcome = asking.result()
        actor = ", ".join(outcome.decided_by) or "keel"
        if outcome.approved:
            # The refused items are pending again: the next page claims and checks them anew.
            self._s.tenant_refusal = None
            self._s.exhausted = False
            await audit(
                "batch.tenant_budget_resumed",
                request.tenant,
                {"batch_id": self._batch_id},
                actor=actor,
            )
            if self._s.paused_by is None and not self._stopping():
                await self._set_status("running", None)
        else:
            self._s.stop_status = "cancelled"
            self._s.stop_reason = f"stopped at the tenant budget gate: {describe(outcome)}"

    # --- Finishing ---------------------------------------------------------------------------

    async def _finish(self) -> BatchResult:
        await workflow.wait_condition(lambda: self._slow_in_flight == 0 and self._page is None)
        await self._written()
        status = self._s.stop_status or "completed"
        reason = self._s.stop_reason if self._s.stop_status else None
        counts = await call(
            SET_BATCH_STATUS,
            StatusInput(
                batch_id=self._batch_id,
                status=status,
                reason=reason,
                skip_pending=self._stopping(),
                skip_reason=f"not run: batch {status} ({reason})" if reason else None,
                final=True,
                budget_usd=self._s.budget_usd,
            ),
            **BATCH_DATABASE,
        )
        self._s.counts, self._s.status, self._s.reason = counts, status, reason
        self._s.spent_usd = await call_local(
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
                "runs": self._s.runs,
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
            spent_usd=self._s.spent_usd,
            runs=self._s.runs,
        )

    async def _set_status(self, status: str, reason: str | None) -> None:
        self._s.status, self._s.reason = status, reason
        await call_local(
            SET_BATCH_STATUS,
            StatusInput(batch_id=self._batch_id, status=status, reason=reason),
            **BATCH_DATABASE_LOCAL,
        )

    def _finishing(self) -> bool:
        return self._stopping() or self._s.status in (
            BatchStatus.COMPLETED,
            BatchStatus.CANCELLED,
            BatchStatus.ABORTED,
        )

    def _in_flight(self) -> int:
        return self._page_slots + self._slow_in_flight

    # --- Controls: updates answer back; their validators refuse what cannot be done ------------

    @workflow.update
    async def pause(self, request: ControlRequest) -> ControlAck:
        self._s.paused_by = request.by
        reason = f"paused by {request.by}" + (f": {request.reason}" if request.reason else "")
        await workflow.wait_condition(lambda: self._begun)
        await self._set_status("paused", reason)
        await audit(
            "batch.paused", self._options.tenant, {"batch_id": self._batch_id}, actor=request.by
        )
        in_flight = self._in_flight()
        return ControlAck(
            status="paused",
            in_flight=in_flight,
            message=f"no new items start; at most {in_flight} in flight will finish",
        )

    @pause.validator
    def _validate_pause(self, request: ControlRequest) -> None:
        if self._finishing():
            raise _refusal(f"batch {self._batch_id} is {self._stop_word()}; nothing to pause")
        if self._s.paused_by is not None:
            raise _refusal(f"batch {self._batch_id} is already paused (by {self._s.paused_by})")

    @workflow.update
    async def resume(self, request: ControlRequest) -> ControlAck:
        self._s.paused_by = None
        await workflow.wait_condition(lambda: self._begun)
        if self._gate is None:
            await self._set_status("running", None)
        await audit(
            "batch.resumed", self._options.tenant, {"batch_id": self._batch_id}, actor=request.by
        )
        return ControlAck(
            status="running", in_flight=self._in_flight(), message="items start again"
        )

    @resume.validator
    def _validate_resume(self, request: ControlRequest) -> None:
        if self._finishing():
            raise _refusal(f"batch {self._batch_id} is {self._stop_word()}; nothing to resume")
        if self._s.paused_by is None:
            if self._s.tenant_refusal is not None:
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
        self._s.stop_status, self._s.stop_reason = "cancelled", reason
        in_flight = self._in_flight()
        return ControlAck(
            status="cancelling",
            in_flight=in_flight,
            message=f"pending items will be skipped; at most {in_flight} in flight will finish",
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
            counts = self._s.counts
            counts.failed -= reset
            counts.pending += reset
            self._s.priced_items = max(0, self._s.priced_items - reset)
            self._s.exhausted = False
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
        return "stopping" if self._stopping() else self._s.status

    @workflow.query
    def progress(self) -> BatchProgress:
        counts = self._s.counts
        stopping = self._s.stop_status is not None
        return BatchProgress(
            batch_id=self._batch_id,
            status=f"{self._s.stop_status} (finishing)" if stopping else self._s.status,
            reason=self._s.stop_reason if stopping else self._s.reason,
            in_flight=self._in_flight(),
            total=counts.total,
            ok=counts.ok,
            failed=counts.failed,
            skipped=counts.skipped,
            spent_usd=self._s.spent_usd,
            budget_usd=self._s.budget_usd,
            pending_gate=self._gate.name if self._gate else None,
            runs=self._s.runs,
            history_length=workflow.info().get_current_history_length(),
        )
