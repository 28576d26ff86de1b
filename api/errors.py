"""Every error the API returns has OpenAI's shape, so OpenAI clients raise the right exception:

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}

except on Anthropic's Messages API (``/v1/messages``), whose errors have Anthropic's shape, with
the field keel refused (``param``) and its ``code`` kept beside the message:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "...", "param": ...}}

No request ever gets a stack trace: unexpected errors are logged with a request id and answered
with a 500 that names the id.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError

from contracts.llm import LlmFailureType

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


# Anthropic's error types; any other status is an invalid request (4xx) or an api_error (5xx).
_ANTHROPIC_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
    }
)
ANTHROPIC_PATH = "/v1/messages"


def speaks_anthropic(path: str) -> bool:
    """Whether a request to ``path`` is answered in Anthropic's error shape."""
    return path == ANTHROPIC_PATH or path.startswith(f"{ANTHROPIC_PATH}/")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error object: what every 4xx and 5xx of keel's API carries."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None
    code: str | None = None


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error object: what the Messages API (``/v1/messages``) answers."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


# The Messages API's own declaration, in Anthropic's shape.
ANTHROPIC_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": AnthropicErrorResponse, "description": "Refused (Anthropic's shape)."},
    "5XX": {"model": AnthropicErrorResponse, "description": "Failed (Anthropic's shape)."},
}

# Declared on every operation of the OpenAPI schema: what the API really answers when it
# refuses a request (never FastAPI's default 422 body, which keel replaces with a 400).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request was refused (OpenAI's shape)."},
    "5XX": {"model": ErrorResponse, "description": "keel or a model failed (OpenAI's shape)."},
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

    def anthropic_body(self) -> dict[str, Any]:
        """The error in Anthropic's shape (``param`` and ``code`` kept: they name the field)."""
        if self.status == 413:
            kind = "request_too_large"
        elif self.error_type in _ANTHROPIC_TYPES:
            kind = self.error_type
        else:
            kind = "api_error" if self.status >= 500 else "invalid_request_error"
        error = {"type": kind, "message": self.message, "param": self.param, "code": self.code}
        return {"type": "error", "error": error}

    def response(self, path: str = "") -> JSONResponse:
        """The response for a request to ``path``: in the shape of the API it called."""
        body = self.anthropic_body() if speaks_anthropic(path) else self.body()
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# A turn that failed in the workflow, by the ApplicationError type it failed with.
_TURN_FAILURES = {
    "IdempotencyKeyReused": (409, "idempotency_key_reused"),
    # Another tenant's session (a race the API's own check missed): as if it did not exist.
    "SessionTenantMismatch": (404, "session_not_found"),
    LlmFailureType.UNKNOWN_ROUTE: (400, "unknown_route"),
}


# When every model of the chain failed for a reason that is the request's own fault, the caller
# gets a 4xx with OpenAI's code (404 when no model it named exists), not a 502 that would say a
# model was down.
_CALLER_FAULTS = {
    "model_not_found": "model_not_found",
    "context_window": "context_length_exceeded",
    "prompt_too_large": "prompt_too_large",
    "content_policy": "content_policy_violation",
    "bad_request": "invalid_request",
    "unsupported": "unsupported_parameter",
}


def _chain_exhausted(cause: ApplicationError) -> ApiError:
    failures = cause.details[0] if cause.details else None
    classes = [
        str(failure[1])
        for failure in (failures if isinstance(failures, list) else [])
        if isinstance(failure, list | tuple) and len(failure) == 2
    ]
    if not classes or not all(error_class in _CALLER_FAULTS for error_class in classes):
        return ApiError(502, cause.message, code="models_failed")
    if set(classes) == {"model_not_found"}:
        return ApiError(404, cause.message, param="model", code="model_not_found")
    return ApiError(400, cause.message, code=_CALLER_FAULTS[classes[-1]])


def from_temporal(error: BaseException) -> ApiError:
    """Translate what the Temporal client raised into the API error a caller should see."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, WorkflowUpdateFailedError):
        cause = error.cause
        if isinstance(cause, ApplicationError):
            if cause.type == LlmFailureType.CHAIN_EXHAUSTED:
                return _chain_exhausted(cause)
            status, code = _TURN_FAILURES.get(cause.type or "", (400, "turn_rejected"))
            if code == "session_not_found":
                return ApiError(status, "no such session for this token's tenant", code=code)
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
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        refusal = ApiError(400, message, param=param, code="invalid_request")
        return refusal.response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail) if error.detail else "error"
        refusal = ApiError(error.status_code, message, headers=dict(error.headers or {}))
        return refusal.response(request.url.path)

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
            await api_error.response(str(scope.get("path", "")))(scope, receive, send)
