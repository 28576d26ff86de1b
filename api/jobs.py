"""Async jobs: ``POST /v1/jobs`` starts a keel workflow and answers at once with its id;
``GET /v1/jobs/{id}`` gives its status and result; an optional ``callback_url`` receives the
result when done, signed (``X-Keel-Signature``, see infra/callback_signing.py) and retried until
acknowledged.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.job_models import JobInput, JobKind, JobStatus
from api.errors import ApiError, from_temporal
from api.state import KeelApi, keel_api, request_priority, request_tenant
from infra.database import session_factory
from infra.search_attributes import KEEL_TENANT, KEEL_WORKFLOW_KIND
from infra.tables import Job
from workflows.jobs import JOB_WORKFLOWS, JobWorkflow

router = APIRouter(tags=["jobs"])

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,150}$"


class JobRequest(BaseModel):
    kind: JobKind = Field(description="What to run: `ask` (AskWorkflow).")
    input: dict[str, Any] = Field(description="The workflow's input, e.g. {'prompt': '…'}.")
    callback_url: str | None = Field(
        default=None, pattern=r"^https?://", description="POSTed the result when done."
    )
    id: str | None = Field(
        default=None, pattern=JOB_ID_PATTERN, description="Your id: re-sending it is idempotent."
    )


class CallbackState(BaseModel):
    url: str
    attempts: int
    acknowledged_at: datetime | None
    last_status: int | None


class JobView(BaseModel):
    id: str
    kind: str | None = None
    status: JobStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    callback: CallbackState | None = None
    status_url: str


def _job_view(job: Job) -> JobView:
    callback = (
        CallbackState(
            url=job.callback_url,
            attempts=job.callback_attempts,
            acknowledged_at=job.callback_acknowledged_at,
            last_status=job.callback_last_status,
        )
        if job.callback_url
        else None
    )
    return JobView(
        id=job.id,
        kind=job.kind,
        status=JobStatus(job.status),
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        completed_at=job.completed_at,
        callback=callback,
        status_url=f"/v1/jobs/{job.id}",
    )


@router.post("/v1/jobs", status_code=202, response_model=JobView)
async def create_job(
    body: JobRequest, request: Request, api: KeelApi = Depends(keel_api)
) -> JSONResponse:
    """Start a job; answers at once (202) with its id and where to poll."""
    priority = request_priority(request)
    api.shedder.admit(priority)
    tenant = request_tenant(request)
    if body.callback_url and api.settings.callback_signing_secret is None:
        raise ApiError(
            400,
            "callback_url needs signed callbacks: set KEEL_CALLBACK_SIGNING_SECRET on keel",
            param="callback_url",
        )
    _, input_model = JOB_WORKFLOWS[body.kind]
    try:
        validated = input_model.model_validate({**body.input, "tenant": tenant})
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ApiError(400, f"input.{where}: {problem['msg']}", param=f"input.{where}") from None
    job_id = body.id or f"job-{uuid.uuid4().hex[:16]}"
    try:
        await api.client.start_workflow(
            JobWorkflow.run,
            JobInput(
                kind=body.kind,
                input=validated.model_dump(mode="json"),
                tenant=tenant,
                callback_url=body.callback_url,
            ),
            id=job_id,
            task_queue=api.settings.interactive_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            priority=Priority(priority_key=priority.priority_key),
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(KEEL_TENANT, tenant),
                    SearchAttributePair(KEEL_WORKFLOW_KIND, "job"),
                ]
            ),
            static_summary=f"job {body.kind.value}",
        )
        created = True
    except WorkflowAlreadyStartedError:
        created = False  # the same id again: the job that exists is the answer
    except Exception as error:
        raise from_temporal(error) from error
    view = JobView(id=job_id, kind=body.kind.value, status=JobStatus.RUNNING,
                   status_url=f"/v1/jobs/{job_id}")  # fmt: skip
    if not created:
        view = await _read_job(api, job_id, tenant)
    return JSONResponse(view.model_dump(mode="json"), status_code=202 if created else 200)


async def _read_job(api: KeelApi, job_id: str, tenant: str) -> JobView:
    async with session_factory()() as db:
        job = await db.get(Job, job_id)
    if job is not None:
        if job.tenant != tenant:
            raise ApiError(404, f"no job {job_id}", code="job_not_found")
        view = _job_view(job)
        if view.status != JobStatus.RUNNING:
            return view
    try:
        description = await api.client.get_workflow_handle(job_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ApiError(404, f"no job {job_id}", code="job_not_found") from None
        raise from_temporal(error) from error
    if description.workflow_type != "JobWorkflow":
        raise ApiError(404, f"no job {job_id}", code="job_not_found")
    stopped = description.status not in (
        WorkflowExecutionStatus.RUNNING,
        WorkflowExecutionStatus.COMPLETED,
    )
    if job is None:
        return JobView(
            id=job_id,
            status=JobStatus.FAILED if stopped else JobStatus.RUNNING,
            status_url=f"/v1/jobs/{job_id}",
        )
    if stopped:  # terminated, cancelled or timed out before it could record its outcome
        view.status = JobStatus.FAILED
        view.error = f"the job's workflow ended: {description.status.name.lower()}"  # type: ignore[union-attr]
    return view


@router.get("/v1/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: str, request: Request, api: KeelApi = Depends(keel_api)) -> JobView:
    """A job's status, and its result or error once finished."""
    return await _read_job(api, job_id, request_tenant(request))
