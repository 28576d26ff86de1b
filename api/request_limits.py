"""The request body limit: a body over ``KEEL_MAX_REQUEST_BODY_BYTES`` gets 413 before anything
parses it.

Pure ASGI, outside every other middleware. A declared ``Content-Length`` over the limit is
refused before a byte of the body is read. Otherwise the body is counted as it arrives, however
it is framed (Content-Length or chunked: a declared length is never trusted alone), and the
request is refused the moment the count passes the limit, without reading the rest. A body
within the limit is handed to the app as received; FastAPI would buffer it whole anyway to parse
the JSON, so holding it here costs nothing extra.

A few paths take larger bodies (``POST /v1/files``: a batch file, up to
``KEEL_MAX_BATCH_FILE_BYTES`` plus its multipart framing): ``larger_limits`` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from infra.input_limits import setting_name
from infra.settings import KeelSettings


class RequestBodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: Callable[[], int],
        larger_limits: Mapping[str, Callable[[], int]] | None = None,
    ) -> None:
        self.app = app
        # Read per request: the settings may be resolved only when the app starts.
        self.max_bytes = max_bytes
        # Exact paths whose bodies may be larger (uploads), each with its own limit.
        self.larger_limits = dict(larger_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        larger = self.larger_limits.get(scope.get("path", ""))
        limit = larger() if larger is not None else self.max_bytes()
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(f"{declared:,} bytes", limit, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(f"more than {limit:,} bytes", limit, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {
            "type": "http.request",
            "body": b"".join(chunks),
            "more_body": False,
        }

        async def replay() -> Message:
            # The body once, then the client's own messages (a disconnect, for streams).
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one before the app sees it
    return None


async def _too_large(size: str, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    error = ApiError(
        413,
        f"the request body is {size}; the limit is {limit:,} bytes (keel's "
        f"{setting_name('max_request_body_bytes')}, or {setting_name('max_batch_file_bytes')} "
        "for batch file uploads): send a smaller request",
        code="request_too_large",
        # The rest of the body was never read: this connection cannot carry another request.
        headers={"Connection": "close"},
    )
    await error.response(str(scope.get("path", "")))(scope, receive, send)


# Room for a multipart upload's framing (boundaries, part headers, the purpose field) beside
# the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def upload_limit(settings: KeelSettings) -> int:
    """The body limit of a batch file upload: the file limit, plus its multipart framing."""
    return max(settings.max_request_body_bytes, settings.max_batch_file_bytes) + (
        MULTIPART_OVERHEAD_BYTES
    )
