"""ProviderBatchWorkflow: a batch through the providers' batch APIs (half price, within 24 h),
waiting durably, then whatever is left through the live path.

It reads top to bottom like the process:

1. plan a round: the pending items grouped by provider and model, split at each provider's
   limits (chunks, rows in ``provider_batch_chunks``; the workflow holds only their ids);
2. submit each chunk once its worst case fits the batch's budget and the tenant's (else wait at
   the budget gate or the tenant budget gate), unless paused (unsubmitted chunks are held) or
   past the deadline;
3. wait with timers, backing off between polls — no worker slot is held while the provider works,
   and a timer survives restarts of workers, the Temporal server and Postgres;
4. collect each ended chunk: answers into ``batch_items`` and the ledger at batch prices; lines
   the provider failed, expired or cancelled go back to pending; once lines it refused cross
   ``--max-failure-rate``, the batch stops there, aborted as a live batch would be (nothing more
   is submitted, nothing runs live);
5. another round for those while rounds and the deadline allow; at the deadline, what the
   provider has not finished is cancelled there (its answered lines are still collected);
6. anything still pending runs live: the run continues as new as the live
   ``PagedBatchWorkflow`` under the same workflow id, so the ledger meters one batch and the
   controls keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import timedelta
from decimal import ROUND_UP, Decimal

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        CANCEL_PROVIDER_CHUNK,
        COLLECT_PROVIDER_CHUNK,
        METER_BATCH_SPEND,
        PLAN_PROVIDER_CHUNKS,
        POLL_PROVIDER_CHUNK,
        SET_BATCH_STATUS,
        SUBMIT_PROVIDER_CHUNK,
    )
    from contracts.approvals import DefaultAction, GateOutcome, GateRequest
    from contracts.batch import (
        BatchCounts,
        BatchInput,
        BatchResult,
        BatchRunState,
        BatchStatus,
        ControlAck,
        ControlRequest,
        MeterInput,
        RetryFailedAck,
        StatusInput,
        tenant_budget_gate,
    )
    from contracts.batch_pacing import failure_rate_crossed
    from contracts.provider_batch import (
        ChunkInput,
        ChunkRef,
        ChunkState,
        PlanChunksInput,
        ProviderBatchInput,
    )
    from workflows.activity_calls import BATCH_DATABASE, PROVIDER_BATCH_CALL, call
    from workflows.approval_gate import ApprovalGate, describe
    from workflows.llm_calls import audit

# The live engine's registered name: what is left after the provider rounds continues as it.
LIVE_BATCH_WORKFLOW = "PagedBatchWorkflow"
REFUSED = "BatchControlRefused"
# workflow.patched id: --max-failure-rate is judged after each collected chunk.
FAILURE_RATE_PATCH = "provider-batch-max-failure-rate"


def _refusal(message: str) -> ApplicationError:
    return ApplicationError(message, type=REFUSED, non_retryable=True)


def _cents_up(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_UP)


def _dollars(text: str | None) -> Decimal | None:
    try:
        amount = Decimal((text or "").strip().lstrip("$").replace(",", ""))
    except ArithmeticError:
        return None
    return amount if amount.is_finite() and amount > 0 else None


@workflow.defn(name="ProviderBatchWorkflow")
class ProviderBatchWorkflow:
    @workflow.init
    def __init__(self, params: ProviderBatchInput) -> None:
        self._params = params
        self._batch_id = params.batch_id
        self._options = params.options
        self._budget = params.options.budget_usd
        self._paused_by: str | None = None
        # Set once: why the batch stops, and the status it finishes with (cancelled, aborted).
        self._stop: str | None = None
        self._stop_status = BatchStatus.CANCELLED.value
        self._wake = False
        self._status = BatchStatus.RUNNING.value
        # Worst cases of the chunks at the provider and not yet collected (the budget's
        # reservations), by chunk id.
        self._reserved: dict[str, Decimal] = {}
        self._spent = Decimal(0)
        self._gates_opened = 0
        self._rounds = 0
        # For --max-failure-rate: items that ran (answered or failed as invalid by a provider)
        # and of those failed, malformed lines excluded (as the live engine counts them).
        self._ran = 0
        self._ran_failed = 0
        self._runnable = 0
        self._chunks: dict[str, ChunkState] = {}
        self._cancelled_at_provider = False
        self._approval = ApprovalGate()

    # --- The process -------------------------------------------------------------------------

    @workflow.run
    async def run(self, params: ProviderBatchInput) -> BatchResult:
        counts = await self._set_status(BatchStatus.RUNNING.value, "provider batch")
        self._ran = counts.ok + counts.failed - counts.invalid
        self._ran_failed = counts.failed - counts.invalid
        self._runnable = counts.total - counts.invalid
        round_no = 0
        while self._stop is None and round_no < params.settings.max_rounds:
            if self._past_deadline():
                break
            plan = await call(
                PLAN_PROVIDER_CHUNKS,
                PlanChunksInput(
                    batch_id=self._batch_id,
                    options=self._options,
                    round=round_no,
                    max_requests_per_chunk=params.settings.max_requests_per_chunk,
                ),
                **BATCH_DATABASE,
                summary=f"plan round {round_no}",
            )
            if not plan.chunks:
                break
            self._rounds = round_no + 1
            await self._run_round(plan.chunks)
            round_no += 1
        return await self._finish()

    async def _run_round(self, chunks: list[ChunkRef]) -> None:
        waiting = deque(chunks)
        at_provider: list[ChunkRef] = []
        delay = self._params.settings.poll_initial_seconds
        while waiting or at_provider:
            while waiting and self._may_submit():
                chunk = waiting[0]
                if not await self._budget_allows(chunk):
                    break
                state = await self._submit(chunk)
                if state is None:
                    break
                waiting.popleft()
                at_provider.append(chunk)
                self._reserved[chunk.chunk_id] = chunk.worst_case_usd or Decimal(0)
            if self._stop is not None or self._past_deadline():
                await self._withdraw(waiting, at_provider)
                waiting.clear()
            if not at_provider:
                if not waiting:
                    return
                # Paused with nothing at the provider: wait for a control (or the deadline).
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._may_submit() or self._stop is not None,
                        timeout=self._until_deadline(),
                    )
                continue
            await self._sleep(delay)
            delay = min(delay * 2, self._params.settings.poll_max_seconds)
            for chunk in list(at_provider):
                state = await call(
                    POLL_PROVIDER_CHUNK,
                    ChunkInput(chunk_id=chunk.chunk_id),
                    **PROVIDER_BATCH_CALL,
                    summary=f"poll {chunk.chunk_id}",
                )
                self._chunks[chunk.chunk_id] = state
                if not state.provider_ended:
                    continue
                collected = await call(
                    COLLECT_PROVIDER_CHUNK,
                    ChunkInput(chunk_id=chunk.chunk_id),
                    **PROVIDER_BATCH_CALL,
                    summary=f"collect {chunk.chunk_id}",
                )
                at_provider.remove(chunk)
                self._reserved.pop(chunk.chunk_id, None)
                self._spent += collected.cost_usd
                self._ran += collected.succeeded + collected.failed
                self._ran_failed += collected.failed
                await audit(
                    "batch.provider_chunk_ended",
                    self._options.tenant,
                    {
                        "batch_id": self._batch_id,
                        "chunk": chunk.chunk_id,
                        "provider_status": state.provider_status,
                        "succeeded": collected.succeeded,
                        "failed": collected.failed,
                        "returned": collected.returned,
                        "cost_usd": str(collected.cost_usd),
                    },
                )
                self._check_failure_rate()

    async def _submit(self, chunk: ChunkRef) -> ChunkState | None:
        """Submit the chunk; while the tenant's budget refuses it, ask at the tenant budget
        gate (None: the batch stops, or was paused meanwhile)."""
        while True:
            state = await call(
                SUBMIT_PROVIDER_CHUNK,
                ChunkInput(chunk_id=chunk.chunk_id),
                **PROVIDER_BATCH_CALL,
                summary=f"submit {chunk.chunk_id}",
            )
            self._chunks[chunk.chunk_id] = state
            if state.budget_refusal is None:
                return state
            await self._tenant_budget_gate(state.budget_refusal)
            if not self._may_submit():
                return None

    def _check_failure_rate(self) -> None:
        """--max-failure-rate, as the live engine judges it: once crossed, no more chunks are
        submitted, those at the provider are cancelled there, and the batch finishes aborted
        (what is left is skipped, not run live)."""
        reason = failure_rate_crossed(
            self._options.max_failure_rate, self._ran, self._ran_failed, self._runnable
        )
        # Runs begun before this rule went on as they were (their histories say so).
        if reason is not None and self._stop is None and workflow.patched(FAILURE_RATE_PATCH):
            self._stop_status, self._stop = BatchStatus.ABORTED.value, reason

    async def _withdraw(self, waiting: deque[ChunkRef], at_provider: list[ChunkRef]) -> None:
        """Cancel: chunks not yet submitted are withdrawn (items back to pending), those at the
        provider cancelled there (what it answered by then is still collected)."""
        for chunk in waiting:
            self._chunks[chunk.chunk_id] = await call(
                CANCEL_PROVIDER_CHUNK, ChunkInput(chunk_id=chunk.chunk_id), **PROVIDER_BATCH_CALL
            )
        if self._cancelled_at_provider:
            return
        self._cancelled_at_provider = True
        for chunk in at_provider:
            await call(
                CANCEL_PROVIDER_CHUNK,
                ChunkInput(chunk_id=chunk.chunk_id),
                **PROVIDER_BATCH_CALL,
                summary=f"cancel {chunk.chunk_id}",
            )

    async def _finish(self) -> BatchResult:
        if self._stop is not None:
            counts = await call(
                SET_BATCH_STATUS,
                StatusInput(
                    batch_id=self._batch_id,
                    status=self._stop_status,
                    reason=self._stop,
                    skip_pending=True,
                    skip_reason=f"not run: batch {self._stop_status} ({self._stop})",
                    final=True,
                    budget_usd=self._budget,
                ),
                **BATCH_DATABASE,
            )
            status, reason = self._stop_status, self._stop
        else:
            # A pause holds on into the live run (the batch's row says so meanwhile).
            paused = self._paused_by is not None
            status_now = BatchStatus.PAUSED.value if paused else BatchStatus.RUNNING.value
            reason_now = f"paused by {self._paused_by}" if paused else "provider batches done"
            counts = await call(
                SET_BATCH_STATUS,
                StatusInput(
                    batch_id=self._batch_id,
                    status=status_now,
                    reason=reason_now,
                    budget_usd=self._budget,
                ),
                **BATCH_DATABASE,
            )
            if counts.pending:
                await audit(
                    "batch.provider_to_live",
                    self._options.tenant,
                    {"batch_id": self._batch_id, "items": counts.pending, "rounds": self._rounds},
                )
                await workflow.wait_condition(workflow.all_handlers_finished)
                # Same workflow id: one ledger, one budget (spend so far included), one set of
                # controls; the live engine releases nothing (no item is claimed now). It goes
                # on from this run's state: the budget as raised, a pause, the gates' numbering.
                workflow.continue_as_new(
                    args=[
                        BatchInput(
                            batch_id=self._batch_id,
                            options=self._options,
                            state=BatchRunState(
                                budget_usd=self._budget,
                                gates_opened=self._gates_opened,
                                status=status_now,
                                reason=reason_now if paused else None,
                                paused_by=self._paused_by,
                            ),
                        )
                    ],
                    workflow=LIVE_BATCH_WORKFLOW,
                )
            counts = await call(
                SET_BATCH_STATUS,
                StatusInput(
                    batch_id=self._batch_id,
                    status=BatchStatus.COMPLETED.value,
                    final=True,
                    budget_usd=self._budget,
                ),
                **BATCH_DATABASE,
            )
            status, reason = BatchStatus.COMPLETED.value, None
        self._status = status
        spent = await call(
            METER_BATCH_SPEND, MeterInput(workflow_id=workflow.info().workflow_id), **BATCH_DATABASE
        )
        await audit(
            f"batch.{status}",
            self._options.tenant,
            {
                "batch_id": self._batch_id,
                "via": "provider",
                "total": counts.total,
                "ok": counts.ok,
                "failed": counts.failed,
                "rounds": self._rounds,
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
            spent_usd=spent,
            runs=1,
        )

    # --- Time ------------------------------------------------------------------------------------

    def _past_deadline(self) -> bool:
        deadline = self._params.deadline
        return deadline is not None and workflow.now() >= deadline

    def _until_deadline(self) -> timedelta | None:
        deadline = self._params.deadline
        if deadline is None or self._past_deadline():
            return None
        return deadline - workflow.now()

    async def _sleep(self, seconds: float) -> None:
        """A durable timer (no worker slot), cut short by a control or the deadline."""
        timeout = timedelta(seconds=seconds)
        until_deadline = self._until_deadline()
        if until_deadline is not None and not self._cancelled_at_provider:
            timeout = min(timeout, until_deadline)
        self._wake = False
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._wake, timeout=timeout)

    def _may_submit(self) -> bool:
        return self._stop is None and self._paused_by is None and not self._past_deadline()

    # --- Budget ----------------------------------------------------------------------------------

    async def _budget_allows(self, chunk: ChunkRef) -> bool:
        """The chunk's worst case fits what is left once the spend and the chunks at the
        provider (at their worst) are counted; if not, ask at the budget gate."""
        while self._budget is not None and chunk.worst_case_usd is not None:
            self._spent = await call(
                METER_BATCH_SPEND,
                MeterInput(workflow_id=workflow.info().workflow_id),
                **BATCH_DATABASE,
            )
            committed = self._spent + sum(self._reserved.values(), Decimal(0))
            if committed + chunk.worst_case_usd <= self._budget:
                return True
            await self._budget_gate(committed, chunk)
            if self._stop is not None:
                return False
        return True

    async def _budget_gate(self, committed: Decimal, chunk: ChunkRef) -> None:
        assert self._budget is not None and chunk.worst_case_usd is not None
        suggested = max(
            _cents_up(committed + chunk.worst_case_usd), _cents_up(self._budget) + Decimal("0.01")
        )
        self._gates_opened += 1
        name = f"budget-{self._gates_opened}"
        reason = (
            f"budget: ${self._spent:.4f} spent and ${committed - self._spent:.4f} reserved for "
            f"provider batches of ${self._budget:.2f}; chunk {chunk.chunk_id} ({chunk.items} "
            f"items) may cost up to ${chunk.worst_case_usd:.4f}"
        )
        await self._set_status(BatchStatus.PAUSED.value, reason)
        await audit(
            "batch.budget_gate_opened",
            self._options.tenant,
            {
                "batch_id": self._batch_id,
                "gate": name,
                "spent_usd": str(self._spent),
                "budget_usd": str(self._budget),
                "suggested_usd": str(suggested),
                "chunk": chunk.chunk_id,
            },
        )
        outcome = await self._ask(
            GateRequest(
                gate=name,
                draft=f"{suggested:.2f}",
                reason=reason,
                role=self._options.budget_role,
                tenant=self._options.tenant,
                subject=f"batch {self._batch_id}: raise the budget to ${suggested:.2f}, or stop",
                deadline=self._options.budget_gate_deadline,
                default_action=DefaultAction.REJECT,
            )
        )
        if outcome is None:
            return
        amount = _dollars(outcome.final) if outcome.approved else None
        if amount is not None and amount > self._budget:
            self._budget = amount
            await audit(
                "batch.budget_raised",
                self._options.tenant,
                {"batch_id": self._batch_id, "gate": name, "budget_usd": str(amount)},
                actor=", ".join(outcome.decided_by) or "keel",
            )
            await self._set_status(
                BatchStatus.PAUSED.value if self._paused_by else BatchStatus.RUNNING.value,
                f"paused by {self._paused_by}" if self._paused_by else None,
            )
        elif not outcome.approved:
            self._stop = f"stopped at the budget gate: {describe(outcome)}"

    async def _tenant_budget_gate(self, refusal: str) -> None:
        """The tenant's budget (not the batch's) cannot cover a chunk: a person raises it
        (``keel budget set``) and approves, and the chunk is offered again; or rejects, and the
        batch stops. As the live engine's gate, named ``tenant-budget-N``."""
        self._gates_opened += 1
        request = tenant_budget_gate(self._batch_id, self._options, self._gates_opened, refusal)
        tenant, name = request.tenant, request.gate
        await self._set_status(BatchStatus.PAUSED.value, request.reason)
        await audit(
            "batch.tenant_budget_gate_opened",
            tenant,
            {"batch_id": self._batch_id, "gate": name, "refusal": refusal},
        )
        outcome = await self._ask(request)
        if outcome is None:
            return
        if outcome.approved:
            await audit(
                "batch.tenant_budget_resumed",
                tenant,
                {"batch_id": self._batch_id, "gate": name},
                actor=", ".join(outcome.decided_by) or "keel",
            )
            await self._set_status(
                BatchStatus.PAUSED.value if self._paused_by else BatchStatus.RUNNING.value,
                f"paused by {self._paused_by}" if self._paused_by else None,
            )
        else:
            self._stop = f"stopped at the tenant budget gate: {describe(outcome)}"

    async def _ask(self, request: GateRequest) -> GateOutcome | None:
        """The gate's outcome, or None when the batch was cancelled while it waited."""
        asking = asyncio.create_task(self._approval.request(request))
        await workflow.wait_condition(lambda: asking.done() or self._stop is not None)
        if not asking.done():
            asking.cancel()
            return None
        return asking.result()

    # --- Status ----------------------------------------------------------------------------------

    async def _set_status(self, status: str, reason: str | None) -> BatchCounts:
        self._status = status
        return await call(
            SET_BATCH_STATUS,
            StatusInput(
                batch_id=self._batch_id, status=status, reason=reason, budget_usd=self._budget
            ),
            **BATCH_DATABASE,
        )

    def _finished(self) -> bool:
        return self._stop is not None or self._status in (
            BatchStatus.COMPLETED.value,
            BatchStatus.CANCELLED.value,
            BatchStatus.ABORTED.value,
        )

    # --- Controls: the live batch's names and shapes, so `keel batch pause|resume|cancel` work --

    @workflow.update
    async def pause(self, request: ControlRequest) -> ControlAck:
        self._paused_by = request.by
        await self._set_status(BatchStatus.PAUSED.value, f"paused by {request.by}")
        await audit(
            "batch.paused", self._options.tenant, {"batch_id": self._batch_id}, actor=request.by
        )
        return ControlAck(
            status="paused",
            in_flight=len(self._reserved),
            message=f"no more provider batches are submitted; {len(self._reserved)} at the "
            "provider will finish",
        )

    @pause.validator
    def _validate_pause(self, request: ControlRequest) -> None:
        if self._finished():
            raise _refusal(f"batch {self._batch_id} is {self._status}; nothing to pause")
        if self._paused_by is not None:
            raise _refusal(f"batch {self._batch_id} is already paused (by {self._paused_by})")

    @workflow.update
    async def resume(self, request: ControlRequest) -> ControlAck:
        self._paused_by = None
        self._wake = True
        await self._set_status(BatchStatus.RUNNING.value, None)
        await audit(
            "batch.resumed", self._options.tenant, {"batch_id": self._batch_id}, actor=request.by
        )
        return ControlAck(
            status="running", in_flight=len(self._reserved), message="provider batches resume"
        )

    @resume.validator
    def _validate_resume(self, request: ControlRequest) -> None:
        if self._finished():
            raise _refusal(f"batch {self._batch_id} is {self._status}; nothing to resume")
        if self._paused_by is None:
            raise _refusal(f"batch {self._batch_id} is not paused")

    @workflow.update
    async def cancel(self, request: ControlRequest) -> ControlAck:
        self._stop = f"cancelled by {request.by}" + (
            f": {request.reason}" if request.reason else ""
        )
        self._wake = True
        return ControlAck(
            status="cancelling",
            in_flight=len(self._reserved),
            message=f"{len(self._reserved)} provider batch(es) are cancelled at the provider; "
            "what they answered is kept, the rest is skipped",
        )

    @cancel.validator
    def _validate_cancel(self, request: ControlRequest) -> None:
        if self._finished():
            raise _refusal(f"batch {self._batch_id} is {self._status}; nothing to cancel")

    @workflow.update
    async def retry_failed(self, request: ControlRequest) -> RetryFailedAck:
        raise _refusal("unreachable: the validator refuses")  # pragma: no cover

    @retry_failed.validator
    def _validate_retry_failed(self, request: ControlRequest) -> None:
        raise _refusal(
            f"batch {self._batch_id} is still at its providers; once it has finished, "
            f"keel batch retry-failed {self._batch_id} runs its failed items live"
        )
