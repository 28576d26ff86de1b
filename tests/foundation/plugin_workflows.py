"""A workflow that tells whether the sandbox handed it the worker process's ``contracts``.

Deliberately imported without ``workflow.unsafe.imports_passed_through()``: only the worker's
sandbox configuration (KeelPlugin's passthroughs) decides whether ``contracts`` is re-imported.
"""

from __future__ import annotations

from temporalio import workflow

from contracts.llm import ChatMessage


@workflow.defn
class ContractIdentityWorkflow:
    @workflow.run
    async def run(self) -> int:
        # The class's identity in this process: the host's when passed through, a fresh copy
        # (another id) when the sandbox re-imported the module for this run.
        return id(ChatMessage)
