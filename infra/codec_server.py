"""The remote codec server (``keel codec-server``): keel's payload codec over HTTP.

The Temporal Web UI (from the browser) and ``temporal … --codec-endpoint URL`` send the payloads
they cannot read to ``POST …/decode`` (and, to send a signal or start a workflow with typed-in
input, ``POST …/encode``). Protocol (Temporal's remote codec protocol): the body is the
``Payloads`` protobuf as JSON, ``{"payloads": [{"metadata": {"encoding": "<base64>"}, "data":
"<base64>"}]}``, answered in the same form; only the last path segment counts, so the server works
mounted under any prefix (``/default/decode``); the UI sends ``X-Namespace``. Bad input and codec
errors are 400 with a message, as the protocol asks.

Whoever can call ``/decode`` reads every prompt and answer, so: it listens on 127.0.0.1 unless told
otherwise, browsers may call it only from the configured Web UI origins (CORS; any other origin
gets no CORS headers and its preflight is refused), and with ``KEEL_CODEC_SERVER_TOKEN`` every
request needs ``Authorization: Bearer <token>`` (compared in constant time, never logged).
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Sequence
from typing import Any

import structlog
import uvicorn
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from infra.payload_codec import EncryptionCodec, PayloadDecryptionError

log = structlog.get_logger("keel.codec_server")

# A history's payloads arrive in batches; one payload is at most 2 MB (Temporal's limit), base64
# makes it 2.7 MB. 64 MiB bounds the memory one request can take.
MAX_BODY_BYTES = 64 * 1024 * 1024
OPERATIONS = ("encode", "decode")
EXPECTED_BODY = '{"payloads": [{"metadata": {...}, "data": "<base64>"}]}'


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_codec_app(
    codec: EncryptionCodec,
    *,
    allowed_origins: Sequence[str],
    token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The ASGI app. ``token``: when set, every /encode and /decode needs it as a bearer token."""
    if any(origin in ("*", "null") for origin in allowed_origins):
        # CORSMiddleware with credentials echoes any origin back for "*": every web page could
        # call /decode. Settings refuse it too; this keeps every caller of the app honest.
        raise ValueError("the codec server's allowed origins must be explicit, never '*'/'null'")
    expected_authorization = f"Bearer {token}".encode() if token else None

    def authorized(request: Request) -> bool:
        if expected_authorization is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1", errors="replace")
        return hmac.compare_digest(given, expected_authorization)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def apply_codec(request: Request) -> Response:
        operation = request.url.path.rstrip("/").rpartition("/")[2]
        if operation not in OPERATIONS:
            return _error(404, f"no such endpoint {request.url.path!r}: POST …/encode or …/decode")
        if not authorized(request):
            log.info("codec_server.unauthorized", operation=operation, client=_client(request))
            return _error(
                401,
                "missing or wrong bearer token: send `Authorization: Bearer <token>` with the "
                "value of KEEL_CODEC_SERVER_TOKEN (the CLI: --codec-auth 'Bearer …')",
                **{"WWW-Authenticate": "Bearer"},
            )
        try:
            body = await _read_body(request, max_body_bytes)
        except _TooLarge:
            return _error(
                413, f"the request body is larger than {max_body_bytes} bytes: send fewer payloads"
            )
        except ClientDisconnect:
            return _error(400, "the client disconnected before sending the whole body")
        try:
            payloads = json_format.Parse(body, Payloads())
        except (json_format.ParseError, DecodeError, UnicodeDecodeError, ValueError, TypeError):
            return _error(
                400,
                f"the request body must be the Payloads protobuf as JSON, {EXPECTED_BODY}, with "
                "base64 metadata values and data",
            )
        try:
            if operation == "encode":
                result = await codec.encode(payloads.payloads)
            else:
                result = await codec.decode(payloads.payloads)
        except PayloadDecryptionError as error:
            log.warning("codec_server.undecodable", operation=operation, error=str(error))
            return _error(400, str(error))
        except DecodeError:
            return _error(400, "a decrypted payload is not a Temporal Payload protobuf")
        log.debug(
            "codec_server.request",
            operation=operation,
            payloads=len(result),
            namespace=request.headers.get("x-namespace"),
        )
        return Response(
            json_format.MessageToJson(Payloads(payloads=result)),
            media_type="application/json",
        )

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/{path:path}", apply_codec, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(allowed_origins),
                allow_methods=["POST"],
                allow_headers=["Content-Type", "X-Namespace", "Authorization"],
                # The UI's "include cross-origin credentials" option; safe because only the
                # listed origins are ever echoed back (never "*").
                allow_credentials=True,
                max_age=600,
            )
        ],
    )


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def uvicorn_config(app: Any) -> uvicorn.Config:
    # No access log: paths say nothing useful, and a request line must never grow a header.
    return uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", http="h11", ws="none"
    )


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM."""
    server = uvicorn.Server(uvicorn_config(app))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
