"""Approval fixtures: a time-skipping server that knows keel's search attributes, and a worker
running a bare host workflow of the gate against the test's own Postgres database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.approval_models import GateRequest
from activities.approvals import APPROVAL_ACTIVITIES
from activities.audit_trail import record_audit_event
from infra.search_attributes import ALL_SEARCH_ATTRIBUTES
from tests.approvals.gate_harness import GateHarnessWorkflow, HarnessInput


@pytest.fixture(scope="session")
async def gate_env(time_skipping_env: WorkflowEnvironment) -> WorkflowEnvironment:
    """The time-skipping server, with keel's search attributes registered (the gate sets
    KeelAwaiting; an unknown attribute would fail its workflow task)."""
    for key in ALL_SEARCH_ATTRIBUTES:
        try:
            await time_skipping_env.client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=time_skipping_env.client.namespace,
                    search_attributes={
                        key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
                    },
                )
            )
        except RPCError as error:
            if error.status != RPCStatusCode.ALREADY_EXISTS:
                raise
    return time_skipping_env


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
async def gates(gate_env: WorkflowEnvironment, database_url: str) -> AsyncIterator[GateRig]:
    queue = f"gates-{uuid.uuid4().hex[:8]}"
    async with Worker(
        gate_env.client,
        task_queue=queue,
        workflows=[GateHarnessWorkflow],
        activities=[*APPROVAL_ACTIVITIES, record_audit_event],
    ):
        yield GateRig(gate_env, queue)
