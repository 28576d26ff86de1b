"""Connection-level misbehaviour: dropping a TCP connection, holding a request unanswered.

ASGI has no way to say "drop this connection", and an ASGI app that fails before
responding makes uvicorn send a polite 500. So the outermost middleware remembers the
asyncio transport (and uvicorn's per-request cycle) for each request, and a drop closes
the transport underneath uvicorn.

Two ways to drop: before any response, an RST (SO_LINGER 0), as a crashed peer or load
balancer sends; mid-body, a close without the terminating chunk. The latter because an
RST makes the client's kernel discard data it has received but not yet read, and a
stream that was cut after N chunks must really deliver those N chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

TRANSPORT_KEY = "llmsim.transport"
CYCLE_KEY = "llmsim.cycle"


class TransportCaptureMiddleware:
    """Puts uvicorn's transport and request cycle into the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn's receive/send are bound methods of its per-request cycle object,
            # which holds the connection's transport (h11 and httptools alike).
            cycle = getattr(receive, "__self__", None)
            transport = getattr(cycle, "transport", None)
            if isinstance(transport, asyncio.BaseTransport):
                scope[TRANSPORT_KEY] = transport
                scope[CYCLE_KEY] = cycle
        await self.app(scope, receive, send)


async def drop_connection(scope: Scope, *, mid_body: bool) -> None:
    """Drop the request's connection: an RST, or (``mid_body``) a close after flushing what
    was already sent, leaving the response body unterminated."""
    transport: Any = scope.get(TRANSPORT_KEY)
    if transport is None:
        # Not under uvicorn: failing after the response started still cuts the body short.
        raise ConnectionAbortedError("llmsim: simulated connection drop")
    if mid_body:
        transport.close()  # flushes the write buffer, then FIN
    else:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Wait for uvicorn's connection_lost, so it sees a disconnect rather than an app that
    # returned without (completing) a response, which it would log as an error.
    cycle = scope.get(CYCLE_KEY)
    for _ in range(1000):
        if cycle is None or getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0.001)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
