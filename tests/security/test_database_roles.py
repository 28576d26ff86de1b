"""Least privilege in Postgres: the application's sessions take the keel_app role, which may append
audit rows but never change or delete them, even though the tests log in as a superuser; purge's
keel_retention role may blank content columns and nothing else."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from activities.audit_trail import write_audit_event
from contracts.audit import AuditEventInput
from infra.database import DatabaseRole, DatabaseRoleError, dispose_engines, session_factory
from infra.tables import Base
from tests.conftest import reconfigure
from tests.security.audit_support import superuser, verify

APPEND_ONLY = {"audit_events"}
NO_DELETE = {"audit_chain_heads"}


async def _audit_row(workflow_id: str = "wf-roles") -> None:
    async with session_factory().begin() as session:
        await write_audit_event(
            session,
            AuditEventInput(
                event_key=f"{workflow_id}/1",
                workflow_id=workflow_id,
                event_type="test.event",
                payload={"text": "hello"},
            ),
        )


async def _run(statements: tuple[str, ...], purpose: DatabaseRole) -> None:
    async with session_factory(purpose=purpose).begin() as session:
        for statement in statements:
            await session.execute(text(statement))


async def _refused(*statements: str, purpose: DatabaseRole = DatabaseRole.APPLICATION) -> str:
    """Run ``statements`` in one session of ``purpose``; return Postgres' refusal."""
    with pytest.raises(DBAPIError) as refused:
        await _run(statements, purpose)
    assert isinstance(refused.value.orig, Exception)
    assert getattr(refused.value.orig, "sqlstate", None) == "42501", refused.value
    return str(refused.value.orig)


async def test_the_applications_sessions_cannot_update_delete_or_truncate_audit_rows(
    database_url: str,
) -> None:
    await _audit_row()
    async with session_factory()() as session:
        who = (await session.execute(text("SELECT current_user, session_user"))).one()
        # RESET ROLE returns to the role set at connect, not to the login user.
        await session.execute(text("RESET ROLE"))
        after_reset = (await session.execute(text("SELECT current_user"))).scalar_one()
    assert (who.current_user, after_reset) == ("keel_app", "keel_app")
    assert who.session_user == "postgres"  # the login is a superuser, the session is not

    for statement in (
        "UPDATE audit_events SET actor = 'mallory'",
        "UPDATE audit_events SET payload = '{}'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_chain_heads",
        "UPDATE alembic_version SET version_num = 'x'",
    ):
        assert "permission denied" in await _refused(statement), statement
    report = await verify("wf-roles")
    assert report.ok and report.rows == 1

    # The same statements as the login user go through: the role is what stops them.
    async with superuser(database_url) as connection:
        assert await connection.execute("UPDATE audit_events SET actor = 'mallory'") == "UPDATE 1"
    assert not (await verify("wf-roles")).ok


async def test_every_table_is_usable_by_the_application(database_url: str) -> None:
    """A migration that creates a table without the grants keel_app needs fails here (default
    privileges cover tables created by the migrating user; this catches any other way)."""
    async with superuser(database_url) as connection:
        for table in Base.metadata.sorted_tables:
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                allowed = await connection.fetchval(
                    "SELECT has_table_privilege('keel_app', $1, $2)", table.name, privilege
                )
                expected = privilege != "TRUNCATE" and not (
                    (table.name in APPEND_ONLY and privilege in ("UPDATE", "DELETE"))
                    or (table.name in NO_DELETE and privilege == "DELETE")
                )
                assert allowed == expected, (table.name, privilege)
            for column in table.columns:
                sequence = await connection.fetchval(
                    "SELECT pg_get_serial_sequence($1, $2)", table.name, column.name
                )
                if sequence is not None:
                    assert await connection.fetchval(
                        "SELECT has_sequence_privilege('keel_app', $1, 'USAGE')", sequence
                    ), sequence
        # And the one way tables usually arrive: a later migration, as the migrating user.
        await connection.execute("CREATE TABLE later_migration (id bigserial PRIMARY KEY)")
        assert await connection.fetchval(
            "SELECT has_table_privilege('keel_app', 'later_migration', 'INSERT')"
        )
        assert await connection.fetchval(
            "SELECT has_table_privilege('keel_retention', 'later_migration', 'SELECT')"
        )
    async with session_factory().begin() as session:
        await session.execute(text("INSERT INTO later_migration DEFAULT VALUES"))


