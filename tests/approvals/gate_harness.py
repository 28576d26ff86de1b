"""A minimal host workflow for the approval gate: opens the gates it is given, in order."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.approvals import GateOutcome, GateRequest
    from workflows.approval_gate import ApprovalGate


class HarnessInput(BaseModel):
    gates: list[GateRequest]
    # Time before the first gate opens (decisions then find no gate) and after the last one.
    wait_before: timedelta | None = None
    hold_after: timedelta | None = None


@workflow.defn
class GateHarnessWorkflow:
    def __init__(self) -> None:
        self.approval = ApprovalGate()

    @workflow.run
    async def run(self, params: HarnessInput) -> list[GateOutcome]:
        if params.wait_before is not None:
            await workflow.sleep(params.wait_before)
        outcomes = [await self.approval.request(gate) for gate in params.gates]
        if params.hold_after is not None:
            await workflow.sleep(params.hold_after)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcomes
