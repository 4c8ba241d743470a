"""Change points over a campaign's nightly history, for the history dashboard.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``change_points``, indexed by campaign and by night (the dashboard's time axis)."""
    op.create_table(
        "change_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign", sa.Text(), nullable=False),
        sa.Column("figure", sa.Text(), nullable=False),
        sa.Column("workload", sa.Text(), nullable=True),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("release_before", sa.Text(), nullable=True),
        sa.Column("release_after", sa.Text(), nullable=True),
        sa.Column("median_before", sa.Float(), nullable=False),
        sa.Column("median_after", sa.Float(), nullable=False),
        sa.Column("change_pct", sa.Float(), nullable=True),
        sa.Column("worse", sa.Boolean(), nullable=False),
        sa.Column("detected_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_change_points"),
    )
    op.create_index("ix_change_points_campaign", "change_points", ["campaign"])
    op.create_index("ix_change_points_at", "change_points", ["at"])


def downgrade() -> None:
    """Drop what 0002 created; 0001's tables are untouched."""
    op.drop_table("change_points")
