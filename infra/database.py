"""The async engine and session factory every activity and starter shares (one per process)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from infra.settings import get_settings

_engines: dict[str, AsyncEngine] = {}


def get_engine(database_url: str | None = None) -> AsyncEngine:
    url = database_url or get_settings().effective_database_url
    engine = _engines.get(url)
    if engine is None:
        # No pre-ping: it is a round trip on every checkout of every LLM call (profiled at ~7% of a
        # batch worker's time). A connection that died anyway fails its activity attempt, which
        # Temporal retries on a fresh one; recycling bounds how stale a pooled connection gets.
        engine = create_async_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)
        _engines[url] = engine
    return engine


def session_factory(
    database_url: str | None = None,
) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(get_engine(database_url), expire_on_commit=False)


async def dispose_engines() -> None:
    for engine in list(_engines.values()):
        await engine.dispose()
    _engines.clear()
