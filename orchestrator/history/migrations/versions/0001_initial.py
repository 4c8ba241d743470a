"""The results history from an empty database: campaigns, runs, nodes, criteria, figures.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the five tables, their indexes and their cascading foreign keys."""
    _campaigns()
    _runs()
    _nodes()
    _criteria()
    _figures()


def downgrade() -> None:
    """Drop everything 0001 created, children first."""
    for table in ("figures", "criteria", "nodes", "runs", "campaigns"):
        op.drop_table(table)


def _campaigns() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("file", sa.Text(), nullable=True),
        sa.Column("lab", sa.String(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("stored_at", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
    )
    op.create_index("ix_campaigns_name", "campaigns", ["name"])
    op.create_index("ix_campaigns_finished_at", "campaigns", ["finished_at"])


def _runs() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("kernel", sa.String(), nullable=False),
        sa.Column("release", sa.String(), nullable=True),
        sa.Column("kernel_version", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("artifact", sa.String(), nullable=True),
        sa.Column("patches", sa.JSON(), nullable=False),
        sa.Column("workload", sa.String(), nullable=True),
        sa.Column("workload_mib", sa.Integer(), nullable=True),
        sa.Column("workload_passes", sa.Integer(), nullable=True),
        sa.Column("repeat", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("redone", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("nfs_version", sa.String(), nullable=True),
        sa.Column("nfs_options", sa.Text(), nullable=True),
        sa.Column("nfs_backend", sa.String(), nullable=True),
        sa.Column("sysctls", sa.JSON(), nullable=False),
        sa.Column("node_ram_mib", sa.Integer(), nullable=True),
        sa.Column("swap_mib", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name="fk_runs_campaign_id_campaigns", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("campaign_id", "run_id", name="uq_runs_campaign_id_run_id"),
    )
    for column in ("campaign_id", "kernel", "release", "artifact"):
        op.create_index(f"ix_runs_{column}", "runs", [column])


def _nodes() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_nodes_run_id_runs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.UniqueConstraint("run_id", "node", name="uq_nodes_run_id_node"),
    )
    op.create_index("ix_nodes_run_id", "nodes", ["run_id"])


def _criteria() -> None:
    op.create_table(
        "criteria",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("op", sa.String(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("severity", sa.String(), nullable=True),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("query", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_criteria_node_id_nodes", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_criteria"),
    )
    op.create_index("ix_criteria_node_id", "criteria", ["node_id"])
    op.create_index("ix_criteria_name", "criteria", ["name"])


def _figures() -> None:
    op.create_table(
        "figures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(), nullable=True),
        sa.Column("better", sa.String(), nullable=True),
        sa.Column("prometheus", sa.Float(), nullable=True),
        sa.Column("agrees", sa.Boolean(), nullable=True),
        sa.Column("run_passed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_figures_node_id_nodes", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_figures"),
        sa.UniqueConstraint("node_id", "name", name="uq_figures_node_id_name"),
    )
    op.create_index("ix_figures_node_id", "figures", ["node_id"])
    op.create_index("ix_figures_name", "figures", ["name"])
