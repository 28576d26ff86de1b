"""The OpenAI Batches API on keel's durable batches: ``POST /v1/batches`` (from a file uploaded
with ``purpose=batch``), ``GET /v1/batches/{id}``, ``GET /v1/batches`` (``after``/``limit``)
and ``POST /v1/batches/{id}/cancel``. A finished batch names its output and error files, read
through ``GET /v1/files/{id}/content`` in OpenAI's output-line format.

The mapping of keel's batch onto OpenAI's (statuses, counts, expiry) is services/openai_batches.py.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import client_caller
from api.errors import ApiError
from api.files import idempotency_key, only_query_parameters, unix
from api.state import IDEMPOTENCY_HEADER, KeelApi, keel_api
from infra.database import session_factory
from services.api_tokens import VerifiedToken
from services.openai_batches import (
    BatchIdempotencyKeyReused,
    BatchNotCancellable,
    BatchRequestInvalid,
    FileNotFound,
    FileRefused,
    OpenAiBatchNotFound,
    OpenAiBatchView,
    cancel_openai_batch,
    create_openai_batch,
    list_openai_batches,
    retrieve_openai_batch,
)

router = APIRouter(tags=["batches"])

BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,150}$"
BatchStatusName = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]


class CreateBatchRequest(BaseModel):
    """OpenAI's create-batch body. A field keel does not know is refused, never dropped."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(description="`/v1/chat/completions`: the one keel runs.")
    completion_window: str = Field(description="`24h`, OpenAI's only window.")
    metadata: dict[str, str] | None = Field(
        default=None, description="Up to 16 pairs; keys ≤ 64, values ≤ 512 characters."
    )


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchErrorData(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchErrorData]


class BatchObject(BaseModel):
    """OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatusName
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def batch_object(view: OpenAiBatchView) -> BatchObject:
    return BatchObject(
        id=view.id,
        endpoint=view.endpoint,
        errors=BatchErrors(
            data=[BatchErrorData(code=e.code, message=e.message) for e in view.errors]
        )
        if view.errors
        else None,
        input_file_id=view.input_file_id,
        completion_window=view.completion_window,
        status=view.status,
        output_file_id=view.output_file_id,
        error_file_id=view.error_file_id,
        created_at=int(view.created_at.timestamp()),
        in_progress_at=unix(view.in_progress_at),
        expires_at=unix(view.expires_at),
        finalizing_at=unix(view.finalizing_at),
        completed_at=unix(view.completed_at),
        failed_at=unix(view.failed_at),
        expired_at=unix(view.expired_at),
        cancelling_at=unix(view.cancelling_at),
        cancelled_at=unix(view.cancelled_at),
        request_counts=BatchRequestCounts(
            total=view.total, completed=view.completed, failed=view.failed
        ),
        metadata=view.metadata,
    )


def not_found(error: OpenAiBatchNotFound) -> ApiError:
    return ApiError(404, f"no batch {error.batch_id!r}", param="batch_id", code="batch_not_found")


@router.post("/v1/batches", response_model=BatchObject)
async def create_batch(
    body: CreateBatchRequest,
    request: Request,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> BatchObject:
    """Run an uploaded batch file as a durable keel batch (each line through keel's LLM call:
    retries, fallbacks, budgets, the ledger). With an ``Idempotency-Key``, the same request
    again returns the batch the first made."""
    key = idempotency_key(request)
    try:
        view = await create_openai_batch(
            api.client,
            api.settings,
            session_factory(),
            tenant=caller.tenant,
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
            idempotency_key=key,
        )
    except FileNotFound as error:
        raise ApiError(
            404, f"no file {error.file_id!r}", param="input_file_id", code="file_not_found"
        ) from None
    except BatchRequestInvalid as error:
        raise ApiError(400, error.message, param=error.param, code=error.code) from None
    except FileRefused as refused:
        raise ApiError(400, refused.message, param="input_file_id", code=refused.code) from None
    except BatchIdempotencyKeyReused as reused:
        raise ApiError(
            409, str(reused), param=IDEMPOTENCY_HEADER, code="idempotency_key_reused"
        ) from None
    return batch_object(view)


@router.get(
    "/v1/batches",
    response_model=BatchList,
    dependencies=[Depends(only_query_parameters("after", "limit"))],
)
async def list_batches(
    after: str | None = Query(default=None, pattern=BATCH_ID_PATTERN),
    limit: int = Query(default=20, ge=1, le=100),
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> BatchList:
    """The tenant's batches created through this API, newest first (cursor: ``after`` a
    batch id). Batches started with ``keel batch start`` are listed by ``keel batch list``."""
    try:
        views, more = await list_openai_batches(
            api.client, api.settings, session_factory(), caller.tenant, after=after, limit=limit
        )
    except OpenAiBatchNotFound as error:
        raise not_found(error) from None
    data = [batch_object(view) for view in views]
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


@router.get("/v1/batches/{batch_id}", response_model=BatchObject)
async def retrieve_batch(
    batch_id: str = Path(pattern=BATCH_ID_PATTERN),
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> BatchObject:
    """A batch of the token's tenant (another tenant's is 404, as a missing one)."""
    try:
        view = await retrieve_openai_batch(
            api.client, api.settings, session_factory(), caller.tenant, batch_id
        )
    except OpenAiBatchNotFound as error:
        raise not_found(error) from None
    return batch_object(view)


@router.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject)
async def cancel_batch(
    batch_id: str = Path(pattern=BATCH_ID_PATTERN),
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> BatchObject:
    """Cancel a batch: pending requests are not run (they go to the error file), requests in
    flight finish. Answers ``cancelling`` until they have; cancelling again is harmless."""
    try:
        view = await cancel_openai_batch(
            api.client,
            api.settings,
            session_factory(),
            caller.tenant,
            batch_id,
            requested_by=f"api token {caller.id}",
        )
    except OpenAiBatchNotFound as error:
        raise not_found(error) from None
    except BatchNotCancellable as error:
        raise ApiError(409, str(error), param="batch_id", code="batch_not_cancellable") from None
    return batch_object(view)
