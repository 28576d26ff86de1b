"""Async jobs: ``POST /v1/jobs`` starts a keel workflow and answers at once with its id;
``GET /v1/jobs/{id}`` gives its status and result; an optional ``callback_url`` receives the
result when done, signed (``X-Keel-Signature``, see infra/callback_signing.py) and retried until
acknowledged.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog
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

from activities.jobs import callback_destination_policy
from api.auth import check_tenant_field, client_caller
from api.errors import ApiError, from_temporal
from api.state import KeelApi, admission_controlled, keel_api, request_priority
from contracts.jobs import JobInput, JobKind, JobStatus
from contracts.search_attributes import KEEL_TENANT, KEEL_WORKFLOW_KIND
from infra.callback_signing import SECRET_VARIABLE, SigningSecretError, signing_secret
from infra.database import session_factory
from infra.input_limits import (
    InputTooLarge,
    PromptLimits,
    UnstorableText,
    check_model_name,
    check_prompt,
    first_unstorable,
)
from infra.outbound_guard import (
    DestinationInvalid,
    DestinationRefused,
    DestinationUnresolved,
    check_url,
)
from infra.settings import KeelSettings
from infra.tables import Job
from services.api_tokens import VerifiedToken
from workflows.jobs import JOB_WORKFLOWS, JobWorkflow

log = structlog.get_logger(__name__)

router = APIRouter(tags=["jobs"])

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,150}$"
# Fields of a job's input that go to a model as its prompt.
PROMPT_FIELDS = ("system", "prompt")


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
    last_error: str | None = Field(
        default=None, description="Why the last attempt was not acknowledged (or not sent)."
    )


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
            last_error=job.callback_last_error,
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


def check_job_text(
    workflow_input: dict[str, Any], callback_url: str | None, settings: KeelSettings
) -> None:
    """400 for a prompt over keel's limits, or text keel cannot store or carry (checked before
    the job starts, so a refused job leaves no row and no workflow)."""
    unstorable = first_unstorable(workflow_input, "input") or first_unstorable(
        callback_url, "callback_url"
    )
    if unstorable is not None:
        raise ApiError(400, unstorable, code="invalid_text")
    names = [*(workflow_input.get("models") or []), workflow_input.get("route")]
    for name in (n for n in names if isinstance(n, str)):
        try:
            check_model_name(name, "a model or route name in input")
        except UnstorableText as error:
            raise ApiError(400, str(error), param="input", code="invalid_model") from None
    texts = [text for field in PROMPT_FIELDS if isinstance(text := workflow_input.get(field), str)]
    try:
        what = "input.prompt" if len(texts) == 1 else "input.system + input.prompt"
        check_prompt(texts, PromptLimits.from_settings(settings), what, text_checked=True)
    except InputTooLarge as error:
        raise ApiError(400, str(error), param="input.prompt", code="prompt_too_large") from None


def _check_callback_signing(settings: KeelSettings) -> None:
    """400 when this API could not vouch for its callbacks: no signing secret configured (the
    client cannot fix that, but learns why before a job runs whose callback would never come)."""
    try:
        configured = signing_secret(settings) is not None
    except SigningSecretError as error:
        log.error("jobs.callback_secret_unusable", error=str(error))
        raise ApiError(
            500,
            "keel's callback signing secret is unusable; its operator must fix it (see the "
            "API's log)",
            param="callback_url",
            code="callback_signing_unavailable",
        ) from None
    if not configured:
        raise ApiError(
            400,
            f"callback_url needs signed callbacks, and this keel has no signing secret: its "
            f"operator must set {SECRET_VARIABLE} (`keel dev up` creates one for the dev stack)",
            param="callback_url",
            code="callback_signing_unavailable",
        )


async def check_callback_destination(url: str, api: KeelApi) -> None:
    """400 naming the field, the address class and the setting when ``url`` points at a
    destination the guard refuses (loopback, private, link-local, metadata, …). A host that does
    not resolve now is accepted: delivery resolves and checks it again before each attempt."""
    try:
        await check_url(
            url, callback_destination_policy(api.settings), api.resolver, what="callback_url"
        )
    except DestinationRefused as error:
        raise ApiError(400, str(error), param="callback_url", code="callback_url_refused") from None
    except DestinationUnresolved:
        return
    except DestinationInvalid as error:
        raise ApiError(400, str(error), param="callback_url", code="invalid_callback_url") from None


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    responses={
        200: {
            "model": JobView,
            "description": "A job with this id exists already: it is returned as it is now "
            "(the same request sent again starts nothing).",
        }
    },
)
@admission_controlled
async def create_job(
    body: JobRequest,
    request: Request,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> JSONResponse:
    """Start a job; answers at once (202) with its id and where to poll; 200 with the existing
    job when its id is taken."""
    check_tenant_field(caller, body.input.get("tenant"), "input.tenant")
    # Refused when saturated before the token was verified (@admission_controlled): a job
    # returns at once, so it is checked there and not counted in flight.
    priority = request_priority(request)
    tenant = caller.tenant
    if body.callback_url:
        _check_callback_signing(api.settings)
    _, input_model = JOB_WORKFLOWS[body.kind]
    try:
        validated = input_model.model_validate({**body.input, "tenant": tenant})
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ApiError(400, f"input.{where}: {problem['msg']}", param=f"input.{where}") from None
    workflow_input = validated.model_dump(mode="json")
    check_job_text(workflow_input, body.callback_url, api.settings)
    if body.callback_url:
        await check_callback_destination(body.callback_url, api)
    job_id = body.id or f"job-{uuid.uuid4().hex[:16]}"
    try:
        await api.client.start_workflow(
            JobWorkflow.run,
            JobInput(
                kind=body.kind,
                input=workflow_input,
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
            static_summary=f"job {body.kind.value} · tenant {tenant}",
            static_details=f"Runs a {body.kind.value} as a child workflow"
            + (", then calls back its callback URL." if body.callback_url else "."),
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
    # Before the job records its row, the tenant is the workflow's search attribute: another
    # tenant's job answers as one that does not exist.
    if (
        description.workflow_type != "JobWorkflow"
        or description.typed_search_attributes.get(KEEL_TENANT) != tenant
    ):
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
async def get_job(
    job_id: str,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> JobView:
    """A job's status, and its result or error once finished."""
    return await _read_job(api, job_id, caller.tenant)
