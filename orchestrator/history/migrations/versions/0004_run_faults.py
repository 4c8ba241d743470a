"""The faults each run injected, so a series of runs without faults never takes in one with.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``runs.faults`` (the faults as the campaign planned them); every run stored before had none."""
    op.add_column("runs", sa.Column("faults", sa.JSON(), nullable=True))
    op.execute("UPDATE runs SET faults = '[]'")


def downgrade() -> None:
    """Drop ``runs.faults`` (in place, not batch mode: see 0003)."""
    op.drop_column("runs", "faults")
