"""Provider errors, classified once.

429/408/409/5xx/529, timeouts and dropped connections are retryable: Temporal retries them under
the call's policy, and a 429's Retry-After becomes the next retry delay. Other 4xx, context-window
and content-policy errors are non-retryable: the workflow moves to the next model in the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import anthropic
import httpx2
import openai

from activities.llm.images import ImageRefused, ImageUnreachable
from contracts.llm import ErrorClass
from infra.structured_logging import redact_text

_RETRYABLE_STATUS = {408, 409, 429}
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "context window",
    "context limit",
    "too many tokens",
)
_POLICY_MARKERS = (
    "content_policy",
    "content policy",
    "usage policy",
    "content_filter",
    "safety",
)


@dataclass(frozen=True)
class ClassifiedError:
    error_class: ErrorClass
    message: str
    status_code: int | None = None
    retry_after: timedelta | None = None

    @property
    def retryable(self) -> bool:
        return self.error_class.retryable


def retry_after_from_headers(headers: httpx2.Headers) -> timedelta | None:
    """Retry-After in any of the spellings providers use: ms, seconds, or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return timedelta(milliseconds=max(0.0, float(millis)))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - datetime.now(UTC))


def _body_text(error: openai.APIStatusError | anthropic.APIStatusError) -> str:
    parts = [str(error.message)]
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            parts += [str(inner.get(k, "")) for k in ("code", "type", "message")]
    return " ".join(parts).lower()


def _classify_status(
    status: int, text: str, headers: httpx2.Headers
) -> tuple[ErrorClass, timedelta | None]:
    retry_after = retry_after_from_headers(headers)
    should_retry = headers.get("x-should-retry")
    if status == 429:
        return ErrorClass.RATE_LIMITED, retry_after
    if status in (503, 529) or "overloaded" in text:
        return ErrorClass.OVERLOADED, retry_after
    if status >= 500:
        return ErrorClass.SERVER_ERROR, retry_after
    if any(marker in text for marker in _CONTEXT_MARKERS):
        return ErrorClass.CONTEXT_WINDOW, None
    if any(marker in text for marker in _POLICY_MARKERS):
        return ErrorClass.CONTENT_POLICY, None
    if status in _RETRYABLE_STATUS or should_retry == "true":
        return (
            ErrorClass.TIMEOUT if status == 408 else ErrorClass.SERVER_ERROR,
            retry_after,
        )
    if status in (401, 403):
        return ErrorClass.AUTHENTICATION, None
    if status == 404:
        return ErrorClass.MODEL_NOT_FOUND, None
    return ErrorClass.BAD_REQUEST, None


def classify(error: BaseException, *, stream_started: bool = False) -> ClassifiedError:
    """Map any exception from a provider SDK (or the transport under it) to keel's classes.

    A connection lost after the first token is a broken stream, not a failure to connect: its
    partial output was generated and is billed.
    """
    if isinstance(error, ImageRefused):
        return ClassifiedError(ErrorClass.BAD_REQUEST, redact_text(str(error))[:500])
    if isinstance(error, ImageUnreachable):
        return ClassifiedError(ErrorClass.CONNECTION, redact_text(str(error))[:500])
    if (
        stream_started
        and isinstance(error, (openai.APIConnectionError, anthropic.APIConnectionError))
        and not isinstance(error, (openai.APITimeoutError, anthropic.APITimeoutError))
    ):
        return ClassifiedError(
            ErrorClass.STREAM_INTERRUPTED, "the stream broke off after the first tokens"
        )
    if isinstance(error, (openai.APITimeoutError, anthropic.APITimeoutError, TimeoutError)):
        return ClassifiedError(ErrorClass.TIMEOUT, "the provider did not answer in time")
    if isinstance(error, (openai.APIStatusError, anthropic.APIStatusError)):
        status = error.status_code
        error_class, retry_after = _classify_status(
            status, _body_text(error), error.response.headers
        )
        return ClassifiedError(
            error_class, redact_text(str(error.message))[:500], status, retry_after
        )
    if isinstance(error, (openai.APIConnectionError, anthropic.APIConnectionError)):
        return ClassifiedError(ErrorClass.CONNECTION, redact_text(str(error))[:500])
    if isinstance(
        error,
        (
            httpx2.RemoteProtocolError,
            httpx2.ReadError,
            httpx2.StreamError,
            ConnectionError,
        ),
    ):
        return ClassifiedError(
            ErrorClass.STREAM_INTERRUPTED,
            f"the stream broke off: {type(error).__name__}",
        )
    if isinstance(error, (openai.APIError, anthropic.APIError)):
        # Errors delivered inside an SSE stream (e.g. an `error` event mid-stream).
        text = str(error).lower()
        if "overloaded" in text:
            return ClassifiedError(ErrorClass.OVERLOADED, redact_text(str(error))[:500])
        return ClassifiedError(ErrorClass.STREAM_INTERRUPTED, redact_text(str(error))[:500])
    return ClassifiedError(
        ErrorClass.UNKNOWN, f"{type(error).__name__}: {redact_text(str(error))}"[:500]
    )
