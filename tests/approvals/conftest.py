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

from activities.approvals import ApprovalActivities
from activities.audit_trail import AuditActivities
from contracts.approvals import GateRequest
from infra.database import sessions_for
from infra.settings import get_settings
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
    settings = get_settings()  # this test's database (the database_url fixture set it)
    sessions = sessions_for(settings)
    async with Worker(
        time_skipping_env.client,
        task_queue=queue,
        workflows=[GateHarnessWorkflow],
        activities=[
            *ApprovalActivities(settings, sessions).all(),
            AuditActivities(sessions).record_audit_event,
        ],
    ):
        yield GateRig(time_skipping_env, queue)
