"""The inbox: updates stored as received, until their reply is sent.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

PTB confirms an update to Telegram (the next getUpdates offset) long before it is answered, so a
killed bot lost every message in flight. Stored here first, a restarted bot answers them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("update_id"),
    )
    op.create_index("ix_inbox_done_at", "inbox", ["done_at"])
    op.create_index("ix_inbox_user_id", "inbox", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_inbox_user_id", table_name="inbox")
    op.drop_index("ix_inbox_done_at", table_name="inbox")
    op.drop_table("inbox")
