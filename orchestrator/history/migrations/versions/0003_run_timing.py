"""The clock each run's figures were measured on, so a series never mixes host and guest time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``runs.timing``; every run stored before it ran on host time (a skipped one on none)."""
    op.add_column("runs", sa.Column("timing", sa.String(), nullable=True))
    op.execute("UPDATE runs SET timing = 'host' WHERE verdict IS NULL OR verdict <> 'skipped'")


def downgrade() -> None:
    """Drop ``runs.timing``.

    Plain ALTER TABLE (SQLite >= 3.35 drops a column in place). Not batch mode: rebuilding
    ``runs`` on SQLite drops the old table, and with foreign keys on that deletes every node.
    """
    op.drop_column("runs", "timing")
