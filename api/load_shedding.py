"""Load shedding: refuse low-priority work at once (503 + Retry-After) when the interactive path
is saturated, instead of letting it queue behind everyone else.

Two signals, because each misses what the other sees:

- **In flight in this API process** (a counter around each interactive request): exact and
  instant, the only signal that reacts to a burst within milliseconds. It is per process, so
  the threshold is per API replica.
- **Backlog of the interactive task queue** (Temporal's DescribeTaskQueue with ``report_stats``,
  workflow + activity tasks): shared by every replica and every other caller (CLI, jobs), but
  approximate and cached server-side (on the dev server it trails reality by ~5-10 s, measured),
  so it is sampled once a second in the background, never on the request path.

High- and normal-priority requests are always admitted; high priority also runs first in
Temporal's queues (Priority key 1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from api.errors import ApiError
from contracts.llm import RequestPriority
from infra.settings import KeelSettings

log = structlog.get_logger("keel.api")

BACKLOG_SAMPLE_SECONDS = 1.0


class LoadShedder:
    def __init__(self, client: Client, settings: KeelSettings) -> None:
        self._client = client
        self._settings = settings
        self.in_flight = 0
        self.backlog = 0
        self.shed = 0
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample_backlog_forever())

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    def saturated(self) -> str | None:
        """Why new low-priority work would be refused now, or None."""
        if self.in_flight >= self._settings.shed_in_flight:
            return f"{self.in_flight} interactive requests in flight"
        if self.backlog >= self._settings.shed_backlog:
            return f"{self.backlog} tasks waiting in the interactive queue"
        return None

    def admit(self, priority: RequestPriority) -> None:
        """Raise a 503 for low-priority work while saturated; everything else passes."""
        if priority != RequestPriority.LOW:
            return
        reason = self.saturated()
        if reason is None:
            return
        self.shed += 1
        retry_after = self._settings.shed_retry_after_seconds
        raise ApiError(
            503,
            f"keel is saturated ({reason}); low-priority requests are refused for now. "
            f"Retry after {retry_after} s, or send X-Keel-Priority: normal/high.",
            code="overloaded",
            headers={"Retry-After": str(retry_after)},
        )

    def enter(self) -> InFlight:
        """Count a request as in flight until its ticket is released (idempotent)."""
        self.in_flight += 1
        return InFlight(self)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count an interactive request as in flight for as long as it runs."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

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
    """One request's place in the in-flight count. Released exactly once, by whichever comes
    first: the end of its stream, or the response's background task (a client that disconnects
    before the stream starts never runs the stream's ``finally``)."""

    def __init__(self, shedder: LoadShedder) -> None:
        self._shedder: LoadShedder | None = shedder

    def release(self) -> None:
        if self._shedder is not None:
            self._shedder.in_flight -= 1
            self._shedder = None
