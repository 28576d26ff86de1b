"""keel's HTTP API (FastAPI): OpenAI-compatible chat completions, sessions, async jobs.

``keel api`` serves it with uvicorn; ``create_app()`` builds it for tests and embedding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.client import Client

from api import approvals, batches, chat, console, files, jobs, messages, models, sessions
from api.auth import authenticated_caller
from api.errors import ERROR_RESPONSES, install_error_handlers
from api.load_shedding import LoadShedder
from api.request_limits import RequestBodyLimit, upload_limit
from api.state import KeelApi, shed_before_authentication
from infra.metrics import REGISTRY
from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import connect
from infra.token_streams import StreamHub


def create_app(
    settings: KeelSettings | None = None,
    client: Client | None = None,
    resolver: Resolver = system_resolver,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        temporal = client or await connect(resolved)
        async with StreamHub(resolved.effective_database_url) as hub:
            shedder = LoadShedder(temporal, resolved)
            await shedder.start()
            app.state.keel = KeelApi(
                settings=resolved, client=temporal, hub=hub, shedder=shedder, resolver=resolver
            )
            try:
                yield
            finally:
                await shedder.stop()

    app = FastAPI(
        title="keel",
        summary="Durable LLM workflows on Temporal, over HTTP.",
        description="OpenAI-compatible chat completions backed by durable chat sessions, "
        "resumable token streams, and async jobs with signed callbacks.",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    install_error_handlers(app)
    # Outermost, so an oversized body is refused before anything else reads or parses it.
    app.add_middleware(
        RequestBodyLimit,
        max_bytes=lambda: (settings or get_settings()).max_request_body_bytes,
        larger_limits={"/v1/files": lambda: upload_limit(settings or get_settings())},
    )
    # Every /v1 route needs a token, whatever its own role check (api/auth.py): a route that
    # forgets one is still closed. FastAPI verifies the token once per request.
    # Admission-controlled routes refuse an overloaded request before its token is verified.
    authenticated = [Depends(shed_before_authentication), Depends(authenticated_caller)]
    routers = (chat.router, messages.router, sessions.router, jobs.router, approvals.router)
    for router in (*routers, models.router, files.router, batches.router):
        app.include_router(router, dependencies=authenticated)
    # The reviewer console: HTML pages behind a session cookie (a reviewer token exchanged).
    console.mount(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, object]:
        keel: KeelApi = app.state.keel
        return {"ok": True, "stream_listener": keel.hub.listening, **keel.shedder.report()}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """keel's Prometheus metrics in this process (admission counts, in flight, limit)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
