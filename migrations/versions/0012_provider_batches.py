"""provider batch mode: one row per provider batch (OpenAI Batch API, Anthropic Message Batches)

Written before the provider sees anything, so a retried submission finds the provider's id (or
looks it up) instead of submitting the chunk twice.

Revision ID: 0012_provider_batches
Revises: 0011_message_tools
Create Date: 2026-12-06 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_provider_batches"
down_revision: str | None = "0011_message_tools"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_batch_chunks",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column(
            "batch_id",
            sa.String(length=200),
            sa.ForeignKey(
                "batches.id",
                name=op.f("fk_provider_batch_chunks_batch_id_batches"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("line_nos", postgresql.JSONB(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("request_bytes", sa.BigInteger(), nullable=False),
        sa.Column("worst_case_usd", sa.Numeric(18, 8), nullable=True),
        sa.Column("provider_batch_id", sa.String(length=200), nullable=True),
        sa.Column("provider_file_id", sa.String(length=200), nullable=True),
        sa.Column("provider_status", sa.String(length=30), nullable=True),
        sa.Column("request_counts", postgresql.JSONB(), nullable=True),
        sa.Column("succeeded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returned", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cost_usd", sa.Numeric(18, 8), nullable=True),
        sa.Column("submit_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_batch_chunks")),
        sa.UniqueConstraint(
            "batch_id", "round", "seq", name=op.f("uq_provider_batch_chunks_batch_id_round_seq")
        ),
    )
    op.create_index(
        op.f("ix_provider_batch_chunks_provider_provider_batch_id"),
        "provider_batch_chunks",
        ["provider", "provider_batch_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_table("provider_batch_chunks")
