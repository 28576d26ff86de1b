"""What every route needs, built once per API process (see api/app.py's lifespan)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from temporalio.client import Client

from api.errors import ApiError
from api.load_shedding import LoadShedder
from contracts.llm import RequestPriority
from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings
from infra.token_streams import StreamHub

# Optional: when sent, it must name the token's own tenant (api/auth.py).
TENANT_HEADER = "X-Keel-Tenant"
PRIORITY_HEADER = "X-Keel-Priority"
SESSION_HEADER = "X-Keel-Session-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass
class KeelApi:
    settings: KeelSettings
    client: Client
    hub: StreamHub
    shedder: LoadShedder
    # How client-given URLs' hosts are resolved for the outbound guard (tests: a stub).
    resolver: Resolver = field(default=system_resolver)


def keel_api(request: Request) -> KeelApi:
    """FastAPI dependency: the process's clients (who is calling is api/auth.py's job)."""
    api: KeelApi = request.app.state.keel
    return api


def request_priority(request: Request) -> RequestPriority:
    raw = request.headers.get(PRIORITY_HEADER, RequestPriority.NORMAL.value).strip().lower()
    try:
        return RequestPriority(raw)
    except ValueError:
        raise ApiError(
            400,
            f"{PRIORITY_HEADER} must be one of high, normal, low (got {raw!r})",
            param=PRIORITY_HEADER,
        ) from None


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
_ADMISSION_CONTROLLED = "keel_admission_controlled"


def admission_controlled(endpoint: Endpoint) -> Endpoint:
    """Marks a route whose requests pass admission control: ``shed_before_authentication``
    refuses them when saturated, before their token is verified; a route whose requests hold
    work in flight (a streamed turn) also counts them with ``LoadShedder.admit``. Goes under
    the route's decorator."""
    setattr(endpoint, _ADMISSION_CONTROLLED, True)
    return endpoint


def shed_before_authentication(request: Request) -> None:
    """Router dependency, declared before the token's: a request to an admission-controlled
    route gets its 503 at once when keel would refuse it now. Under overload most requests are
    refused, so a refusal must cost next to nothing: it comes before the token is looked up in
    Postgres and the body is validated (FastAPI solves dependencies in order, the body last).
    With 200 clients and ~80 % shed, token verification was 17 % of the API's CPU, mostly for
    requests then refused. The route still admits (and counts) the requests let through."""
    if getattr(request.scope.get("endpoint"), _ADMISSION_CONTROLLED, False):
        keel_api(request).shedder.check(request_priority(request))
