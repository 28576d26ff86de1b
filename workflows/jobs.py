"""JobWorkflow: an async job started over HTTP — run a keel workflow, record the outcome, and
deliver it to the caller's callback URL until the receiver acknowledges it.

The job's work runs as a child workflow (it keeps its own history, audit trail and Web UI page);
this workflow only adds what a fire-and-forget caller needs: a row to poll and a durable,
signed callback.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import DELIVER_JOB_CALLBACK, RECORD_JOB
    from contracts.jobs import (
        CallbackDelivery,
        JobInput,
        JobKind,
        JobOutput,
        JobRecord,
        JobStatus,
    )
    from workflows.activity_calls import JOB_CALLBACK, LOCAL_RECORD, call, call_local
    from workflows.ask import AskInput, AskWorkflow

# What a job kind runs: the workflow and its input model (validated by the API before start).
JOB_WORKFLOWS: dict[JobKind, tuple[Any, type[BaseModel]]] = {
    JobKind.ASK: (AskWorkflow.run, AskInput),
}


@workflow.defn
class JobWorkflow:
    @workflow.run
    async def run(self, job: JobInput) -> JobOutput:
        job_id = workflow.info().workflow_id
        await self._record(
            JobRecord(
                job_id=job_id,
                tenant=job.tenant,
                kind=job.kind,
                status=JobStatus.RUNNING,
                callback_url=job.callback_url,
            )
        )
        run, input_model = JOB_WORKFLOWS[job.kind]
        try:
            result = await workflow.execute_child_workflow(
                run,
                input_model.model_validate(job.input),
                id=f"{job_id}-{job.kind.value}",
                task_queue=workflow.info().task_queue,
                # User metadata: not compared on replay, so running jobs replay unchanged.
                static_summary=f"{job.kind.value} of job {job_id} · tenant {job.tenant}",
            )
            outcome = JobOutput(status=JobStatus.COMPLETED, result=result.model_dump(mode="json"))
        except ChildWorkflowError as error:
            cause = error.cause
            outcome = JobOutput(status=JobStatus.FAILED, error=str(cause or error))
        await self._record(
            JobRecord(
                job_id=job_id,
                tenant=job.tenant,
                kind=job.kind,
                status=outcome.status,
                result=outcome.result,
                error=outcome.error,
            )
        )
        if job.callback_url:
            outcome.callback_acknowledged = await self._deliver_callback(job_id)
        return outcome

    async def _record(self, record: JobRecord) -> None:
        await call_local(
            RECORD_JOB,
            record,
            **LOCAL_RECORD,
            summary=f"job {record.kind.value} · {record.status.value}",
        )

    async def _deliver_callback(self, job_id: str) -> bool:
        try:
            await call(
                DELIVER_JOB_CALLBACK,
                CallbackDelivery(job_id=job_id),
                **JOB_CALLBACK,
                summary="callback",
            )
        except ActivityError as error:
            workflow.logger.warning("callback for job %s never acknowledged: %s", job_id, error)
            return False
        return True
