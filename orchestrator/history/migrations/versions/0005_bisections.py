"""Bisections (``swaplab bisect``) and the campaigns they ran as their steps.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the ``bisections`` table and ``campaigns.bisection`` (no campaign stored before was a step)."""
    op.create_table(
        "bisections",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("on", sa.String(), nullable=False),
        sa.Column("figure", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("culprit", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bisections"),
    )
    op.create_index("ix_bisections_name", "bisections", ["name"])
    op.create_index("ix_bisections_finished_at", "bisections", ["finished_at"])
    op.add_column("campaigns", sa.Column("bisection", sa.String(), nullable=True))
    op.create_index("ix_campaigns_bisection", "campaigns", ["bisection"])


def downgrade() -> None:
    """Drop them (in place, not batch mode: see 0003)."""
    op.drop_index("ix_campaigns_bisection", table_name="campaigns")
    op.drop_column("campaigns", "bisection")
    op.drop_index("ix_bisections_finished_at", table_name="bisections")
    op.drop_index("ix_bisections_name", table_name="bisections")
    op.drop_table("bisections")
