"""tamper-evident audit: hash-chained audit rows, chain heads, and least-privilege roles

Each workflow's audit rows get a dense ``seq``, ``prev_hash``, ``payload_sha256`` and
``row_hash`` (``infra/audit_chain.py``); existing rows are chained in id order, so an upgraded
database verifies. ``audit_chain_heads`` records each chain's last row.

Two cluster-wide NOLOGIN roles (created if missing, kept on downgrade because other databases
of the cluster may use them):

- ``keel_app``: what the application needs on every table, but only SELECT and INSERT on
  ``audit_events`` (no UPDATE, DELETE, TRUNCATE), and no DELETE on ``audit_chain_heads``. Default
  privileges give it the same on tables later migrations create (as the user running this one).
- ``keel_retention``: ``keel purge``: reads everything, may blank the content columns listed in
  RETENTION_UPDATES (audit rows: only ``payload`` and ``purged_at``), delete stream events and
  cached answers, and append its own audit row.

Revision ID: 0008_tamper_evident_audit
Revises: 0007_api_tokens
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from infra.audit_chain import GENESIS_HASH, ChainedFields, payload_digest

revision: str = "0008_tamper_evident_audit"
down_revision: str | None = "0007_api_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "keel_app"
RETENTION_ROLE = "keel_retention"
# The content `keel purge` blanks, table by table (column-level UPDATE grants).
RETENTION_UPDATES = {
    "audit_events": ("payload", "purged_at"),
    "messages": ("content",),
    "sessions": ("summary", "system_prompt"),
    "batch_items": ("request", "response"),
    "jobs": ("result",),
    "approvals": ("draft", "final"),
    "published_documents": ("content",),
}
RETENTION_DELETES = ("stream_events", "llm_response_cache")
_BACKFILL_PAGE = 5000


def _backfill_chains() -> None:
    """Chain the rows written before this revision, per workflow in id order (keyset pages)."""
    bind = op.get_bind()
    page = sa.text(
        """
        SELECT id, workflow_id, event_key, run_id, tenant, event_type, actor, occurred_at,
               payload::text AS payload_text
        FROM audit_events
        WHERE (workflow_id, id) > (:workflow_id, :id)
        ORDER BY workflow_id, id
        LIMIT :limit
        """
    )
    update = sa.text(
        "UPDATE audit_events SET seq = :seq, prev_hash = :prev_hash, "
        "payload_sha256 = :payload_sha256, row_hash = :row_hash WHERE id = :id"
    )
    after: tuple[str, int] = ("", 0)
    workflow_id, seq, prev_hash = "", 0, GENESIS_HASH
    while True:
        rows = bind.execute(
            page, {"workflow_id": after[0], "id": after[1], "limit": _BACKFILL_PAGE}
        ).all()
        if not rows:
            break
        updates = []
        for row in rows:
            if row.workflow_id != workflow_id:
                workflow_id, seq, prev_hash = row.workflow_id, 0, GENESIS_HASH
            seq += 1
            fields = ChainedFields(
                workflow_id=row.workflow_id,
                seq=seq,
                event_key=row.event_key,
                run_id=row.run_id,
                tenant=row.tenant,
                event_type=row.event_type,
                actor=row.actor,
                occurred_at=row.occurred_at,
                payload_sha256=payload_digest(row.payload_text),
                prev_hash=prev_hash,
            )
            prev_hash = fields.row_hash()
            updates.append(
                {
                    "id": row.id,
                    "seq": seq,
                    "prev_hash": fields.prev_hash,
                    "payload_sha256": fields.payload_sha256,
                    "row_hash": prev_hash,
                }
            )
        bind.execute(update, updates)
        after = (rows[-1].workflow_id, rows[-1].id)
    bind.execute(
        sa.text(
            """
            INSERT INTO audit_chain_heads (workflow_id, last_seq, last_hash, updated_at)
            SELECT DISTINCT ON (workflow_id) workflow_id, seq, row_hash, occurred_at
            FROM audit_events ORDER BY workflow_id, seq DESC
            """
        )
    )


def _create_role(role: str) -> None:
    needs_role = f"keel needs the database role {role}, and % may not create roles"
    needs_role_hint = (
        f"as a superuser run: CREATE ROLE {role} NOLOGIN; GRANT {role} TO <the user keel "
        "logs in as>; then migrate again (deploy/postgres/init does this for docker compose)"
    )
    not_member = (
        f"% is not a member of {role} and may not grant it: the application must log in as a "
        f"member of {role}"
    )
    # Roles are cluster-wide: another database of this cluster (the tests migrate many at once)
    # may have created it, even while this statement runs.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                BEGIN
                    CREATE ROLE {role} NOLOGIN;
                EXCEPTION
                    WHEN duplicate_object OR unique_violation THEN NULL;
                    WHEN insufficient_privilege THEN
                        RAISE EXCEPTION '{needs_role}', current_user
                        USING HINT = '{needs_role_hint}';
                END;
            END IF;
            -- The login user runs migrations and, in development, the application: it must be
            -- able to SET ROLE. A superuser already may; production uses a separate login.
            IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
                BEGIN
                    EXECUTE format('GRANT {role} TO %I', current_user);
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE NOTICE '{not_member}', current_user;
                END;
            END IF;
        END
        $$
        """
    )


