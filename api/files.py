"""The OpenAI Files API, for batch input files: ``POST /v1/files`` (``purpose=batch``),
``GET /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE
/v1/files/{id}``. A batch's output and error files are read here too.

An upload is checked line by line before it is stored (services/openai_files.py): a file with a
line keel cannot run is a 400 naming the line. The multipart body is read only after the token
was verified (the route reads the form itself, so FastAPI does not parse it first); its schema is
declared by hand below.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from activities.batch.files import BatchFileLimits
from api.auth import client_caller
from api.errors import ERROR_RESPONSES, ApiError
from api.state import IDEMPOTENCY_HEADER, KeelApi, keel_api
from infra.database import session_factory
from services.api_tokens import VerifiedToken
from services.openai_files import (
    FileContentPurged,
    FileNotFound,
    FilePurpose,
    FileRefused,
    IdempotencyKeyReused,
    StoredFile,
    delete_file,
    file_content,
    get_file,
    list_files,
    store_batch_file,
)

router = APIRouter(tags=["files"])

FILE_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
UPLOAD_FIELDS = frozenset({"file", "purpose"})
MAX_IDEMPOTENCY_KEY = 300


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


class FileObject(BaseModel):
    """OpenAI's File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output", "batch_error"]
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


def file_object(stored: StoredFile) -> FileObject:
    return FileObject(
        id=stored.id,
        bytes=stored.size_bytes,
        created_at=int(stored.created_at.timestamp()),
        filename=stored.filename,
        purpose=stored.purpose,
    )


def not_found(error: FileNotFound) -> ApiError:
    return ApiError(404, f"no file {error.file_id!r}", param="file_id", code="file_not_found")


def only_query_parameters(*names: str) -> Callable[[Request], None]:
    """A dependency refusing a query parameter the route does not take: 400 naming it (a
    misspelt ``limit`` silently ignored would page wrongly)."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(names))
        if unknown:
            raise ApiError(
                400,
                f"unknown query parameter(s) {', '.join(map(repr, unknown))}; this route takes "
                f"{', '.join(names)}",
                param=unknown[0],
                code="unknown_parameter",
            )

    return check


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            400,
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
            param=IDEMPOTENCY_HEADER,
            code="invalid_idempotency_key",
        )
    return key


# The body the upload route reads by hand (after the token check), as OpenAI's schema has it.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL: one OpenAI batch request per line.",
                        },
                        "purpose": {"type": "string", "enum": [FilePurpose.BATCH.value]},
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}


def _refusal(message: str, param: str | None = "file", code: str = "invalid_upload") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@router.post("/v1/files", response_model=FileObject, openapi_extra=UPLOAD_BODY)
async def upload_file(
    request: Request,
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> FileObject:
    """Upload a batch input file (multipart: ``file``, ``purpose=batch``). Every line is checked
    first; a line keel cannot run is a 400 naming it, and nothing is stored. With an
    ``Idempotency-Key``, the same upload again returns the same file."""
    key = idempotency_key(request)
    try:
        form = await request.form(max_files=1, max_fields=20)
    except (StarletteHTTPException, MultiPartException, ValueError) as error:
        detail = getattr(error, "detail", None) or getattr(error, "message", None) or str(error)
        raise _refusal(f"the body is not a readable multipart form: {detail}", None) from None
    try:
        unknown = sorted(set(form.keys()) - UPLOAD_FIELDS)
        if unknown:
            raise _refusal(
                f"field(s) {', '.join(unknown)} not supported: keel takes file and purpose",
                unknown[0],
            )
        purpose = form.get("purpose")
        if purpose != FilePurpose.BATCH:
            raise _refusal(
                f"purpose must be 'batch' (got {purpose!r}): keel stores batch input files only"
                if purpose is not None
                else "the form needs a purpose field: 'batch'",
                "purpose",
            )
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _refusal("the form needs a file field holding the JSONL file")
        content = await upload.read()
        try:
            stored = await store_batch_file(
                session_factory(),
                caller.tenant,
                upload.filename or "batch.jsonl",
                content,
                BatchFileLimits.from_settings(api.settings),
                idempotency_key=key,
            )
        except FileRefused as refused:
            status, message, code = refused.status, refused.message, refused.code
            raise ApiError(status, message, param="file", code=code) from None
        except IdempotencyKeyReused as reused:
            raise ApiError(
                409, str(reused), param=IDEMPOTENCY_HEADER, code="idempotency_key_reused"
            ) from None
    finally:
        await form.close()
    return file_object(stored)


@router.get(
    "/v1/files",
    response_model=FileList,
    dependencies=[Depends(only_query_parameters("purpose", "after", "limit", "order"))],
)
async def list_uploaded_files(
    purpose: Literal["batch", "batch_output", "batch_error"] | None = Query(default=None),
    after: str | None = Query(default=None, pattern=FILE_ID_PATTERN),
    limit: int = Query(default=20, ge=1, le=10_000),
    order: Literal["asc", "desc"] = Query(default="desc"),
    caller: VerifiedToken = Depends(client_caller),
) -> FileList:
    """The token's tenant's files, newest first by default (cursor: ``after`` a file id)."""
    try:
        files, more = await list_files(
            session_factory(),
            caller.tenant,
            purpose=purpose,
            after=after,
            limit=limit,
            newest_first=order == "desc",
        )
    except FileNotFound as error:
        raise not_found(error) from None
    data = [file_object(stored) for stored in files]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


@router.get("/v1/files/{file_id}", response_model=FileObject)
async def retrieve_file(
    file_id: str = Path(pattern=FILE_ID_PATTERN),
    caller: VerifiedToken = Depends(client_caller),
) -> FileObject:
    """A file of the token's tenant (another tenant's is 404, as a missing one)."""
    try:
        return file_object(await get_file(session_factory(), caller.tenant, file_id))
    except FileNotFound as error:
        raise not_found(error) from None


ERROR_SCHEMA = "#/components/schemas/ErrorResponse"


class BinaryContent(StreamingResponse):
    media_type = "application/octet-stream"


@router.get(
    "/v1/files/{file_id}/content",
    response_class=BinaryContent,
    responses={
        200: {
            "description": "The file's bytes: an upload as stored; a batch's output or error "
            "file as OpenAI's output lines (JSONL).",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        # Errors stay JSON in OpenAI's shape, whatever the route's own media type.
        **{
            status: {
                "description": description["description"],
                "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}},
            }
            for status, description in ERROR_RESPONSES.items()
        },
    },
)
async def file_content_route(
    file_id: str = Path(pattern=FILE_ID_PATTERN),
    caller: VerifiedToken = Depends(client_caller),
) -> BinaryContent:
    """The file's content, streamed."""
    try:
        chunks = await file_content(session_factory(), caller.tenant, file_id)
    except FileNotFound as error:
        raise not_found(error) from None
    except FileContentPurged as purged:
        raise ApiError(404, str(purged), param="file_id", code="file_content_purged") from None
    return BinaryContent(chunks)


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
async def delete_file_route(
    file_id: str = Path(pattern=FILE_ID_PATTERN),
    caller: VerifiedToken = Depends(client_caller),
) -> FileDeleted:
    """Delete a file: its bytes are dropped and it answers 404 from now on. A batch already
    running from it keeps running (its items are in keel's batch tables)."""
    try:
        await delete_file(session_factory(), caller.tenant, file_id)
    except FileNotFound as error:
        raise not_found(error) from None
    return FileDeleted(id=file_id, deleted=True)
