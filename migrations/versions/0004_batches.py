"""batches at scale: claims, item outcomes, run-scoped ledger key

Batch items remember which claim took them (so a retried claim is idempotent), how often they
ran and when they finished; batches remember why they stopped, their schedule and their times.
The ledger's unique key gains run_id: activity ids restart in every run, so after a
continue-as-new the old key silently dropped the new run's attempts.

Revision ID: 0004_batches
Revises: 0003_approvals
Create Date: 2026-11-26 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_batches"
down_revision: str | None = "0003_approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("status_reason", sa.Text(), nullable=True))
    op.add_column("batches", sa.Column("schedule_id", sa.String(length=200), nullable=True))
    op.add_column("batches", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("batches", sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))

    op.add_column("batch_items", sa.Column("claim_token", sa.String(length=200), nullable=True))
    op.add_column(
        "batch_items", sa.Column("run_count", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "batch_items", sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        op.f("ix_batch_items_claim_token"), "batch_items", ["claim_token"], unique=False
    )

    op.drop_constraint(
        op.f("uq_llm_calls_workflow_id_activity_id_attempt"), "llm_calls", type_="unique"
    )
    op.create_unique_constraint(
        op.f("uq_llm_calls_workflow_id_run_id_activity_id_attempt"),
        "llm_calls",
        ["workflow_id", "run_id", "activity_id", "attempt"],
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("uq_llm_calls_workflow_id_run_id_activity_id_attempt"), "llm_calls", type_="unique"
    )
    # Rows of later runs may share the old key; keep the first of each before restoring it.
    op.execute(
        """
        DELETE FROM llm_calls a USING llm_calls b
         WHERE a.workflow_id = b.workflow_id AND a.activity_id = b.activity_id
           AND a.attempt = b.attempt AND a.id > b.id
        """
    )
    op.create_unique_constraint(
        op.f("uq_llm_calls_workflow_id_activity_id_attempt"),
        "llm_calls",
        ["workflow_id", "activity_id", "attempt"],
    )

    op.drop_index(op.f("ix_batch_items_claim_token"), table_name="batch_items")
    op.drop_column("batch_items", "finished_at")
    op.drop_column("batch_items", "run_count")
    op.drop_column("batch_items", "claim_token")

    op.drop_column("batches", "finished_at")
    op.drop_column("batches", "started_at")
    op.drop_column("batches", "schedule_id")
    op.drop_column("batches", "status_reason")
