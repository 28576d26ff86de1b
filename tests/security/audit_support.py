"""Helpers for the audit-trail and retention tests: real reviews that write trails, a superuser
connection to tamper with them (what a database administrator could do), and verification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from temporalio.client import Client

from contracts.approvals import ApprovalMode, EditDecision, RejectDecision, ReviewPolicy
from infra.audit_chain import ChainReport, verify_trail
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.approvals.records import pending_gate, seed_reviewers
from tests.approvals.reviews import start_review

REVISED = "Revenue grew 12% in Q3."
EDITED = "Revenue grew 12% to 4.1 million euros in Q3."


async def run_review(
    client: Client, settings: KeelSettings, simulator: SimServer, tenant: str = "default"
) -> str:
    """A DocumentReview through two gates: rejected (with a reason), revised, then edited and
    published. Returns its workflow id; its trail has a dozen rows."""
    await seed_reviewers(alice="editor")
    reason = "state the revenue figure"
    simulator.add_canned_response(f"Their reason: {reason}", REVISED)
    handle = await start_review(
        client, settings, ReviewPolicy(mode=ApprovalMode.ALWAYS), tenant=tenant
    )
    await pending_gate(handle.id)
    await handle.execute_update("reject", RejectDecision(reviewer="alice", reason=reason))
    await pending_gate(handle.id, "publish-revision-1")
    await handle.execute_update("edit", EditDecision(reviewer="alice", text=EDITED))
    result = await handle.result()
    assert result.status == "published"
    return handle.id


async def verify(workflow_id: str) -> ChainReport:
    async with session_factory()() as session:
        return await verify_trail(session, workflow_id)


@asynccontextmanager
async def superuser(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The login user of the test database (a superuser): not bound by keel's roles."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def trail_rows(connection: asyncpg.Connection, workflow_id: str) -> list[asyncpg.Record]:
    return list(
        await connection.fetch(
            "SELECT * FROM audit_events WHERE workflow_id = $1 ORDER BY seq", workflow_id
        )
    )


async def snapshot(connection: asyncpg.Connection, workflow_id: str) -> dict[str, Any]:
    return {
        "rows": await trail_rows(connection, workflow_id),
        "head": await connection.fetchrow(
            "SELECT * FROM audit_chain_heads WHERE workflow_id = $1", workflow_id
        ),
    }


async def restore(connection: asyncpg.Connection, workflow_id: str, saved: dict[str, Any]) -> None:
    """Put the trail back exactly as it was (same ids, hashes and head)."""
    async with connection.transaction():
        await connection.execute("DELETE FROM audit_events WHERE workflow_id = $1", workflow_id)
        await connection.execute(
            "DELETE FROM audit_chain_heads WHERE workflow_id = $1", workflow_id
        )
        rows = saved["rows"]
        await connection.copy_records_to_table(
            "audit_events",
            records=[tuple(row.values()) for row in rows],
            columns=list(rows[0].keys()),
        )
        head = saved["head"]
        await connection.copy_records_to_table(
            "audit_chain_heads", records=[tuple(head.values())], columns=list(head.keys())
        )
