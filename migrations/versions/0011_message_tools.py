"""messages carry tool calls, tool results and images

``tool_calls`` (an assistant message's calls: id, name, arguments), ``tool_call_id`` (a ``tool``
message: the call it answers) and ``images`` (a user message's image URLs). Content, so
``keel purge`` (role keel_retention) may blank the two JSON columns with ``content``.

Revision ID: 0011_message_tools
Revises: 0010_openai_files_batches
Create Date: 2026-12-06 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011_message_tools"
down_revision: str | None = "0010_openai_files_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETENTION_ROLE = "keel_retention"


def upgrade() -> None:
    op.add_column("messages", sa.Column("tool_calls", JSONB(), nullable=True))
    op.add_column("messages", sa.Column("tool_call_id", sa.String(200), nullable=True))
    op.add_column("messages", sa.Column("images", JSONB(), nullable=True))
    op.execute(f"GRANT UPDATE (tool_calls, images) ON messages TO {RETENTION_ROLE}")


def downgrade() -> None:
    op.drop_column("messages", "images")
    op.drop_column("messages", "tool_call_id")
    op.drop_column("messages", "tool_calls")
