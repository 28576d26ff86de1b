"""A workflow whose code raises a plain exception: Temporal fails its workflow task and retries
it until a worker can run it (a bug, a non-deterministic change), so it never ends by itself."""

from __future__ import annotations

from temporalio import workflow


@workflow.defn
class BuggyWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        raise RuntimeError(f"a bug in the workflow code while handling {len(text)} characters")
