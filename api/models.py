"""``GET /v1/models``: what a token may name as ``model`` — keel's routes (a fallback chain
answers), ``keel`` (the default route), and every model of the routes' chains (canaries
included) whose provider this keel can reach. ``GET /v1/models/{model}``: one of them.

Tokens carry no model restrictions of their own: every token of a keel may use every route it
serves, so the list is the same for all its tokens. A model id outside every route may still be
named (it is sent to its provider as is); it is not listed because keel cannot know it exists.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from activities.llm.providers import get_provider
from activities.llm.routing import route_policy
from api.auth import client_caller
from api.errors import ApiError
from api.state import KeelApi, keel_api
from contracts.llm import provider_for_model
from infra.settings import KeelSettings
from services.api_tokens import VerifiedToken

router = APIRouter(tags=["models"])

DEFAULT_ROUTE_ALIAS = "keel"
# OpenAI's `created` is when a model was published; keel's entries exist since the API started.
_STARTED = int(time.time())


class ModelDetails(BaseModel):
    """What keel adds to OpenAI's Model object."""

    kind: Literal["route", "model"]
    # A route's models in fallback order (primary chain first, then canaries); a model's
    # provider.
    models: list[str] | None = None
    provider: str | None = None
    routes: list[str] | None = Field(default=None, description="The routes whose chains hold it.")


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    keel: ModelDetails


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _reachable(provider: str, settings: KeelSettings) -> bool:
    try:
        get_provider(provider, settings)
    except LookupError:
        return False
    return True


def _route_models(route: str, settings: KeelSettings) -> list[str]:
    chains = [settings.routes[route], *(c.models for c in route_policy(route, settings).canaries)]
    return list(dict.fromkeys(model for chain in chains for model in chain))


def available_models(settings: KeelSettings) -> list[ModelObject]:
    """Routes first (the default route's alias leading), then models, each once."""
    entries: list[ModelObject] = []
    if settings.default_route in settings.routes:
        default_models = _route_models(settings.default_route, settings)
        entries.append(
            ModelObject(
                id=DEFAULT_ROUTE_ALIAS,
                created=_STARTED,
                owned_by="keel",
                keel=ModelDetails(kind="route", models=default_models),
            )
        )
    in_routes: dict[str, list[str]] = {}
    for route in settings.routes:
        models = _route_models(route, settings)
        details = ModelDetails(kind="route", models=models)
        entries.append(ModelObject(id=route, created=_STARTED, owned_by="keel", keel=details))
        for model in models:
            in_routes.setdefault(model, []).append(route)
    for model, routes in in_routes.items():
        if model in settings.routes or model == DEFAULT_ROUTE_ALIAS:
            continue  # a route's name wins: naming it runs the route
        provider, _ = provider_for_model(model)
        if not _reachable(provider, settings):
            continue
        entries.append(
            ModelObject(
                id=model,
                created=_STARTED,
                owned_by=provider,
                keel=ModelDetails(kind="model", provider=provider, routes=routes),
            )
        )
    return entries


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    api: KeelApi = Depends(keel_api), caller: VerifiedToken = Depends(client_caller)
) -> ModelList:
    """The routes and models this token may name as ``model``."""
    return ModelList(data=available_models(api.settings))


@router.get("/v1/models/{model:path}", response_model=ModelObject)
async def retrieve_model(
    model: str = Path(min_length=1, max_length=200),
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> ModelObject:
    """One route or model of the list (404 for any other name)."""
    for entry in available_models(api.settings):
        if entry.id == model:
            return entry
    raise ApiError(
        404,
        f"no route or model {model!r} in this keel's routes (GET /v1/models lists them)",
        param="model",
        code="model_not_found",
    )
