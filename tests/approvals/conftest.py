"""Approval fixtures: a worker on the time-skipping server (it knows keel's search attributes)
running a bare host workflow of the gate against the test's own Postgres database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.approvals import APPROVAL_ACTIVITIES
from activities.audit_trail import record_audit_event
from contracts.approvals import GateRequest
from tests.approvals.gate_harness import GateHarnessWorkflow, HarnessInput


@dataclass
class GateRig:
    env: WorkflowEnvironment
    task_queue: str

    async def start(self, *gates: GateRequest, **options: object) -> WorkflowHandle:
        return await self.env.client.start_workflow(
            GateHarnessWorkflow.run,
            HarnessInput.model_validate({"gates": list(gates), **options}),
            id=f"gate-{uuid.uuid4().hex[:10]}",
            task_queue=self.task_queue,
        )


@pytest.fixture
async def gates(
    time_skipping_env: WorkflowEnvironment, database_url: str
) -> AsyncIterator[GateRig]:
    queue = f"gates-{uuid.uuid4().hex[:8]}"
    async with Worker(
        time_skipping_env.client,
        task_queue=queue,
        workflows=[GateHarnessWorkflow],
        activities=[*APPROVAL_ACTIVITIES, record_audit_event],
    ):
        yield GateRig(time_skipping_env, queue)
