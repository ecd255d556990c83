"""Replicas: a lease on each stored update, and the per-user rate limit in the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Several bot processes share one database: the replica that stores (claims) an update holds it
until ``claimed_until`` and renews that while it answers, so another replica takes it over only
once the claimant is gone. The rate limit moves from one process's memory to ``rate_limits``
so that it holds whichever replica a user's messages reach.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))
    op.create_table(
        "rate_limits",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hits", sa.Text(), nullable=False),
        sa.Column("told", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("claimed_until")