async def test_the_retention_role_may_only_blank_content(database_url: str) -> None:
    await _audit_row()
    retention = DatabaseRole.RETENTION
    for statement in (
        "UPDATE audit_events SET actor = 'mallory'",
        "UPDATE audit_events SET row_hash = ''",
        "DELETE FROM audit_events",
        "UPDATE llm_calls SET cost_usd = 0",
        "DELETE FROM messages",
        "UPDATE messages SET tokens = 0",
        "DELETE FROM audit_chain_heads",
    ):
        assert "permission denied" in await _refused(statement, purpose=retention), statement
    async with session_factory(purpose=retention).begin() as session:
        assert (await session.execute(text("SELECT current_user"))).scalar_one() == "keel_retention"
        await session.execute(text("UPDATE messages SET content = NULL"))
        await session.execute(text("DELETE FROM stream_events"))
        await session.execute(
            text("UPDATE audit_events SET payload = '{\"purged\": true}', purged_at = now()")
        )


async def test_a_role_that_cannot_be_taken_is_a_clear_error(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconfigure(monkeypatch, KEEL_DATABASE_ROLE="keel_no_such_role")
    with pytest.raises(DatabaseRoleError) as refused:
        await _run(("SELECT 1",), DatabaseRole.APPLICATION)
    explanation = str(refused.value)
    assert 'role "keel_no_such_role" does not exist' in explanation
    assert "alembic upgrade head" in explanation and "KEEL_DATABASE_ROLE" in explanation
    await dispose_engines()

    # A login that is not a member of keel_app may not take it.
    outsider = "keel_test_outsider"
    async with superuser(database_url) as connection:
        await connection.execute(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{outsider}') "
            f"THEN CREATE ROLE {outsider} LOGIN; END IF; END$$"
        )
    reconfigure(
        monkeypatch,
        KEEL_DATABASE_ROLE="keel_app",
        DATABASE_URL=database_url.replace("postgres@", f"{outsider}@", 1),
    )
    with pytest.raises(DatabaseRoleError, match='permission denied to set role "keel_app"'):
        await _run(("SELECT 1",), DatabaseRole.APPLICATION)
    await dispose_engines()

    # `none`: the login user's own privileges (e.g. a deployment that manages roles itself).
    reconfigure(monkeypatch, DATABASE_URL=database_url, KEEL_DATABASE_ROLE="none")
    async with session_factory()() as session:
        assert (await session.execute(text("SELECT current_user"))).scalar_one() == "postgres"


async def test_a_login_that_is_only_a_member_of_keel_app_works_as_production_would(
    database_url: str, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recommended deployment: the app logs in as a user whose only power is keel_app."""
    login = "keel_test_app_login"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') "
            f"THEN CREATE ROLE {login} LOGIN; END IF; END$$"
        )
        await admin.execute(f"GRANT keel_app TO {login}")
        app_url = database_url.replace("postgres@", f"{login}@", 1)
        reconfigure(monkeypatch, DATABASE_URL=app_url)
        await _audit_row("wf-login")
        assert (await verify("wf-login")).ok
        assert "permission denied" in await _refused("DELETE FROM audit_events")
        # Dropping the role leaves its own privileges: only keel_app's, by membership.
        assert "permission denied" in await _refused("SET ROLE NONE", "DELETE FROM audit_events")
    finally:
        await dispose_engines()
        await admin.close()
