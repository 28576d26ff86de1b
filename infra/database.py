"""The async engine and session factory every activity and starter shares (one per process).

Every connection takes one of keel's database roles at connect (``role`` as a startup parameter,
which RESET ROLE and RESET ALL return to): the application's sessions are ``keel_app``, which may
append audit rows but never change or delete them, even when DATABASE_URL logs in as a
superuser; ``keel purge`` runs as ``keel_retention``. Migrations connect as the login user.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from infra.settings import KeelSettings, get_settings


class DatabaseRole(StrEnum):
    """Which of keel's roles a connection takes (names from settings)."""

    APPLICATION = "application"
    RETENTION = "retention"


_engines: dict[tuple[str, str | None], AsyncEngine] = {}


def role_name(purpose: DatabaseRole, settings: KeelSettings | None = None) -> str | None:
    settings = settings or get_settings()
    if purpose is DatabaseRole.RETENTION:
        return settings.retention_database_role
    return settings.database_role


def role_server_settings(
    purpose: DatabaseRole = DatabaseRole.APPLICATION, settings: KeelSettings | None = None
) -> dict[str, str]:
    """asyncpg ``server_settings`` that make a connection take the role (empty: login user)."""
    role = role_name(purpose, settings)
    return {"role": role} if role else {}


def _postgres_error(error: BaseException) -> tuple[str, str]:
    """The sqlstate and message of the Postgres error inside SQLAlchemy's wrappers, if any."""
    seen: BaseException | None = error
    while seen is not None:
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            return sqlstate, str(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return "", str(error)


def explain_role_error(error: BaseException) -> str | None:
    """What to do when Postgres refused the role a connection asked for, else None."""
    sqlstate, message = _postgres_error(error)
    message = message.splitlines()[0] if message else message
    settings = "KEEL_DATABASE_ROLE (keel purge: KEEL_RETENTION_DATABASE_ROLE)"
    if sqlstate == "22023" and message.startswith("role ") and "does not exist" in message:
        return (
            f"Postgres refused keel's database role: {message}. Run `alembic upgrade head` "
            f"(migration 0008 creates keel_app and keel_retention), or set {settings} to a "
            "role you manage (`none`: the login user's own privileges)"
        )
    if sqlstate == "42501" and "set role" in message:
        return (
            f"Postgres refused keel's database role: {message}. Make the user in DATABASE_URL a "
            f"member of it (as a superuser: GRANT <role> TO <user>), or set {settings}"
        )
    return None


class DatabaseRoleError(RuntimeError):
    """A connection could not take keel's database role; the message says what to do."""


def _explain_role_errors(context: ExceptionContext) -> None:
    explanation = explain_role_error(context.original_exception)
    if explanation is not None:
        raise DatabaseRoleError(explanation) from context.original_exception


def _replace_connection_closed_in_pool(
    dbapi_connection: Any, connection_record: ConnectionPoolEntry, connection_proxy: Any
) -> None:
    """Swap a pooled connection the server closed while it sat idle for a new one, at checkout.

    A Postgres restart (``keel dev down && keel dev up``, a failover, an idle-session timeout)
    closes every pooled connection; asyncpg notices the socket closing on its event loop, so
    ``is_closed()`` is a local flag, not a round trip. DisconnectionError makes the pool connect
    afresh and hand that out instead, before the caller ran anything: the API request, CLI
    command or activity that would have failed with "connection is closed" never sees it.
    (asyncpg learns of the close when its loop reads the socket's end, which a restart gives it
    long before the next request; a connection that dies after checkout fails like any other
    mid-transaction, since replaying a transaction is not safe in general.)
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("pooled connection was closed by the server while idle")


def get_engine(
    database_url: str | None = None,
    purpose: DatabaseRole = DatabaseRole.APPLICATION,
    settings: KeelSettings | None = None,
) -> AsyncEngine:
    """The process's engine for the URL and role (``settings``: whose URL and role names;
    None: the process's settings)."""
    settings = settings or get_settings()
    url = database_url or settings.effective_database_url
    role = role_name(purpose, settings)
    engine = _engines.get((url, role))
    if engine is None:
        connect_args: dict[str, Any] = {"server_settings": {"role": role}} if role else {}
        # No pre-ping: it is a round trip on every checkout of every LLM call (profiled at ~7% of a
        # batch worker's time). Connections the server closed while pooled are replaced at
        # checkout from asyncpg's local state instead (_replace_connection_closed_in_pool, free);
        # one that dies mid-transaction fails that attempt (Temporal retries an activity on a
        # fresh one) and SQLAlchemy invalidates the rest of the pool. Recycling bounds how stale
        # a pooled connection gets.
        engine = create_async_engine(
            url, pool_size=20, max_overflow=20, pool_recycle=1800, connect_args=connect_args
        )
        event.listen(engine.sync_engine, "handle_error", _explain_role_errors)
        event.listen(engine.sync_engine.pool, "checkout", _replace_connection_closed_in_pool)
        _engines[(url, role)] = engine
    return engine


def session_factory(
    database_url: str | None = None,
    purpose: DatabaseRole = DatabaseRole.APPLICATION,
    settings: KeelSettings | None = None,
) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(get_engine(database_url, purpose, settings), expire_on_commit=False)


def sessions_for(
    settings: KeelSettings, purpose: DatabaseRole = DatabaseRole.APPLICATION
) -> async_sessionmaker[AsyncSession]:
    """Sessions on the database ``settings`` name, as the role they give ``purpose`` (what a
    worker hands its activities). Creating it connects nothing: the pool opens on first use."""
    return session_factory(settings.effective_database_url, purpose, settings)


async def dispose_engines() -> None:
    for engine in list(_engines.values()):
        await engine.dispose()
    _engines.clear()
