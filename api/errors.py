"""Every error the API returns has OpenAI's shape, so OpenAI clients raise the right exception:

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}

No request ever gets a stack trace: unexpected errors are logged with a request id and answered
with a 500 that names the id.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError

log = structlog.get_logger("keel.api")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error with a status, an OpenAI error type and optional headers (e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def error_type(self) -> str:
        return _TYPE_BY_STATUS.get(self.status, "api_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# A turn that failed in the workflow, by the ApplicationError type it failed with.
_TURN_FAILURES = {
    "IdempotencyKeyReused": (409, "idempotency_key_reused"),
    "SessionTenantMismatch": (409, "session_conflict"),
    "LlmChainExhausted": (502, "models_failed"),
    "UnknownRoute": (400, "unknown_route"),
}


def from_temporal(error: BaseException) -> ApiError:
    """Translate what the Temporal client raised into the API error a caller should see."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, WorkflowUpdateFailedError):
        cause = error.cause
        if isinstance(cause, ApplicationError):
            status, code = _TURN_FAILURES.get(cause.type or "", (400, "turn_rejected"))
            return ApiError(status, cause.message, code=code)
        if isinstance(cause, CancelledError):
            return ApiError(503, "the turn was cancelled; retry it", code="cancelled")
        return ApiError(502, f"the turn failed: {cause or error}", code="turn_failed")
    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError):
        return ApiError(504, "the turn did not finish in time; retry with the same key")
    if isinstance(error, RPCError):
        return ApiError(
            503,
            "Temporal is unavailable; retry shortly",
            code="temporal_unavailable",
            headers={"Retry-After": "2"},
        )
    return internal_error(error)


def internal_error(error: BaseException) -> ApiError:
    request_id = uuid.uuid4().hex[:12]
    log.error("api.internal_error", request_id=request_id, error=type(error).__name__,
              exc_info=error)  # fmt: skip
    return ApiError(500, f"internal error (request id {request_id}); see keel's API logs")


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems = error.errors()
    if not problems:
        return "invalid request", None
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(location) or None
    message = first.get("msg", "invalid value")
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return ApiError(400, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail) if error.detail else "error"
        return ApiError(error.status_code, message, headers=dict(error.headers or {})).response()

    app.add_middleware(NeverAStackTrace)


class NeverAStackTrace:
    """Pure ASGI middleware: whatever escapes a route becomes an OpenAI-shaped error response
    (a streaming response that already started ends its stream instead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            api_error = from_temporal(error)
            if started:
                return  # headers are out; the client sees the stream end
            await api_error.response()(scope, receive, send)
