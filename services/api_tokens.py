"""Bearer tokens for keel's HTTP API: create (the secret is shown once), verify, list, revoke.

A token reads ``keel_tok_<16 hex>_<43 url-safe characters>``: ``keel_`` + the token's public id
(``tok_…``, what lists, logs and the audit trail name) + ``_`` + 32 random bytes. Only the
SHA-256 of the whole token is stored. 256 random bits leave nothing to brute-force, so a fast
hash is enough, and looking the row up by that hash is constant-time-safe: what the index
compares is a digest an attacker cannot steer towards a real one.

Each token belongs to one tenant and has one role:

- ``client``: chat completions, sessions, jobs;
- ``reviewer``: the review queue and approval decisions, as the reviewer the token names;
- ``admin``: everything in its tenant (decisions too, when it names a reviewer).

Creating and revoking are audited under the pseudo workflow id ``keel/tokens``
(``keel audit keel/tokens``); the audit payload holds the id, never the secret or its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from activities.approvals import reviewer_roles
from activities.audit_trail import AuditEventInput, write_audit_event
from infra.tables import ApiToken

TOKENS_AUDIT_ID = "keel/tokens"
TOKEN_ID_PREFIX = "tok_"
_SECRET_BYTES = 32
# keel_ + id + _ + secret. The id is hex (no '_'), so the secret's own '_' characters never
# make the split ambiguous.
TOKEN_PATTERN = re.compile(r"keel_(tok_[0-9a-f]{16})_([A-Za-z0-9_\-]{43,100})")
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,99}")
# `last_used_at` is written at most this often per token: an exact time would cost a write on
# every request, and "used in the last minute" is what a person deciding to revoke needs.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_DURATION = re.compile(r"(\d+)\s*([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class TokenRole(StrEnum):
    CLIENT = "client"
    REVIEWER = "reviewer"
    ADMIN = "admin"


class TokenState(StrEnum):
    """Whether a token still opens the API (derived from the row, not stored)."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class TokenSpecError(ValueError):
    """A token cannot be created as asked; the message says what to change."""


class TokenNotFound(LookupError):
    pass


class TokenRejected(Exception):
    """A presented token does not authenticate. The message never contains the token."""


