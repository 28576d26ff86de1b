"""sessions, token streams and async jobs

Sessions remember their system prompt, model chain and summary size; assistant messages record
who answered and what the call was billed; `stream_events` carries token streams (resumable by
seq); `jobs` holds async jobs and the delivery state of their callbacks.

Revision ID: 0005_sessions_streaming
Revises: 0004_batches
Create Date: 2026-11-26 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_sessions_streaming"
down_revision: str | None = "0004_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("summary_tokens", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("sessions", sa.Column("system_prompt", sa.Text(), nullable=True))
    op.add_column(
        "sessions",
        sa.Column("models", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("messages", sa.Column("model", sa.String(length=200), nullable=True))
    op.add_column(
        "messages", sa.Column("input_tokens", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("messages", sa.Column("cost_usd", sa.Numeric(18, 8), nullable=True))

    op.create_table(
        "stream_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("stream_key", sa.String(length=300), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.String(length=200), nullable=True),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_events")),
        sa.UniqueConstraint("stream_key", "seq", name=op.f("uq_stream_events_stream_key_seq")),
    )
    op.create_index(
        op.f("ix_stream_events_created_at"), "stream_events", ["created_at"], unique=False
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("callback_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("callback_last_status", sa.Integer(), nullable=True),
        sa.Column("callback_last_error", sa.Text(), nullable=True),
        sa.Column("callback_acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_tenant"), "jobs", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_tenant"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_stream_events_created_at"), table_name="stream_events")
    op.drop_table("stream_events")
    op.drop_column("messages", "cost_usd")
    op.drop_column("messages", "input_tokens")
    op.drop_column("messages", "model")
    op.drop_column("sessions", "models")
    op.drop_column("sessions", "system_prompt")
    op.drop_column("sessions", "summary_tokens")
