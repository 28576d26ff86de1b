"""Admission control: when the interactive path is saturated, refuse new work at once (503 +
Retry-After) instead of letting every request degrade together.

**The limit adapts to a latency budget.** Each API process admits at most ``limit`` interactive
requests at once. The limit follows keel's own latency, not the provider's: for a streamed
request, the time from admission to the turn's first stream event (the LLM activity opening its
attempt, just before it calls the provider). That time is all keel's (Temporal's workflow and
activity tasks, the worker's event loop, Postgres) and it is what grows when the machine is
saturated, whatever the model or the length of its answer. Every ``ADJUST_SECONDS`` the limit
is adjusted, AIMD like TCP's congestion window:

- the window's median (``SAMPLE_QUANTILE``) over the threshold: cut the
  limit to ``DECREASE`` times what is in flight; samples of requests admitted before a cut are
  then ignored (they queued under the old limit, so they cannot tell whether the new one is
  enough);
- the median under ``GROW_BELOW`` times the threshold while requests are waiting at the
  limit: raise it by ``INCREASE``;
- a streamed request still without its first event past the threshold cuts at once (checked
  at every admission): a stalled path reports no samples, so waiting for them would react
  only after the stall.

The threshold is the budget (``KEEL_INTERACTIVE_LATENCY_BUDGET_MS``), or ``TOLERANCE`` times
the uncongested latency if that is more: the median of the last ``BASELINE_SAMPLES`` requests
admitted with no more than the floor (``KEEL_ADMISSION_MIN_IN_FLIGHT``) in flight. On a
machine slow for reasons of its own (other processes, a far database), keel's latency exceeds
a tight budget even with a few requests in flight; shedding there would cut throughput without
buying latency, so the limit then keeps accepted requests within ``TOLERANCE`` times what a
request gets on the uncongested path.

**Who is refused first.** Low priority is refused once half the limit is in use (so normal
work always finds room), normal once the limit is, high only when high-priority requests
alone fill the limit: high is never refused while lower work holds a place (it also runs first
in Temporal's queues, Priority key 1).

**Two more signals for low priority**, kept from before the limit adapted: a fixed ceiling of
requests in flight (``KEEL_SHED_IN_FLIGHT``) and the interactive task queue's backlog
(Temporal's DescribeTaskQueue with ``report_stats``, workflow + activity tasks). The backlog is
shared by every replica and every other caller (CLI, jobs), but approximate and cached
server-side (on the dev server it trails reality by ~5-10 s, measured), so it is sampled once a
second in the background, never on the request path.

Non-streamed requests count in flight but give no sample (their first event is their answer).
Counts are per API process, so the limit is per replica. Admitted and refused requests are
counted by priority (``keel_api_admitted``, ``keel_api_shed``; ``/healthz`` has them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from types import TracebackType

import structlog
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from api.errors import ApiError
from contracts.llm import RequestPriority
from infra.metrics import API_ADMISSION_LIMIT, API_ADMITTED, API_IN_FLIGHT, API_SHED
from infra.settings import KeelSettings

log = structlog.get_logger("keel.api")

BACKLOG_SAMPLE_SECONDS = 1.0
# A first burst gets this many places at once; the limit grows while the budget holds. Not
# more: requests admitted into a congested machine keep their latency, whatever comes after.
INITIAL_LIMIT = 16
ADJUST_SECONDS = 0.5
MIN_SAMPLES = 3
# The window's median: on a busy machine its slow end is mostly noise (a descheduled process),
# and a limit that reacts to noise stays at its floor.
SAMPLE_QUANTILE = 0.5
TOLERANCE = 2.0
BASELINE_SAMPLES = 50
MIN_BASELINE_SAMPLES = MIN_SAMPLES
# Grow only while the slow end of the samples is this far under the threshold.
GROW_BELOW = 0.75
DECREASE = 0.8
INCREASE = 1.2
# Low priority may use this share of the limit; the rest is kept for normal and high.
LOW_PRIORITY_SHARE = 0.5


class AdmissionLimit:
    """The adaptive limit and the samples it adapts to (one per API process)."""

    def __init__(self, settings: KeelSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.budget_seconds = settings.interactive_latency_budget_ms / 1000
        self.floor = settings.admission_min_in_flight
        self.ceiling = max(settings.admission_max_in_flight, self.floor)
        self.value = float(min(max(INITIAL_LIMIT, self.floor), self.ceiling))
        self._window_started = clock()
        self._samples: list[float] = []
        self._refused_in_window = False
        self._last_cut = 0.0
        self._uncongested: deque[float] = deque(maxlen=BASELINE_SAMPLES)

    @property
    def threshold_seconds(self) -> float:
        if len(self._uncongested) < MIN_BASELINE_SAMPLES:
            return self.budget_seconds
        baseline = sorted(self._uncongested)[len(self._uncongested) // 2]
        return max(self.budget_seconds, TOLERANCE * baseline)

    @property
    def allowed(self) -> int:
        return int(self.value)

    def refused(self) -> None:
        self._refused_in_window = True

    def observe(
        self, admitted_at: float, seconds: float, in_flight: int, in_flight_at_admission: int
    ) -> None:
        """One request's keel latency (admission to its first stream event), what is in flight
        now and what was when it was admitted (itself included)."""
        if in_flight_at_admission <= self.floor:
            self._uncongested.append(seconds)
        if admitted_at < self._last_cut:
            return
        self._samples.append(seconds)
        now = self.clock()
        if now - self._window_started < ADJUST_SECONDS or len(self._samples) < MIN_SAMPLES:
            return
        ordered = sorted(self._samples)
        median = ordered[min(len(ordered) - 1, math.ceil(SAMPLE_QUANTILE * len(ordered)) - 1)]
        threshold = self.threshold_seconds
        if median > threshold:
            self._cut(in_flight, now)
        elif median < threshold * GROW_BELOW and (
            self._refused_in_window or in_flight >= self.allowed
        ):
            self.value = min(float(self.ceiling), max(self.value * INCREASE, self.value + 1))
        self._samples.clear()
        self._refused_in_window = False
        self._window_started = now
        API_ADMISSION_LIMIT.set(self.allowed)

    def waiting_since(self, oldest_admitted_at: float | None, in_flight: int) -> None:
        """The oldest request still waiting for its first event: one that has waited past the
        threshold is a sample already, before it arrives (a stalled path reports no samples,
        so waiting for them would react only after the stall). Requests admitted before the
        last cut do not count, as in ``observe``."""
        if oldest_admitted_at is None or oldest_admitted_at < self._last_cut:
            return
        now = self.clock()
        if now - oldest_admitted_at > self.threshold_seconds:
            self._cut(in_flight, now)

    @property
    def last_cut(self) -> float:
        return self._last_cut

    def _cut(self, in_flight: int, now: float) -> None:
        self.value = max(float(self.floor), min(self.value, float(in_flight)) * DECREASE)
        self._last_cut = now
        API_ADMISSION_LIMIT.set(self.allowed)


class LoadShedder:
    def __init__(
        self, client: Client, settings: KeelSettings, limit: AdmissionLimit | None = None
    ) -> None:
        self._client = client
        self._settings = settings
        self.limit = limit or AdmissionLimit(settings)
        self.in_flight = 0
        self.in_flight_by_priority: Counter[RequestPriority] = Counter()
        self.backlog = 0
        self.admitted: Counter[RequestPriority] = Counter()
        self.refused: Counter[RequestPriority] = Counter()
        self._waiting: dict[InFlight, float] = {}  # streamed, admitted, no first event yet
        self._sampler: asyncio.Task[None] | None = None
        API_ADMISSION_LIMIT.set(self.limit.allowed)

    @property
    def shed(self) -> int:
        return sum(self.refused.values())

    async def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample_backlog_forever())

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    def saturated(self, priority: RequestPriority) -> str | None:
        """Why a new request of ``priority`` would be refused now, or None."""
        allowed = self.limit.allowed
        if priority == RequestPriority.HIGH:
            high = self.in_flight_by_priority[RequestPriority.HIGH]
            if high >= allowed:
                return f"{high} high-priority requests in flight (limit {allowed})"
            return None
        if self.in_flight >= allowed:
            return f"{self.in_flight} interactive requests in flight (limit {allowed})"
        if priority == RequestPriority.NORMAL:
            return None
        low_allowed = max(1, int(allowed * LOW_PRIORITY_SHARE))
        if self.in_flight >= low_allowed:
            return f"{self.in_flight} interactive requests in flight (low priority: {low_allowed})"
        if self.in_flight >= self._settings.shed_in_flight:
            return f"{self.in_flight} interactive requests in flight"
        if self.backlog >= self._settings.shed_backlog:
            return f"{self.backlog} tasks waiting in the interactive queue"
        return None

    def check(self, priority: RequestPriority) -> None:
        """Raise a 503 if a request of ``priority`` would be refused now (counts nothing in
        flight: for requests that start work and return at once, such as jobs)."""
        self.limit.waiting_since(self._oldest_waiting(), self.in_flight)
        reason = self.saturated(priority)
        if reason is None:
            return
        self.refused[priority] += 1
        API_SHED.labels(priority=priority.value).inc()
        self.limit.refused()
        retry_after = self._settings.shed_retry_after_seconds
        others = "high" if priority == RequestPriority.NORMAL else "normal/high"
        advice = (
            f"Retry after {retry_after} s, or send X-Keel-Priority: {others}."
            if priority != RequestPriority.HIGH
            else f"Retry after {retry_after} s."
        )
        raise ApiError(
            503,
            f"keel is saturated ({reason}); {priority.value}-priority requests are refused "
            f"for now. {advice}",
            code="overloaded",
            headers={"Retry-After": str(retry_after)},
        )

    def admit(self, priority: RequestPriority, streamed: bool = True) -> InFlight:
        """Admit a request of ``priority`` (or raise a 503) and count it in flight until its
        ticket is released. Checked and counted in one step, so a burst cannot slip past the
        limit while earlier requests are still on their way in. A ``streamed`` request's
        first event (``InFlight.first_event``) is a sample of keel's latency."""
        self.check(priority)
        self.admitted[priority] += 1
        API_ADMITTED.labels(priority=priority.value).inc()
        return InFlight(self, priority, streamed)

    def _oldest_waiting(self) -> float | None:
        """When the oldest streamed request admitted since the last cut was admitted, if it
        still waits for its first event (the dict keeps admission order)."""
        for admitted_at in self._waiting.values():
            if admitted_at >= self.limit.last_cut:
                return admitted_at
        return None

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count a request that follows existing work (no admission) as in flight."""
        self._count(None, +1)
        try:
            yield
        finally:
            self._count(None, -1)

    def _count(self, priority: RequestPriority | None, change: int) -> None:
        self.in_flight += change
        if priority is not None:
            self.in_flight_by_priority[priority] += change
        API_IN_FLIGHT.set(self.in_flight)

    def report(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "backlog": self.backlog,
            "admission_limit": self.limit.allowed,
            "admitted": {p.value: self.admitted[p] for p in RequestPriority},
            "shed": {p.value: self.refused[p] for p in RequestPriority},
        }

    async def _sample_backlog_forever(self) -> None:
        while True:
            try:
                self.backlog = await self._queue_backlog()
            except RPCError as error:
                log.warning("api.backlog_unavailable", error=error.message)
            await asyncio.sleep(BACKLOG_SAMPLE_SECONDS)

    async def _queue_backlog(self) -> int:
        total = 0
        for queue_type in (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ):
            response = await self._client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self._client.namespace,
                    task_queue=TaskQueue(
                        name=self._settings.interactive_task_queue,
                        kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL,
                    ),
                    task_queue_type=queue_type,
                    report_stats=True,
                )
            )
            total += response.stats.approximate_backlog_count
        return total


class InFlight:
    """One admitted request's place in the in-flight count. Released exactly once, by whichever
    comes first: the end of its answer or stream, an error before it, or the response's
    background task (a client that disconnects before the stream starts never runs the
    stream's ``finally``)."""

    def __init__(self, shedder: LoadShedder, priority: RequestPriority, streamed: bool) -> None:
        self._shedder: LoadShedder | None = shedder
        self._priority = priority
        self._admitted_at = shedder.limit.clock()
        self._observed = not streamed
        shedder._count(priority, +1)
        self._in_flight_at_admission = shedder.in_flight
        if streamed:
            shedder._waiting[self] = self._admitted_at

    def first_event(self, sample: bool = True) -> None:
        """The turn's first stream event arrived: keel's part of the latency is over (a
        resumed stream's first event says nothing of it: ``sample=False``)."""
        if self._observed or self._shedder is None:
            return
        self._observed = True
        shedder = self._shedder
        shedder._waiting.pop(self, None)
        if not sample:
            return
        now = shedder.limit.clock()
        shedder.limit.observe(
            self._admitted_at,
            now - self._admitted_at,
            shedder.in_flight,
            self._in_flight_at_admission,
        )

    def release(self) -> None:
        if self._shedder is not None:
            self._shedder._waiting.pop(self, None)
            self._shedder._count(self._priority, -1)
            self._shedder = None

    def __enter__(self) -> InFlight:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
