"""Fixtures for session tests: a stream hub on the test's database, helpers to read sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import ChatSession, Message
from infra.token_streams import StreamHub


@pytest.fixture
async def stream_hub(keel_settings: KeelSettings) -> AsyncIterator[StreamHub]:
    async with StreamHub(keel_settings.effective_database_url) as hub:
        yield hub


async def stored_messages(session_id: str) -> list[Message]:
    async with session_factory()() as db:
        result = await db.execute(
            select(Message).where(Message.session_id == session_id).order_by(Message.seq)
        )
        return list(result.scalars())


async def stored_session(session_id: str) -> ChatSession | None:
    async with session_factory()() as db:
        return await db.get(ChatSession, session_id)
