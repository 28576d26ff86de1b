"""Test doubles for the outbound guard: a resolver that maps test names to chosen addresses, and
an HTTP transport that connects to loopback only, so no test ever sends a packet elsewhere."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import httpx2


class StubResolver:
    """Test names → addresses; any other name does not resolve. Records what it was asked."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if host not in self.names:
            raise OSError(f"no such test host {host}")
        return self.names[host]


class LoopbackOnlyTransport(httpx2.AsyncBaseTransport):
    """Sends requests whose URL names a loopback address; refuses (and records) every other one
    before any connection, as a safety net under tests of code that must never try."""

    def __init__(self) -> None:
        self.sent: list[httpx2.Request] = []
        self.refused: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            loopback = ipaddress.ip_address(request.url.host).is_loopback
        except ValueError:
            loopback = False  # a name: connecting would resolve it anew
        if not loopback:
            self.refused.append(str(request.url))
            raise httpx2.ConnectError(
                "the test transport connects to loopback only", request=request
            )
        self.sent.append(request)
        # A transport of its own per request: the client closes its transport when it closes.
        async with httpx2.AsyncHTTPTransport() as inner:
            response = await inner.handle_async_request(request)
            content = await response.aread()
        return httpx2.Response(response.status_code, headers=response.headers, content=content)
