"""Console sign-in: a reviewer token exchanged for a session cookie, and the CSRF token its forms
carry.

- The cookie holds 32 random bytes; Postgres keeps only their SHA-256 (``console_sessions``),
  so a database read does not yield a usable cookie.
- A session ends at the earliest of: sign-out, ``KEEL_CONSOLE_SESSION_HOURS``, and its token's own
  expiry or revocation (checked on every request: revoking the token signs the reviewer out).
- Every state-changing form carries the session's CSRF token (a synchronizer token); the cookie
  is also ``SameSite=Strict``, so a cross-site form does not even send it. A POST whose token is
  missing or wrong is refused and audited (``console.request_refused`` under ``keel/console``).
- Sign-in and sign-out are audited there too, naming the token id, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from activities.audit_trail import AuditEventInput, write_audit_event
from infra.database import session_factory
from infra.tables import ApiToken, ConsoleSession
from services.api_tokens import TokenRejected, TokenRole, TokenState, token_state, verify_token

CONSOLE_AUDIT_ID = "keel/console"
SESSION_COOKIE = "keel_console"
# Before sign-in there is no session to hold a CSRF token: the sign-in form's token is
# double-submitted (this cookie and the form field must agree).
SIGN_IN_CSRF_COOKIE = "keel_console_sign_in"
_SECRET_BYTES = 32
SWEEP_AFTER = timedelta(days=7)


class SignInRefused(Exception):
    """The token cannot open the console; the message says why (never contains the token)."""


@dataclass(frozen=True)
class Reviewer:
    """Who a console request speaks for."""

    session_id: int
    token_id: str
    tenant: str
    reviewer: str
    role: TokenRole
    csrf_token: str
    expires_at: datetime


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def same_token(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison; a missing side never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


async def sign_in(presented_token: str, lifetime: timedelta) -> tuple[str, Reviewer]:
    """Verify a reviewer (or admin) token that names a reviewer, open a session, and return the
    cookie's secret with the identity. Raises SignInRefused."""
    async with session_factory().begin() as db:
        try:
            caller = await verify_token(db, presented_token.strip())
        except TokenRejected as rejected:
            raise SignInRefused(str(rejected)) from None
        if caller.role not in (TokenRole.REVIEWER, TokenRole.ADMIN):
            raise SignInRefused(
                f"token {caller.id} has role {caller.role.value}; the console needs a reviewer "
                "token (keel token create --role reviewer --reviewer NAME)"
            )
        if caller.reviewer is None:
            raise SignInRefused(
                f"token {caller.id} names no reviewer, and decisions need one: use a token "
                "created with --reviewer NAME"
            )
        token = await db.get(ApiToken, caller.id)
        assert token is not None
        expires_at = datetime.now(UTC) + lifetime
        if token.expires_at is not None:
            expires_at = min(expires_at, token.expires_at)
        # Sessions long over are of no use to anyone: sign-ins sweep them (a week's grace keeps
        # recent ones for whoever looks into a sign-in question).
        await db.execute(
            delete(ConsoleSession).where(
                ConsoleSession.expires_at < datetime.now(UTC) - SWEEP_AFTER
            )
        )
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        row = ConsoleSession(
            secret_sha256=_digest(secret),
            token_id=caller.id,
            csrf_token=new_csrf_token(),
            expires_at=expires_at,
        )
        db.add(row)
        await db.flush()
        identity = Reviewer(
            row.id, caller.id, caller.tenant, caller.reviewer, caller.role, row.csrf_token,
            expires_at,
        )  # fmt: skip
        await _audit(db, identity, "console.signed_in", {"expires_at": expires_at.isoformat()})
    return secret, identity


async def current_reviewer(cookie: str | None) -> Reviewer | None:
    """The identity behind a session cookie, or None when it is absent, unknown, signed out,
    expired, or its token no longer opens the API."""
    if not cookie or len(cookie) > 200:
        return None
    async with session_factory()() as db:
        found = (
            await db.execute(
                select(ConsoleSession, ApiToken)
                .join(ApiToken, ApiToken.id == ConsoleSession.token_id)
                .where(ConsoleSession.secret_sha256 == _digest(cookie))
            )
        ).first()
    if found is None:
        return None
    row, token = found
    now = datetime.now(UTC)
    if row.signed_out_at is not None or row.expires_at <= now:
        return None
    if token_state(token, now) != TokenState.ACTIVE or token.reviewer is None:
        return None
    return Reviewer(
        row.id, token.id, token.tenant, token.reviewer, TokenRole(token.role), row.csrf_token,
        row.expires_at,
    )  # fmt: skip


async def sign_out(reviewer: Reviewer) -> None:
    async with session_factory().begin() as db:
        ended = await db.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id == reviewer.session_id, ConsoleSession.signed_out_at.is_(None))
            .values(signed_out_at=datetime.now(UTC))
            .returning(ConsoleSession.id)
        )
        if ended.first() is not None:
            await _audit(db, reviewer, "console.signed_out", {})


async def record_refusal(reviewer: Reviewer, path: str, why: str) -> None:
    """Audit a refused request of a signed-in reviewer (a forged or stale form, a gate of
    another tenant): who it came as, and where."""
    async with session_factory().begin() as db:
        await write_audit_event(
            db,
            AuditEventInput(
                event_key=f"{CONSOLE_AUDIT_ID}/{uuid.uuid4()}",
                workflow_id=CONSOLE_AUDIT_ID,
                tenant=reviewer.tenant,
                event_type="console.request_refused",
                actor=reviewer.reviewer,
                payload={"path": path[:300], "why": why, "token_id": reviewer.token_id},
            ),
        )


async def _audit(
    db: AsyncSession, reviewer: Reviewer, event_type: str, extra: dict[str, object]
) -> None:
    await write_audit_event(
        db,
        AuditEventInput(
            event_key=f"{CONSOLE_AUDIT_ID}/{uuid.uuid4()}",
            workflow_id=CONSOLE_AUDIT_ID,
            tenant=reviewer.tenant,
            event_type=event_type,
            actor=reviewer.reviewer,
            payload={"token_id": reviewer.token_id, "session": reviewer.session_id, **extra},
        ),
    )