@dataclass(frozen=True)
class IssuedToken:
    """A new token. ``secret`` exists only here, once: print it and let it go."""

    id: str
    secret: str
    tenant: str
    role: TokenRole
    reviewer: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class VerifiedToken:
    """Who a request speaks for: the token's id, tenant, role and (for decisions) reviewer."""

    id: str
    tenant: str
    role: TokenRole
    reviewer: str | None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_expiry(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``2w``, or ``never`` (None)."""
    cleaned = text.strip().lower()
    if cleaned in ("never", "none", ""):
        return None
    match = _DURATION.fullmatch(cleaned)
    if match is None or int(match.group(1)) == 0:
        raise TokenSpecError(
            f"--expires {text!r}: give a positive number and a unit (m, h, d, w), e.g. 30d, "
            "or 'never'"
        )
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


async def _check_spec(
    session: AsyncSession,
    tenant: str,
    role: TokenRole,
    reviewer: str | None,
    configured_reviewers: dict[str, list[str]],
) -> None:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise TokenSpecError(
            f"--tenant {tenant!r}: 1-100 characters of letters, digits, '_', '.', ':', '@' or "
            "'-', starting with a letter or digit"
        )
    if role == TokenRole.CLIENT and reviewer is not None:
        raise TokenSpecError(
            "a client token cannot act as a reviewer: drop --reviewer, or use --role reviewer"
        )
    if role == TokenRole.REVIEWER and reviewer is None:
        raise TokenSpecError(
            "a reviewer token decides as one reviewer: add --reviewer NAME "
            "(see who may decide: keel reviewers list)"
        )
    if reviewer is not None:
        known = await reviewer_roles(session, configured_reviewers)
        if reviewer not in known:
            raise TokenSpecError(
                f"{reviewer!r} is not a reviewer: add them first "
                f"(keel reviewers add {reviewer} --role ROLE), then create the token"
            )


async def create_token(
    session: AsyncSession,
    *,
    tenant: str,
    role: TokenRole,
    created_by: str,
    reviewer: str | None = None,
    description: str | None = None,
    expires_in: timedelta | None = None,
    configured_reviewers: dict[str, list[str]] | None = None,
) -> IssuedToken:
    """Store a new token's hash and audit its creation, in the caller's transaction."""
    await _check_spec(session, tenant, role, reviewer, configured_reviewers or {})
    if description is not None and len(description) > 300:
        raise TokenSpecError("--description is limited to 300 characters")
    token_id = TOKEN_ID_PREFIX + secrets.token_hex(8)
    secret = f"keel_{token_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    session.add(
        ApiToken(
            id=token_id,
            token_sha256=token_sha256(secret),
            tenant=tenant,
            role=role.value,
            reviewer=reviewer,
            description=description,
            created_by=created_by,
            expires_at=expires_at,
        )
    )
    await _audit(
        session,
        "token.created",
        tenant,
        created_by,
        {
            "token_id": token_id,
            "role": role.value,
            "reviewer": reviewer,
            "description": description,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return IssuedToken(token_id, secret, tenant, role, reviewer, expires_at)


async def revoke_token(
    session: AsyncSession, token_id: str, revoked_by: str
) -> tuple[ApiToken, bool]:
    """Revoke ``token_id`` (audited) and say whether this call revoked it: revoking a revoked
    token changes nothing and is not audited again. Raises TokenNotFound."""
    token = await session.get(ApiToken, token_id, with_for_update=True)
    if token is None:
        raise TokenNotFound(token_id)
    if token.revoked_at is not None:
        return token, False
    token.revoked_at = datetime.now(UTC)
    await _audit(session, "token.revoked", token.tenant, revoked_by, {"token_id": token.id})
    return token, True


async def list_tokens(session: AsyncSession, tenant: str | None = None) -> list[ApiToken]:
    statement = select(ApiToken).order_by(ApiToken.tenant, ApiToken.created_at)
    if tenant is not None:
        statement = statement.where(ApiToken.tenant == tenant)
    return list((await session.execute(statement)).scalars())


def token_state(token: ApiToken, now: datetime | None = None) -> TokenState:
    if token.revoked_at is not None:
        return TokenState.REVOKED
    if token.expires_at is not None and token.expires_at <= (now or datetime.now(UTC)):
        return TokenState.EXPIRED
    return TokenState.ACTIVE


async def verify_token(session: AsyncSession, presented: str) -> VerifiedToken:
    """The token's identity, or TokenRejected (unknown, malformed, revoked, expired).

    Marks the token used when its ``last_used_at`` is older than LAST_USED_RESOLUTION, in the
    caller's transaction.
    """
    match = TOKEN_PATTERN.fullmatch(presented)
    if match is None:
        raise TokenRejected(
            "that is not a keel API token (they look like keel_tok_…); "
            "create one with `keel token create --tenant T --role client`"
        )
    row = (
        await session.execute(
            select(ApiToken).where(ApiToken.token_sha256 == token_sha256(presented))
        )
    ).scalar_one_or_none()
    # The id inside the token must be the row's: a hash collision is not a concern, but a token
    # whose parts disagree is not one keel issued.
    if row is None or not hmac.compare_digest(row.id, match.group(1)):
        raise TokenRejected(
            "unknown API token: it was not issued by this keel (or its database was reset); "
            "create one with `keel token create`"
        )
    now = datetime.now(UTC)
    state = token_state(row, now)
    if state == TokenState.REVOKED:
        raise TokenRejected(f"API token {row.id} was revoked; use a current token")
    if state == TokenState.EXPIRED:
        assert row.expires_at is not None
        raise TokenRejected(
            f"API token {row.id} expired at {row.expires_at:%Y-%m-%d %H:%M} UTC; "
            "create a new one (keel token create)"
        )
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests of one token write once per interval at most.
        await session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == row.id,
                or_(
                    ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at < func.now() - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=func.now())
        )
    return VerifiedToken(row.id, row.tenant, TokenRole(row.role), row.reviewer)


async def _audit(
    session: AsyncSession, event_type: str, tenant: str, actor: str, payload: dict[str, object]
) -> None:
    await write_audit_event(
        session,
        AuditEventInput(
            event_key=f"{TOKENS_AUDIT_ID}/{uuid.uuid4()}",
            workflow_id=TOKENS_AUDIT_ID,
            tenant=tenant,
            event_type=event_type,
            actor=actor,
            payload=payload,
        ),
    )
