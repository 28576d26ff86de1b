"""cost and traffic control: budget reservations, daily spend, shared rate limiters

`llm_calls.reserved_usd` is what the budget check set aside for an attempt while it runs;
`tenant_daily_spend` is the metered spend per tenant, UTC day and shard (kept by the statement that
completes each ledger row, backfilled here from the ledger); `rate_limit_buckets` holds one
GCRA limiter per provider (or provider:model) and unit, shared by every worker.

Revision ID: 0006_cost_traffic
Revises: 0005_sessions_streaming
Create Date: 2026-11-26 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_cost_traffic"
down_revision: str | None = "0005_sessions_streaming"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("llm_calls", sa.Column("reserved_usd", sa.Numeric(18, 8), nullable=True))
    op.create_index(
        "ix_llm_calls_tenant_in_flight",
        "llm_calls",
        ["tenant"],
        unique=False,
        postgresql_where=sa.text("outcome = 'in_flight'"),
    )
    op.create_table(
        "tenant_daily_spend",
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("spent_usd", sa.Numeric(18, 8), server_default="0", nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("tenant", "day", "shard", name=op.f("pk_tenant_daily_spend")),
    )
    op.create_table(
        "rate_limit_buckets",
        sa.Column("scope", sa.String(length=250), nullable=False),
        sa.Column("unit", sa.String(length=20), nullable=False),
        sa.Column("tat", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("scope", "unit", name=op.f("pk_rate_limit_buckets")),
    )
    # Spend already in the ledger counts against budgets set from now on.
    op.execute(
        """
        INSERT INTO tenant_daily_spend (tenant, day, spent_usd, calls)
        SELECT tenant, (created_at AT TIME ZONE 'UTC')::date, SUM(cost_usd), COUNT(*)
          FROM llm_calls
         WHERE cost_usd > 0 AND outcome <> 'in_flight'
         GROUP BY 1, 2
        """
    )


def downgrade() -> None:
    op.drop_table("rate_limit_buckets")
    op.drop_table("tenant_daily_spend")
    op.drop_index(
        "ix_llm_calls_tenant_in_flight",
        table_name="llm_calls",
        postgresql_where=sa.text("outcome = 'in_flight'"),
    )
    op.drop_column("llm_calls", "reserved_usd")
