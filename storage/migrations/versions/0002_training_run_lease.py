"""Training runs hold a lease in the database: who holds it and its last heartbeat.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

"One retraining run at a time" and the detection of dead runs used the pid of a local process,
which means nothing on another host and can be reused. Existing unfinished runs get no
heartbeat: they count from their start, so a run left over from a crash is stale, not blocking.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("lease_owner")
