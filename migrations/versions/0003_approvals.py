"""approval gates: reviewers, published documents, four-eyes, subject and run on approvals

Revision ID: 0003_approvals
Revises: 0002_llm_reliability
Create Date: 2026-11-26 18:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_approvals"
down_revision: str | None = "0002_llm_reliability"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviewers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=100), nullable=False),
        sa.Column("added_by", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", "role", name=op.f("pk_reviewers")),
    )
    op.create_index(op.f("ix_reviewers_role"), "reviewers", ["role"], unique=False)
    op.create_table(
        "published_documents",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("workflow_id", sa.String(length=300), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("source_name", sa.String(length=500), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("approval_gate", sa.String(length=200), nullable=True),
        sa.Column(
            "approved_by",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
        sa.Column("flagged", sa.Boolean(), server_default="false", nullable=False),
        sa.Column(
            "published_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_published_documents")),
        sa.UniqueConstraint("workflow_id", name=op.f("uq_published_documents_workflow_id")),
    )
    op.create_index(
        op.f("ix_published_documents_tenant_published_at"),
        "published_documents",
        ["tenant", "published_at"],
        unique=False,
    )
    op.add_column(
        "approvals",
        sa.Column("approvals_required", sa.Integer(), server_default="1", nullable=False),
    )
    op.add_column("approvals", sa.Column("subject", sa.String(length=300), nullable=True))
    op.add_column("approvals", sa.Column("run_id", sa.String(length=100), nullable=True))


def downgrade() -> None:
    op.drop_column("approvals", "run_id")
    op.drop_column("approvals", "subject")
    op.drop_column("approvals", "approvals_required")
    op.drop_index(
        op.f("ix_published_documents_tenant_published_at"), table_name="published_documents"
    )
    op.drop_table("published_documents")
    op.drop_index(op.f("ix_reviewers_role"), table_name="reviewers")
    op.drop_table("reviewers")
