"""The ASGI application: routes for both provider APIs, the model list, health and admin."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from llmsim.admin import admin_routes
from llmsim.anthropic_api import AnthropicAdapter
from llmsim.batches import batch_routes
from llmsim.catalog import ModelSpec
from llmsim.connection import TransportCaptureMiddleware
from llmsim.openai_api import OpenAIAdapter
from llmsim.pipeline import ApiError, error_response, handle_completion, new_request_id
from llmsim.state import SimState

OPENAI = OpenAIAdapter()
ANTHROPIC = AnthropicAdapter()


def _is_anthropic(request: Request) -> bool:
    # The two APIs share GET /v1/models; only Anthropic's SDK sends anthropic-version.
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def _openai_model(spec: ModelSpec) -> dict[str, Any]:
    owner = {"openai": "system", "anthropic": "anthropic", "sim": "llmsim"}[spec.provider]
    return {
        "id": spec.id,
        "object": "model",
        "created": spec.created,
        "owned_by": owner,
        "context_window": spec.context_window,
    }


def _anthropic_model(spec: ModelSpec) -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(spec.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "model",
        "id": spec.id,
        "display_name": spec.display_name or spec.id,
        "created_at": created,
    }


def create_app(state: SimState) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.bind_loop()
        yield
        state.begin_shutdown()

    async def chat_completions(request: Request) -> Response:
        return await handle_completion(request, OPENAI, state)

    async def messages(request: Request) -> Response:
        return await handle_completion(request, ANTHROPIC, state)

    async def count_message_tokens(request: Request) -> Response:
        request_id = new_request_id()
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ANTHROPIC.invalid_request("The request body must be a JSON object.")
            model = str(body.get("model", ""))
            spec = state.catalog.get(model)
            if spec is None:
                raise ANTHROPIC.model_not_found(model)
            parsed = ANTHROPIC.parse({**body, "max_tokens": 1}, spec)
        except ApiError as err:
            return error_response(err, ANTHROPIC, request_id)
        except ValueError:
            return error_response(
                ANTHROPIC.invalid_request("invalid JSON body"), ANTHROPIC, request_id
            )
        return JSONResponse(
            {"input_tokens": parsed.prompt.tokens}, headers=ANTHROPIC.headers(request_id)
        )

    async def list_models(request: Request) -> Response:
        specs = list(state.catalog.values())
        if _is_anthropic(request):
            data = [_anthropic_model(s) for s in specs]
            return JSONResponse(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
            )
        return JSONResponse({"object": "list", "data": [_openai_model(s) for s in specs]})

    async def get_model(request: Request) -> Response:
        model = request.path_params["model"]
        spec = state.catalog.get(model)
        anthropic = _is_anthropic(request)
        adapter = ANTHROPIC if anthropic else OPENAI
        if spec is None:
            return error_response(adapter.model_not_found(model), adapter, new_request_id())
        return JSONResponse(_anthropic_model(spec) if anthropic else _openai_model(spec))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "llmsim", "models": len(state.catalog)})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = f"Invalid URL ({request.method} {request.url.path})"
        if status == 405:
            message = f"Method {request.method} not allowed for {request.url.path}"
        if _is_anthropic(request):
            kind = "not_found_error" if status == 404 else "invalid_request_error"
            body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        return JSONResponse(body, status_code=status)

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        *batch_routes(state.batches),
        Route("/v1/messages/count_tokens", count_message_tokens, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *admin_routes(state),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    return TransportCaptureMiddleware(app)
