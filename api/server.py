"""Serving the API with uvicorn: in the foreground (``keel api``) or inside a running event loop
(tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from temporalio.client import Client

from api.app import create_app
from infra.listening_socket import bind_tcp
from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(
    settings: KeelSettings,
    client: Client | None,
    log_config: Any,
    access_log: bool,
    resolver: Resolver = system_resolver,
) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings, client, resolver),
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        log_config=log_config,
        access_log=access_log,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        backlog=2048,
    )


def serve(settings: KeelSettings) -> None:
    """Serve on ``settings.api_host:api_port`` until SIGINT/SIGTERM."""
    sock = bind_tcp(settings.api_host, settings.api_port)
    server = uvicorn.Server(_config(settings, None, log_config=None, access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def running_api(
    settings: KeelSettings,
    client: Client | None = None,
    port: int = 0,
    resolver: Resolver = system_resolver,
) -> AsyncIterator[str]:
    """The API served from this event loop on an ephemeral port; yields its base URL."""
    config = _config(settings, client, log_config=None, access_log=False, resolver=resolver)
    async with serving(config, port) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config, port: int = 0) -> AsyncIterator[str]:
    """Any ASGI app (``config``) served from this event loop on 127.0.0.1; yields its URL."""
    sock = bind_tcp("127.0.0.1", port)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("the server stopped during startup")
            await asyncio.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()
