"""Console sessions in Postgres: what a sign-in stores, and when a session stops opening pages."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from api.console.sessions import current_reviewer, sign_in, sign_out
from infra.database import session_factory
from services.api_tokens import revoke_token
from tests.approvals.records import seed_reviewers
from tests.console.conftest import reviewer_token


async def test_a_session_is_stored_hashed_and_ends_with_sign_out_or_its_token(
    database_url: str,
) -> None:
    await seed_reviewers(alice="editor")
    token = await reviewer_token("alice")
    secret, alice = await sign_in(token.secret, timedelta(hours=8))
    connection = await asyncpg.connect(database_url)
    try:
        stored = await connection.fetchval("SELECT secret_sha256 FROM console_sessions")
        assert stored != secret and secret not in str(
            await connection.fetch("TABLE console_sessions")
        )
        assert (await current_reviewer(secret)) == alice

        await sign_out(alice)
        assert await current_reviewer(secret) is None

        second, _ = await sign_in(token.secret, timedelta(hours=8))
        assert await current_reviewer(second) is not None
        async with session_factory().begin() as session:
            await revoke_token(session, token.id, "test")
        assert await current_reviewer(second) is None

        # Sessions that ended over a week ago are swept by the next sign-in.
        await connection.execute(
            "UPDATE console_sessions SET expires_at = now() - interval '8 days'"
        )
        other = await reviewer_token("alice")
        await sign_in(other.secret, timedelta(hours=8))
        assert await connection.fetchval("SELECT count(*) FROM console_sessions") == 1
    finally:
        await connection.close()
