"""OpenAI Files and Batches API: uploaded batch files and what a batch created through the API adds

``openai_files``: a tenant's uploaded batch input files (their bytes in ``content``) and the
output and error files of its batches (rows without bytes: their lines come from
``batch_items``). ``openai_batches``: per keel batch created through ``POST /v1/batches``, its
input file, endpoint, completion window, metadata, idempotency key and output/error file ids.
New tables get ``keel_app``'s privileges from the default privileges revision 0008 set;
``keel_retention`` may blank an upload's ``content`` (``keel purge``).

Revision ID: 0010_openai_files_batches
Revises: 0009_console_sessions
Create Date: 2026-12-06 10:10:59.677338
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

RETENTION_ROLE = "keel_retention"

revision: str = "0010_openai_files_batches"
down_revision: str | None = "0009_console_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "openai_batches",
        sa.Column("batch_id", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("input_file_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("completion_window", sa.String(length=20), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("idempotency_key", sa.String(length=300), nullable=True),
        sa.Column("output_file_id", sa.String(length=64), nullable=True),
        sa.Column("error_file_id", sa.String(length=64), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelling_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_openai_batches_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_openai_batches")),
        sa.UniqueConstraint(
            "tenant", "idempotency_key", name=op.f("uq_openai_batches_tenant_idempotency_key")
        ),
    )
    op.create_index(
        op.f("ix_openai_batches_tenant_created_at"),
        "openai_batches",
        ["tenant", "created_at"],
        unique=False,
    )
    op.create_table(
        "openai_files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("purpose", sa.String(length=30), nullable=False),
        sa.Column("filename", sa.String(length=500), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("batch_id", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=300), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_openai_files_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_files")),
        sa.UniqueConstraint("batch_id", "purpose", name=op.f("uq_openai_files_batch_id_purpose")),
        sa.UniqueConstraint(
            "tenant", "idempotency_key", name=op.f("uq_openai_files_tenant_idempotency_key")
        ),
    )
    op.create_index(
        op.f("ix_openai_files_tenant_created_at"),
        "openai_files",
        ["tenant", "created_at"],
        unique=False,
    )
    # Revision 0008 made the role; keel purge blanks uploaded files' bytes, nothing else.
    op.execute(f"GRANT UPDATE (content) ON openai_files TO {RETENTION_ROLE}")


def downgrade() -> None:
    op.drop_index(op.f("ix_openai_files_tenant_created_at"), table_name="openai_files")
    op.drop_table("openai_files")
    op.drop_index(op.f("ix_openai_batches_tenant_created_at"), table_name="openai_batches")
    op.drop_table("openai_batches")