def _grant_roles() -> None:
    _create_role(APP_ROLE)
    _create_role(RETENTION_ROLE)
    app, retention = APP_ROLE, RETENTION_ROLE
    statements = [
        f"GRANT USAGE ON SCHEMA public TO {app}, {retention}",
        # The application: everything it needs, but the audit trail is append-only.
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}",
        f"REVOKE ALL ON audit_events, audit_chain_heads, alembic_version FROM {app}",
        f"GRANT SELECT, INSERT ON audit_events TO {app}",
        f"GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO {app}",
        f"GRANT SELECT ON alembic_version TO {app}",
        # Tables and sequences later migrations create (as this same user) come with the
        # application's privileges; a migration adding an append-only table revokes them.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}",
        # Retention: reads everything, blanks content columns only, appends its own audit row.
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {retention}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {retention}",
        f"GRANT INSERT ON audit_events TO {retention}",
        f"GRANT INSERT, UPDATE ON audit_chain_heads TO {retention}",
        f"GRANT USAGE ON SEQUENCE audit_events_id_seq TO {retention}",
        *(
            f"GRANT UPDATE ({', '.join(columns)}) ON {table} TO {retention}"
            for table, columns in RETENTION_UPDATES.items()
        ),
        f"GRANT DELETE ON {', '.join(RETENTION_DELETES)} TO {retention}",
    ]
    for statement in statements:
        op.execute(statement)


def _revoke_roles() -> None:
    roles = f"{APP_ROLE}, {RETENTION_ROLE}"
    op.execute(
        f"""
        DO $$
        BEGIN
            IF (SELECT count(*) FROM pg_roles
                WHERE rolname IN ('{APP_ROLE}', '{RETENTION_ROLE}')) = 2 THEN
                ALTER DEFAULT PRIVILEGES IN SCHEMA public
                    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE};
                ALTER DEFAULT PRIVILEGES IN SCHEMA public
                    REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE};
                ALTER DEFAULT PRIVILEGES IN SCHEMA public
                    REVOKE SELECT ON TABLES FROM {RETENTION_ROLE};
                REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {roles};
                REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {roles};
                REVOKE USAGE ON SCHEMA public FROM {roles};
            END IF;
        END
        $$
        """
    )


def upgrade() -> None:
    op.create_table(
        "audit_chain_heads",
        sa.Column("workflow_id", sa.String(length=300), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_audit_chain_heads")),
    )
    op.add_column("audit_events", sa.Column("seq", sa.Integer(), nullable=True))
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("payload_sha256", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("row_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    _backfill_chains()
    for column in ("seq", "prev_hash", "payload_sha256", "row_hash"):
        op.alter_column("audit_events", column, nullable=False)
    op.create_unique_constraint(
        op.f("uq_audit_events_workflow_id_seq"), "audit_events", ["workflow_id", "seq"]
    )
    # The unique (workflow_id, seq) index serves every per-workflow read in order.
    op.drop_index(op.f("ix_audit_events_workflow_id_id"), table_name="audit_events")
    _grant_roles()


def downgrade() -> None:
    _revoke_roles()
    op.create_index(
        op.f("ix_audit_events_workflow_id_id"),
        "audit_events",
        ["workflow_id", "id"],
        unique=False,
    )
    op.drop_constraint(op.f("uq_audit_events_workflow_id_seq"), "audit_events", type_="unique")
    for column in ("purged_at", "row_hash", "payload_sha256", "prev_hash", "seq"):
        op.drop_column("audit_events", column)
    op.drop_table("audit_chain_heads")
