"""JobWorkflow: an async job started over HTTP — run a keel workflow, record the outcome, and
deliver it to the caller's callback URL until the receiver acknowledges it.

The job's work runs as a child workflow (it keeps its own history, audit trail and Web UI page);
this workflow only adds what a fire-and-forget caller needs: a row to poll and a durable,
signed callback.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from contracts.jobs import (
        DELIVER_CALLBACK,
        RECORD_JOB,
        CallbackDelivery,
        CallbackOutcome,
        JobInput,
        JobKind,
        JobOutput,
        JobRecord,
        JobStatus,
    )
    from workflows.ask import AskInput, AskWorkflow
    from workflows.llm_calls import LOCAL_ACTIVITY_RETRY, LOCAL_ACTIVITY_TIMEOUT

# What a job kind runs: the workflow and its input model (validated by the API before start).
JOB_WORKFLOWS: dict[JobKind, tuple[Any, type[BaseModel]]] = {
    JobKind.ASK: (AskWorkflow.run, AskInput),
}

# Retried until acknowledged: quickly at first, then every 5 minutes, for up to three days.
CALLBACK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=0,
    # Nothing here is non-retryable by type: a worker without the signing secret retries until
    # it has one. A refused destination raises a non-retryable error itself.
)
CALLBACK_DEADLINE = timedelta(days=3)


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
        await workflow.execute_local_activity(
            RECORD_JOB,
            record,
            start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT,
            retry_policy=LOCAL_ACTIVITY_RETRY,
        )

    async def _deliver_callback(self, job_id: str) -> bool:
        try:
            await workflow.execute_activity(
                DELIVER_CALLBACK,
                CallbackDelivery(job_id=job_id),
                result_type=CallbackOutcome,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=CALLBACK_DEADLINE,
                retry_policy=CALLBACK_RETRY,
                summary="callback",
            )
        except ActivityError as error:
            workflow.logger.warning("callback for job %s never acknowledged: %s", job_id, error)
            return False
        return True
