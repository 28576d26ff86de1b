"""Alembic owns the schema: it upgrades, downgrades and re-upgrades cleanly, with no drift."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from alembic.util import CommandError

from infra.migrate import check_models_match, downgrade_to_base, upgrade_to_head

EXPECTED_TABLES = {
    "sessions",
    "messages",
    "audit_events",
    "llm_calls",
    "approvals",
    "batches",
    "batch_items",
    "budgets",
    "circuit_breakers",
    "llm_response_cache",
    "tenant_daily_spend",
    "rate_limit_buckets",
    "reviewers",
    "published_documents",
    "stream_events",
    "jobs",
    "api_tokens",
    "audit_chain_heads",
    "console_sessions",
    "provider_batch_chunks",
    "openai_files",
    "openai_batches",
}


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows} - {"alembic_version"}


@pytest.fixture
async def empty_database(postgres_server_url: str) -> str:
    name = f"keel_schema_{os.getpid()}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return postgres_server_url.rpartition("/")[0] + f"/{name}"


async def test_upgrade_downgrade_upgrade_round_trip(empty_database: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database)
    assert await _tables(empty_database) == EXPECTED_TABLES
    await asyncio.to_thread(downgrade_to_base, empty_database)
    assert await _tables(empty_database) == set()
    await asyncio.to_thread(upgrade_to_head, empty_database)
    assert await _tables(empty_database) == EXPECTED_TABLES


async def test_models_and_migrations_do_not_drift(empty_database: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database)
    await asyncio.to_thread(check_models_match, empty_database)


async def test_drift_is_detected(empty_database: str) -> None:
    """The drift check itself can fail: a column the models lack is reported."""
    await asyncio.to_thread(upgrade_to_head, empty_database)
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute("ALTER TABLE budgets ADD COLUMN stray integer")
    finally:
        await connection.close()
    with pytest.raises(CommandError):
        await asyncio.to_thread(check_models_match, empty_database)
