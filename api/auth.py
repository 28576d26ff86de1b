"""Who is calling: every ``/v1`` request must carry ``Authorization: Bearer <keel token>``.

The openai SDK sends its ``api_key`` exactly so, so ``OpenAI(base_url=keel, api_key=<token>)``
works as is; the anthropic SDK sends it as ``x-api-key: <token>``, which is read when there is
no Authorization header. There is no unauthenticated mode: ``/healthz``, ``/openapi.json`` and
``/docs`` are the only open paths. The reviewer console (``/console``) authenticates its own way:
a reviewer token exchanged for a session cookie (api/console/sessions.py). Tokens come from
``keel token create`` (infra/api_tokens.py).

- 401 (``authentication_error``): no token, not a keel token, unknown, revoked or expired.
- 403 (``permission_error``): the token's role cannot do this, or the request names another
  tenant than the token's (``X-Keel-Tenant``, a job's ``input.tenant``).
- A resource (session, job, workflow) of another tenant answers 404 exactly as one that does not
  exist: a 403 would tell a caller that it exists.

The token's tenant is THE tenant of the request; nothing in the request can choose another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.state import TENANT_HEADER
from infra.database import session_factory
from services.api_tokens import TokenRejected, TokenRole, VerifiedToken, verify_token

log = structlog.get_logger("keel.api.auth")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="keel"'}
# Declares the scheme in the OpenAPI document (the /docs "Authorize" button, schema-driven
# clients and fuzzers); the header itself is read below, for keel's own error messages.
_BEARER_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="KeelToken",
    description="A keel API token: `keel token create --tenant T --role client|reviewer|admin`.",
)
_CREATE_HINT = "create one with `keel token create --tenant TENANT --role client`"


def _refuse(status: int, message: str, code: str) -> ApiError:
    return ApiError(status, message, code=code, headers=_CHALLENGE if status == 401 else None)


def _presented_token(request: Request) -> str:
    header = request.headers.get("authorization")
    api_key = request.headers.get("x-api-key")
    if (header is None or not header.strip()) and api_key and api_key.strip():
        # The anthropic SDK sends its api_key as `x-api-key` (POST /v1/messages).
        return api_key.strip()
    if header is None or not header.strip():
        raise _refuse(
            401,
            f"missing API token: send `Authorization: Bearer <keel token>` ({_CREATE_HINT})",
            "missing_api_token",
        )
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _refuse(
            401,
            f"the Authorization header must read `Bearer <keel token>` ({_CREATE_HINT})",
            "invalid_api_token",
        )
    return value.strip()


async def authenticated_caller(
    request: Request,
    _declared: HTTPAuthorizationCredentials | None = Security(_BEARER_SCHEME),
) -> VerifiedToken:
    """FastAPI dependency (on every /v1 router): the verified token, or 401/403."""
    presented = _presented_token(request)
    try:
        async with session_factory().begin() as db:
            caller = await verify_token(db, presented)
    except TokenRejected as rejected:
        # The reason never holds the token (at most its public id); the path says what was tried.
        log.info("api.auth_refused", reason=str(rejected), path=request.url.path)
        raise _refuse(401, str(rejected), "invalid_api_token") from None
    claimed = request.headers.get(TENANT_HEADER)
    if claimed is not None and claimed.strip() != caller.tenant:
        log.info(
            "api.tenant_refused", token_id=caller.id, tenant=caller.tenant, path=request.url.path
        )
        raise _refuse(
            403,
            f"this token acts for tenant {caller.tenant!r}; {TENANT_HEADER} cannot choose "
            "another (drop the header, or use a token of that tenant)",
            "tenant_mismatch",
        )
    return caller


def _allowing(role: TokenRole, what: str) -> Callable[[VerifiedToken], Awaitable[VerifiedToken]]:
    async def guard(caller: VerifiedToken = Depends(authenticated_caller)) -> VerifiedToken:
        if caller.role not in (role, TokenRole.ADMIN):
            raise _refuse(
                403,
                f"token {caller.id} has role {caller.role.value}; {what} needs a "
                f"{role.value} (or admin) token",
                "insufficient_role",
            )
        return caller

    guard.__name__ = f"{role.value}_caller"
    return guard


# Endpoint dependencies: Depends(client_caller) on chat, sessions and jobs; reviewer_caller on
# the review queue and decisions. Admin tokens pass both.
client_caller = _allowing(TokenRole.CLIENT, "chat, sessions and jobs")
reviewer_caller = _allowing(TokenRole.REVIEWER, "the review queue and approval decisions")


def check_tenant_field(caller: VerifiedToken, value: object, param: str) -> None:
    """A tenant named in a request body must be the token's (it is implied when absent)."""
    if value is not None and value != caller.tenant:
        raise _refuse(
            403,
            f"this token acts for tenant {caller.tenant!r}; {param} cannot choose another "
            f"(got {value!r}): leave it out",
            "tenant_mismatch",
        )
