"""Training runs can be asked to stop through the database: ``cancel_requested_at``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

A run was cancelled by a signal to its process, which only the process that started it could
send. The running retrain polls this column with its heartbeat, so any process on any host
(the bot, the web console) can cancel any run.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("cancel_requested_at")
