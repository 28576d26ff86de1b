"""What every route needs, built once per API process (see api/app.py's lifespan)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
