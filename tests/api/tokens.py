"""Issuing API tokens in the test's database, as `keel token create` does, and using them."""

from __future__ import annotations

from datetime import timedelta

import httpx2
import openai

from infra.database import session_factory
from services.api_tokens import IssuedToken, TokenRole, create_token


async def issue_token(
    tenant: str = "default",
    role: TokenRole = TokenRole.CLIENT,
    reviewer: str | None = None,
    expires_in: timedelta | None = None,
) -> IssuedToken:
    async with session_factory().begin() as session:
        return await create_token(
            session,
            tenant=tenant,
            role=role,
            reviewer=reviewer,
            created_by="test",
            expires_in=expires_in,
            description="issued by a test",
        )


def bearer(token: IssuedToken | str) -> dict[str, str]:
    secret = token.secret if isinstance(token, IssuedToken) else token
    return {"Authorization": f"Bearer {secret}"}


def http_client(keel_url: str, token: IssuedToken, timeout: float = 30) -> httpx2.AsyncClient:
    """An HTTP client that sends ``token`` with every request."""
    return httpx2.AsyncClient(base_url=keel_url, headers=bearer(token), timeout=timeout)


def openai_client(keel_url: str, token: IssuedToken, **headers: str) -> openai.AsyncOpenAI:
    """The official SDK pointed at keel, with the keel token as its api_key."""
    return openai.AsyncOpenAI(
        base_url=f"{keel_url}/v1", api_key=token.secret, max_retries=0, default_headers=headers
    )
