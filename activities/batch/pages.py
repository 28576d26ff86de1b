"""A page of a batch: many items answered inside one activity, under the batch's concurrency cap.

The page driver of the LLM call pipeline (activities/llm/pipeline.py): each item's call keeps
every guarantee of ``complete_chat`` — the retry policy (backoff, attempts, Retry-After, the
call's deadline), error classes, the shared breaker, budget reservations, shared rate limits, one
ledger row per attempt with its cost — but the database work is done for many items at once
(batch items never ask for the response cache: it is opt-in per call, for temperature 0):

* items are claimed a chunk per statement (the page claims more itself to keep its slots full);
* attempts are admitted in groups (group commit): one transaction locks the tenant's budget once,
  takes the rate-limit slots once and writes every ``in_flight`` row, and it commits before any of
  those calls reaches its provider — a dead worker's calls are in the ledger, as for one call;
* completed ledger rows, their metered spend and the items' outcomes are written together, many
  per statement, every ``FLUSH_SECONDS`` or ``FLUSH_ROWS`` rows;
* breaker states are read once and refreshed every ``BREAKER_REFRESH_SECONDS``.

``batch_items`` stays the truth of each item, so a retried page (its worker killed, a heartbeat
timeout) resumes: items it finished are done, its calls left ``in_flight`` are marked
``interrupted``, its claimed items run again, counting their earlier attempts from the ledger.

An item that fails for good on its model goes back to the workflow when its route has more models
(the slow path: ``ask_llm`` down the rest of the chain, one activity per call, audit rows); with
nothing left to try it is recorded failed here. A slow-path item keeps its slot until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.batch.items import count_items, ledger_spend, record_outcomes
from activities.llm import circuit_breaker, retries
from activities.llm.activities import route_plan
from activities.llm.errors import ClassifiedError
from activities.llm.ledger import AttemptRecord
from activities.llm.pipeline import (
    Admission,
    Attempt,
    AttemptKey,
    BreakerView,
    Finished,
    ProviderSource,
    admit,
    after_failure,
    answered_usage,
    breaker_config,
    call_policy,
    call_provider,
    failed_cost,
    failed_usage,
    failure_message,
    observe_breakers,
    prompt_too_large,
    retry_decision,
    settle,
    write_completed,
)
from activities.llm.pricing import price_usd
from contracts.batch import (
    ClaimedItem,
    ItemOutcome,
    ItemRequest,
    PageInput,
    PageProgress,
    PageResult,
    PageStop,
    SlowItem,
    item_llm_request,
)
from contracts.batch_pacing import (
    MAX_SLOW_ITEMS,
    budget_allows_one_more,
    failure_rate_crossed,
)
from contracts.llm import (
    CHAIN_STOPPERS,
    AttemptInput,
    CallPolicy,
    ErrorClass,
    LlmRequest,
    ModelCandidate,
    RoutePlan,
    Usage,
    provider_for_model,
)
from infra.settings import KeelSettings

log = structlog.get_logger(__name__)

FLUSH_SECONDS = 0.15
FLUSH_ROWS = 250
HEARTBEAT_SECONDS = 1.0
BREAKER_REFRESH_SECONDS = 5.0

# Take the next pending items in file order for this page (its token marks them running).
_CLAIM = text(
    """
    WITH page AS (
        SELECT id FROM batch_items
         WHERE batch_id = :batch_id AND status = 'pending'
         ORDER BY line_no LIMIT :limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE batch_items AS item
       SET status = 'running', claim_token = :token, run_count = item.run_count + 1,
           updated_at = now()
      FROM page
     WHERE item.id = page.id
    RETURNING item.custom_id, item.line_no, item.request
    """
)
# What an earlier attempt of this page claimed and did not finish.
_RESUME = text(
    """
    SELECT custom_id, line_no, request FROM batch_items
     WHERE batch_id = :batch_id AND claim_token = :token AND status = 'running'
     ORDER BY line_no
    """
)
_CLAIMED_BEFORE = text(
    "SELECT count(*) FROM batch_items WHERE batch_id = :batch_id AND claim_token = :token"
)
# Calls an earlier attempt of this page left in flight ended with it: interrupted, no cost.
_INTERRUPT = text(
    """
    UPDATE llm_calls SET outcome = 'interrupted',
           error_message = 'the worker stopped during this page; attempt ' || :attempt
                           || ' of the page took over'
     WHERE workflow_id = :workflow_id AND run_id = :run_id
       AND starts_with(activity_id, :prefix) AND outcome = 'in_flight'
    """
)
# started_at: a finished row's created_at is its end, so its latency is taken off.
_EARLIER = text(
    """
    SELECT activity_id, attempt, outcome, error_class,
           created_at - make_interval(secs => latency_ms / 1000.0) AS started_at
      FROM llm_calls
     WHERE workflow_id = :workflow_id AND run_id = :run_id AND starts_with(activity_id, :prefix)
     ORDER BY activity_id, attempt
    """
)
_RELEASE = text(
    """
    UPDATE batch_items SET status = 'pending', claim_token = NULL, run_count = run_count - 1
     WHERE batch_id = :batch_id AND claim_token = :token AND status = 'running'
       AND NOT custom_id = ANY(:keep)
    """
)


class BatchPageActivities:
    """The page activity with what it depends on: the worker's settings, its database sessions
    and the provider clients its settings configure."""

    def __init__(
        self,
        settings: KeelSettings,
        sessions: async_sessionmaker[AsyncSession],
        providers: ProviderSource,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._providers = providers

    def all(self) -> list[Callable[..., Any]]:
        return [self.run_batch_page]

    @activity.defn(name="run_batch_page")
    async def run_batch_page(self, page: PageInput) -> PageResult:
        return await _Page(page, self._settings, self._sessions, self._providers).run()


@dataclass
class _Pending:
    """What the flusher writes next."""

    completed: list[AttemptRecord] = field(default_factory=list)
    outcomes: list[ItemOutcome] = field(default_factory=list)
    # Attempts that finished, for the limiter refunds and the breakers (pipeline.settle).
    finished: list[Finished] = field(default_factory=list)

    def rows(self) -> int:
        return len(self.completed) + len(self.outcomes)


@dataclass
class _Tried:
    """How one attempt ended: answered (no failure), or its failure."""

    failure: ClassifiedError | None = None
    budget_refused: bool = False
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = None


@dataclass
class _ItemEnd:
    outcome: ItemOutcome | None = None
    slow: SlowItem | None = None
    tenant_refusal: str | None = None


class _Page:
    def __init__(
        self,
        page: PageInput,
        settings: KeelSettings,
        sessions: async_sessionmaker[AsyncSession],
        providers: ProviderSource,
    ) -> None:
        info = activity.info()
        self._page, self._settings, self._sessions = page, settings, sessions
        self._providers = providers
        self._workflow_id = info.workflow_id or ""
        self._run_id = info.workflow_run_id
        # Each item's calls are ``<page activity id>/<line>`` in the ledger, attempts counted
        # per item: the same key across the page's attempts, so a retried page continues them.
        self._prefix = f"page-{info.activity_id}/"
        self._page_attempt = info.attempt
        self._started = time.monotonic()
        self._config = breaker_config(settings)
        self._queue: deque[ClaimedItem] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._prior: dict[int, retries.PriorAttempts] = {}
        # When each resumed item's first attempt started: its deadline runs from there, not from
        # this attempt of the page (a retried page does not give its items more time).
        self._first_started: dict[int, datetime] = {}
        # One planning per request shape, shared by every item of that shape that asks at once.
        self._plans: dict[str, asyncio.Task[RoutePlan]] = {}
        self._breakers_lock = asyncio.Lock()
        self._breakers: BreakerView = {}
        self._breakers_read = 0.0
        self._pending = _Pending()
        self._urgent = asyncio.Event()
        # Calls waiting for their admission (written by the admission loop, apart from the
        # completions: an admission never waits behind a completion write).
        self._admissions: list[tuple[Attempt, asyncio.Future[Admission]]] = []
        self._admission_wanted = asyncio.Event()
        self._item_done = asyncio.Event()
        self._flush_error: BaseException | None = None
        self._closing = False
        self._claimed = 0
        self._exhausted = False
        self._stop = PageStop.NONE
        self._failure_reason: str | None = None
        self._tenant_refusal: str | None = None
        self._slow: list[SlowItem] = []
        self._answered = self._failed = 0
        counts = page.counts
        self._ran = counts.ok + counts.failed - counts.invalid
        self._ran_failed = counts.failed - counts.invalid
        self._runnable = counts.total - counts.invalid
        self._spent = page.spent_usd
        self._priced = page.priced_items

    # --- The page's process --------------------------------------------------------------------

    async def run(self) -> PageResult:
        await self._resume()
        flusher = asyncio.create_task(self._flush_loop())
        admitter = asyncio.create_task(self._admission_loop())
        beating = asyncio.create_task(self._heartbeat_loop())
        try:
            try:
                await self._fill_slots()
            except asyncio.CancelledError:
                details = activity.cancellation_details()
                if details is None or not details.cancel_requested:
                    # Not the workflow's cancel: the page timed out (its heartbeat was late) or
                    # the worker is shutting down, and another attempt owns the page now. It
                    # writes nothing more: the next attempt marks these calls interrupted and
                    # answers their items, so no item gets two results.
                    await self._abandon()
                    raise
                # The workflow cancelled the page (pause, cancel, a gate), noticed through the
                # heartbeat: start nothing more; the calls in flight finish and are recorded.
                self._stop = PageStop.CANCELLED
            await self._drain()
            # Every answer written before anything is handed back: only running items take an
            # outcome, so a released item would lose one still waiting for the flush.
            self._closing = True
            self._urgent.set()
            self._admission_wanted.set()
            await admitter
            await flusher
            if self._flush_error is not None:
                raise self._flush_error
            await self._release_unanswered()
            async with self._sessions() as session:
                counts = await count_items(session, self._page.batch_id)
                spent = await ledger_spend(session, self._workflow_id)
        finally:
            beating.cancel()
            flusher.cancel()
            admitter.cancel()
        log.info(
            "batch.page_done",
            batch_id=self._page.batch_id,
            answered=self._answered,
            failed=self._failed,
            slow=len(self._slow),
            stop=self._stop.value,
            seconds=round(time.monotonic() - self._started, 2),
        )
        return PageResult(
            claimed=self._claimed,
            answered=self._answered,
            failed=self._failed,
            counts=counts,
            spent_usd=spent,
            priced_items=self._priced,
            slow=self._slow,
            stop=self._stop,
            tenant_refusal=self._tenant_refusal,
            failure_reason=self._failure_reason,
        )

    async def _resume(self) -> None:
        """Take back what an earlier attempt of this page claimed and did not finish."""
        page = self._page
        if self._page_attempt == 1:
            return
        parameters = {
            "workflow_id": self._workflow_id,
            "run_id": self._run_id,
            "prefix": self._prefix,
        }
        async with self._sessions.begin() as session:
            await session.execute(_INTERRUPT, {**parameters, "attempt": str(self._page_attempt)})
            earlier = await session.execute(_EARLIER, parameters)
            rows: dict[int, list[tuple[int, str, str | None]]] = {}
            for row in earlier:
                line = int(row.activity_id.removeprefix(self._prefix))
                rows.setdefault(line, []).append((row.attempt, row.outcome, row.error_class))
                first = self._first_started.get(line)
                self._first_started[line] = min(first or row.started_at, row.started_at)
            token = {"batch_id": page.batch_id, "token": page.page_token}
            resumed = list(await session.execute(_RESUME, token))
            self._claimed = int(await session.scalar(_CLAIMED_BEFORE, token) or 0)
        for line, attempts in rows.items():
            next_attempt = max(attempt for attempt, _, _ in attempts) + 1
            self._prior[line] = retries.PriorAttempts.from_ledger(next_attempt, attempts)
        self._queue.extend(self._claimed_item(row) for row in resumed)

    async def _fill_slots(self) -> None:
        """Keep the page's slots full until its quota or time is used, or something stops it."""
        while True:
            if self._flush_error is not None:
                raise self._flush_error
            self._check_limits()
            while self._can_launch() and self._queue:
                self._launch(self._queue.popleft())
            if self._stop == PageStop.NONE and not self._queue and self._may_claim():
                await self._claim()
                if self._queue:
                    continue
            if not self._tasks and (not self._queue or self._stop != PageStop.NONE):
                if self._stop == PageStop.NONE and self._exhausted:
                    self._stop = PageStop.EXHAUSTED
                return
            self._item_done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._item_done.wait(), timeout=HEARTBEAT_SECONDS)

    def _check_limits(self) -> None:
        if self._stop != PageStop.NONE:
            return
        reason = failure_rate_crossed(
            self._page.options.max_failure_rate, self._ran, self._ran_failed, self._runnable
        )
        if reason is not None:
            self._stop, self._failure_reason = PageStop.FAILURE_RATE, reason
        elif self._tenant_refusal is not None:
            self._stop = PageStop.TENANT_BUDGET
        elif len(self._slow) >= min(self._page.slots, MAX_SLOW_ITEMS):
            self._stop = PageStop.SLOTS_HELD
        elif (
            not budget_allows_one_more(
                self._page.budget_usd, self._spent, self._priced, len(self._tasks)
            )
            and not self._tasks
        ):
            self._stop = PageStop.BUDGET

    def _can_launch(self) -> bool:
        if self._stop != PageStop.NONE:
            return False
        if len(self._tasks) + len(self._slow) >= self._page.slots:
            return False
        return budget_allows_one_more(
            self._page.budget_usd, self._spent, self._priced, len(self._tasks)
        )

    def _may_claim(self) -> bool:
        return (
            not self._exhausted
            and self._claimed < self._page.quota
            and time.monotonic() - self._started < self._page.seconds
        )

    async def _claim(self) -> None:
        free = self._page.slots - len(self._tasks) - len(self._slow)
        limit = min(self._page.quota - self._claimed, max(free, 1) + self._page.slots // 4)
        async with self._sessions.begin() as session:
            rows = list(
                await session.execute(
                    _CLAIM,
                    {
                        "batch_id": self._page.batch_id,
                        "token": self._page.page_token,
                        "limit": limit,
                    },
                )
            )
            items = sorted((self._claimed_item(row) for row in rows), key=lambda i: i.line_no)
        self._claimed += len(items)
        self._exhausted = len(items) < limit
        self._queue.extend(items)

    def _claimed_item(self, row: Any) -> ClaimedItem:
        return ClaimedItem(
            custom_id=row.custom_id,
            line_no=row.line_no,
            request=ItemRequest.model_validate(row.request),
        )

    def _launch(self, item: ClaimedItem) -> None:
        task = asyncio.create_task(self._run_item(item))
        self._tasks.add(task)
        task.add_done_callback(self._item_finished)

    def _item_finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._item_done.set()
        if not task.cancelled() and task.exception() is not None and self._flush_error is None:
            self._flush_error = task.exception()

    async def _drain(self) -> None:
        """Let the calls in flight finish (they are at the provider, already paid for)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._flush_error is not None:
            raise self._flush_error

    async def _abandon(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _release_unanswered(self) -> None:
        """Claimed items the page did not answer go back in line, except the slow-path items the
        workflow takes over (their rows stay running under the page's token until it does)."""
        async with self._sessions.begin() as session:
            await session.execute(
                _RELEASE,
                {
                    "batch_id": self._page.batch_id,
                    "token": self._page.page_token,
                    "keep": [slow.item.custom_id for slow in self._slow],
                },
            )

    # --- One item ---------------------------------------------------------------------------------

    async def _run_item(self, item: ClaimedItem) -> None:
        end = await self._answer(item)
        if end.tenant_refusal is not None:
            self._tenant_refusal = self._tenant_refusal or end.tenant_refusal
            return
        if end.slow is not None:
            self._slow.append(end.slow)
            return
        assert end.outcome is not None
        self._ran += 1
        self._priced += 1
        if end.outcome.status == "ok":
            self._answered += 1
        else:
            self._failed += 1
            self._ran_failed += 1
        self._pending.outcomes.append(end.outcome)
        self._wake(urgent=self._pending.rows() >= FLUSH_ROWS)

    async def _answer(self, item: ClaimedItem) -> _ItemEnd:
        request = item_llm_request(self._page.options, item.request)
        plan = await self._plan_for(request)
        if plan.budget_refusal is not None:
            return _ItemEnd(tenant_refusal=plan.budget_refusal)
        failed: list[tuple[str, str]] = []
        reasons: list[str] = []
        candidates = plan.candidates
        position = 0
        # Models that cannot take the item are skipped, as ask_llm skips them: one lacking what
        # the request needs (tools, a JSON schema, images), one whose breaker is open.
        while position < len(candidates) and (skip := _skipped(candidates[position])):
            failed.append((candidates[position].model, skip[0].value))
            reasons.append(skip[1])
            position += 1
        if position == len(candidates):
            last = ErrorClass(failed[-1][1]) if failed else ErrorClass.CIRCUIT_OPEN
            message = f"no model of the route can take the item ({'; '.join(reasons)})"
            return self._failed_item(item, failed, last, message)
        candidate = candidates[position]
        call = AttemptInput(
            request=request,
            model=candidate.model,
            provider=candidate.provider,
            route=plan.route,
            chain=plan.chain,
            fallback_from=failed[-1][0] if failed else None,
        )
        ended = await self._attempts(item, call)
        if isinstance(ended, ItemOutcome):
            ended.failed_models = failed
            return _ItemEnd(outcome=ended)
        failure, message, budget_refused = ended
        if budget_refused:
            return _ItemEnd(tenant_refusal=message)
        failed.append((candidate.model, failure.value))
        rest = [c.model for c in candidates[position + 1 :]]
        if failure in CHAIN_STOPPERS or not rest:
            return self._failed_item(item, failed, failure, message)
        return _ItemEnd(
            slow=SlowItem(item=item, failed_models=failed, remaining_models=rest, route=plan.route)
        )

    def _failed_item(
        self, item: ClaimedItem, failed: list[tuple[str, str]], error: ErrorClass, message: str
    ) -> _ItemEnd:
        return _ItemEnd(
            outcome=ItemOutcome(
                custom_id=item.custom_id,
                status="failed",
                error_class=error.value,
                error_message=message,
                failed_models=failed,
            )
        )

    async def _plan_for(self, request: LlmRequest) -> RoutePlan:
        """One plan per request shape and page (as the workflow planned one per claimed page).
        The shape includes what the request needs from a model: the plan marks the models
        lacking it, so items with other needs must not share it."""
        needs = ",".join(sorted(request.required_capabilities()))
        key = f"{request.route}|{','.join(request.models or [])}|{needs}"
        planning = self._plans.get(key)
        if planning is None:
            planning = asyncio.create_task(self._plan(request, key))
            self._plans[key] = planning
        return await asyncio.shield(planning)

    async def _plan(self, request: LlmRequest, key: str) -> RoutePlan:
        traffic_key = f"{self._workflow_id}/{self._run_id}/{self._prefix}{key}"
        async with self._sessions.begin() as session:
            return await route_plan(session, request, self._settings, traffic_key)

    async def _attempts(
        self, item: ClaimedItem, call: AttemptInput
    ) -> ItemOutcome | tuple[ErrorClass, str, bool]:
        """Attempts on one model under the call policy, in-process: the answer, or why the
        model failed for good (class, message, and whether a budget refused it)."""
        request = call.request
        policy = call_policy(request, self._settings)
        prior = self._prior.get(item.line_no, retries.PriorAttempts())
        # The call's deadline, as Temporal's schedule-to-close is for one call activity: from the
        # item's first attempt, kept across the page's own retries.
        started = self._first_started.get(item.line_no) or datetime.now(UTC)
        deadline = started + timedelta(seconds=policy.schedule_to_close_seconds)
        _, model_name = provider_for_model(call.model)
        prompt_hash = request.prompt_hash(call.model)
        if retries.error_budget_spent(prior, policy, deadline):
            last = prior.last_error_class or ErrorClass.TIMEOUT
            return last, f"{call.model}: {last.value}: {prior.attempts} failed attempts", False
        while True:
            if datetime.now(UTC) >= deadline:
                return (
                    ErrorClass.TIMEOUT,
                    f"{call.model}: {ErrorClass.TIMEOUT.value}: past the call's deadline "
                    f"({policy.schedule_to_close_seconds:g}s from its first attempt)",
                    False,
                )
            attempt = Attempt(
                AttemptKey(
                    self._workflow_id,
                    self._run_id,
                    f"{self._prefix}{item.line_no}",
                    prior.attempts + 1,
                ),
                call,
                model_name,
                prompt_hash,
            )
            tried = await self._one_attempt(attempt, policy)
            failure = tried.failure
            if failure is None:
                return self._answered_outcome(item, attempt, tried)
            if tried.budget_refused:
                return ErrorClass.BUDGET_EXCEEDED, failure.message, True
            decision = retry_decision(failure, prior, policy, datetime.now(UTC), deadline)
            if not decision.retry or decision.delay is None:
                return failure.error_class, failure_message(failure, call.model, decision), False
            prior = after_failure(prior, failure)
            await asyncio.sleep(decision.delay.total_seconds())

    async def _one_attempt(self, attempt: Attempt, policy: CallPolicy) -> _Tried:
        """One attempt through the pipeline, its ledger row queued for the next flush."""
        call = attempt.call
        too_large = prompt_too_large(call.request, self._settings)
        if too_large is not None:
            self._complete(attempt.ledger_row("prompt_too_large", Usage(), None, too_large))
            attempt.observe("prompt_too_large", Usage(), None, too_large, timed=False)
            return _Tried(too_large)
        await self._refresh_breakers(call.provider, call.model)
        admission = await self._admit(attempt)
        if admission.refusal is not None:
            refusal = admission.refusal
            attempt.observe(refusal.outcome, Usage(), None, refusal.failure, timed=False)
            return _Tried(refusal.failure, budget_refused=refusal.budget is not None)
        if admission.wait_seconds > 0:
            await asyncio.sleep(admission.wait_seconds)
            attempt.rate_limit_waited(admission.wait_seconds)
        # No client watches a batch item's tokens: one response per call (call_provider).
        failure = await call_provider(self._providers, attempt, policy, _no_delta, streamed=False)
        completion = attempt.completion
        if failure is None:
            usage = answered_usage(call.request, completion)
            cost = price_usd(call.provider, attempt.model_name, usage)
            self._complete(attempt.ledger_row("ok", usage, cost), cost)
            self._pending.finished.append((attempt, usage, None))
            attempt.observe("ok", usage, cost)
            return _Tried(usage=usage, cost=cost)
        usage = failed_usage(call.request, completion)
        cost = failed_cost(call.provider, attempt.model_name, usage)
        self._complete(attempt.ledger_row("error", usage, cost, failure), cost)
        self._pending.finished.append((attempt, usage, failure))
        attempt.observe("error", usage, cost, failure)
        return _Tried(failure)

    def _answered_outcome(self, item: ClaimedItem, attempt: Attempt, tried: _Tried) -> ItemOutcome:
        call, completion = attempt.call, attempt.completion
        return ItemOutcome(
            custom_id=item.custom_id,
            status="ok",
            text=completion.text,
            model=call.model,
            provider=call.provider,
            finish_reason=completion.finish_reason,
            usage=tried.usage,
            cost_usd=tried.cost,
            attempts=attempt.key.attempt,
        )

    def _complete(self, record: AttemptRecord, cost: Decimal | None = None) -> None:
        self._pending.completed.append(record)
        if cost:
            self._spent += cost
        self._wake(urgent=self._pending.rows() >= FLUSH_ROWS)

    async def _refresh_breakers(self, provider: str, model: str) -> None:
        """A model's breaker state is read when the page first calls it; the heartbeat loop
        re-reads the states every BREAKER_REFRESH_SECONDS (one read for all items)."""
        if (provider, model) in self._breakers:
            return
        async with self._breakers_lock:
            if (provider, model) not in self._breakers:
                await self._read_breakers({*self._breakers, (provider, model)})

    async def _read_breakers(self, keys: set[tuple[str, str]]) -> None:
        async with self._sessions() as session:
            states = {
                (p, m): await circuit_breaker.read_state(session, p, m, self._config)
                for p, m in sorted(keys)
            }
        self._breakers = states
        self._breakers_read = time.monotonic()

    # --- Group commit -----------------------------------------------------------------------------

    async def _admit(self, attempt: Attempt) -> Admission:
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        self._admissions.append((attempt, future))
        self._admission_wanted.set()
        return await future

    def _wake(self, urgent: bool) -> None:
        """Rows are written within FLUSH_SECONDS anyway; ``urgent`` writes them now."""
        if urgent:
            self._urgent.set()

    async def _admission_loop(self) -> None:
        """Admissions are written at once, all that wait together in one transaction (a call
        waits for its row), on their own connection: when they shared the flusher with the
        completions, a call waited behind a completion write (82 ms mean, 171 ms p90 at 150
        calls/s) before it could reach its provider. Ends once the page closes."""
        while True:
            if not self._admissions:
                if self._closing:
                    return
                await self._admission_wanted.wait()
                self._admission_wanted.clear()
                continue
            waiting, self._admissions = self._admissions, []
            try:
                # As complete_chat admits: budget lock, limiter, breaker rows, in-flight rows.
                async with self._sessions.begin() as session:
                    admissions = await admit(
                        session,
                        [attempt for attempt, _ in waiting],
                        self._settings,
                        self._config,
                        self._breakers,
                    )
            except BaseException as error:
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                if isinstance(error, Exception):  # the page fails; Temporal retries it
                    self._flush_error = self._flush_error or error
                    self._item_done.set()
                    return
                raise
            # Committed: now the calls may reach their providers.
            for (_, future), admission in zip(waiting, admissions, strict=True):
                if not future.done():
                    future.set_result(admission)

    async def _flush_loop(self) -> None:
        """Completed rows and outcomes every FLUSH_SECONDS or FLUSH_ROWS, whichever comes
        first. Once the page closes, it writes what is left and ends."""
        while True:
            if not self._closing and self._pending.rows() < FLUSH_ROWS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), timeout=FLUSH_SECONDS)
            self._urgent.clear()
            pending, self._pending = self._pending, _Pending()
            try:
                if pending.completed or pending.outcomes or pending.finished:
                    await self._write_completions(pending)
            except Exception as error:  # the page fails and Temporal retries it (it resumes)
                self._flush_error = error
                self._item_done.set()
                return
            if self._closing and not self._pending.rows():
                return

    async def _write_completions(self, pending: _Pending) -> None:
        """Ledger rows, spend, limiter refunds, breakers and item outcomes in one transaction
        (in complete_chat's order: ledger, limiter, breaker), so an item's outcome is written
        exactly when its attempt's row is."""
        async with self._sessions.begin() as session:
            await write_completed(session, pending.completed, self._prefix)
            changed = await settle(session, pending.finished, self._config)
            await record_outcomes(session, self._page.batch_id, pending.outcomes)
        observe_breakers(changed)

    async def _heartbeat_loop(self) -> None:
        """Liveness and progress every second; the heartbeat is also how a cancellation from the
        workflow reaches the page. Breaker states are refreshed here too."""
        while True:
            stale = time.monotonic() - self._breakers_read >= BREAKER_REFRESH_SECONDS
            if self._breakers and stale:
                try:
                    async with self._breakers_lock:
                        await self._read_breakers(set(self._breakers))
                except Exception as error:  # a blip: the states read last stand a while longer
                    log.warning("batch.breaker_refresh_failed", error=str(error)[:200])
            activity.heartbeat(
                PageProgress(
                    claimed=self._claimed,
                    answered=self._answered,
                    failed=self._failed,
                    in_flight=len(self._tasks),
                )
            )
            await asyncio.sleep(HEARTBEAT_SECONDS)


def _skipped(candidate: ModelCandidate) -> tuple[ErrorClass, str] | None:
    """Why the page does not call ``candidate`` for an item, or None."""
    if candidate.unsupported is not None:
        return ErrorClass.UNSUPPORTED, candidate.unsupported
    if candidate.breaker_open:
        return ErrorClass.CIRCUIT_OPEN, f"{candidate.model}: breaker open"
    return None


async def _no_delta(delta: str) -> None:
    """A page heartbeats once a second for all its calls, not per chunk; a stalled stream is
    caught by the per-read timeout instead."""
