"""Workflow tests on the time-skipping server with mocked activities: no Postgres, no simulator.

Each test gets its own task queue and a worker running keel's real workflows (in the sandbox, as
production runs them) against :class:`tests.workflows.mocks.KeelMocks`. The client carries keel's
plugin, as the root ``time_skipping_env``'s does: the worker inherits its converter (pydantic
payloads, encrypted), interceptors and sandbox passthroughs, and registers the mocks itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.conftest import time_skipping_server
from tests.workflows.mocks import KeelMocks
from workers.plugin import HEARTBEAT_THROTTLE
from workflows.ask import AskWorkflow
from workflows.batch import PagedBatchWorkflow
from workflows.batch_v1 import BatchWorkflow
from workflows.chat_session import ChatSessionWorkflow
from workflows.document_review import DocumentReviewWorkflow
from workflows.jobs import JobWorkflow
from workflows.provider_batch import ProviderBatchWorkflow

KEEL_WORKFLOWS = [
    AskWorkflow,
    BatchWorkflow,
    PagedBatchWorkflow,
    ChatSessionWorkflow,
    DocumentReviewWorkflow,
    JobWorkflow,
    ProviderBatchWorkflow,
]


@dataclass
class Rig:
    env: WorkflowEnvironment
    mocks: KeelMocks
    started: list[WorkflowHandle] = field(default_factory=list)

    @property
    def client(self) -> Client:
        return self.env.client

    @property
    def task_queue(self) -> str:
        return self.mocks.task_queue

    async def start(self, run: Any, arg: Any, workflow_id: str | None = None) -> WorkflowHandle:
        handle = await self.client.start_workflow(
            run,
            arg,
            id=workflow_id or f"wf-{uuid.uuid4().hex[:12]}",
            task_queue=self.task_queue,
            # A workflow task that fails (a bug, a non-determinism) fails the test at once
            # instead of being retried until the test times out.
            execution_timeout=timedelta(days=30),
        )
        self.started.append(handle)
        return handle

    async def terminate_leftovers(self) -> None:
        """End what a test left running. The test server skips time only while no workflow task
        is outstanding: a leftover's timer firing after its worker is gone would hold the clock
        of every later test on this server."""
        for handle in self.started:
            description = await handle.describe()
            if description.status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate(reason="test over")


@pytest.fixture(scope="module")
async def workflow_test_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own, set up as the root ``time_skipping_env``.

    Per module, not per session: modules name their workflows alike (``batch-cancel`` in the
    paged and the provider batch tests), and a second workflow under a completed one's id on
    the same server could stop time skipping for the newer one (a provider batch's hour-long
    poll timer then waited in real time until the test timed out).

    Not that shared one: the test server's clock is global and stops skipping while any workflow
    task is outstanding, so a workflow another group left running (its timer firing with no
    worker left to poll) would hang every ``result()`` here. Starting one costs about a second.
    """
    async with time_skipping_server() as env:
        yield env


@pytest.fixture
async def rig(workflow_test_env: WorkflowEnvironment) -> AsyncIterator[Rig]:
    mocks = KeelMocks(task_queue=f"wf-tests-{uuid.uuid4().hex[:8]}")
    async with Worker(
        workflow_test_env.client,
        task_queue=mocks.task_queue,
        workflows=KEEL_WORKFLOWS,
        activities=mocks.activities(),
        workflow_failure_exception_types=[Exception],
        # As keel's workers: a cancelled batch page hears of it within a second.
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    ):
        rig = Rig(workflow_test_env, mocks)
        try:
            yield rig
        finally:
            await rig.terminate_leftovers()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20) -> None:
    """Wait (in real time) until ``check`` holds: for what a workflow does while a test holds
    one of its activities, where no result is awaited and so no time is skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def timers(handle: WorkflowHandle) -> tuple[list[timedelta], int]:
    """The durations of the timers the workflow started, and how many of them fired, from its
    history. The test server's clock says less: it also skips to timers already cancelled (and
    to activity timeouts), so only the workflow's own timers tell what it waited for."""
    started: list[timedelta] = []
    fired = 0
    async for event in handle.fetch_history_events():
        if event.HasField("timer_started_event_attributes"):
            started.append(event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta())
        fired += event.HasField("timer_fired_event_attributes")
    return started, fired
