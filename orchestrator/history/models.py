"""The results database's tables (SQLAlchemy 2 declarative), normalized for querying.

    campaigns 1─n runs 1─n nodes 1─n criteria
                                 1─n figures
    bisections 1─n campaigns (its steps, by ``campaigns.bisection``)

A campaign row also keeps its whole record (result.json) in ``record``, so a report can be
rebuilt from the database alone; the other tables hold what history and comparisons query.
Types work on SQLite and PostgreSQL alike: ``JSON`` (plain json on PostgreSQL: it keeps the
record's key order, which jsonb would not), ``Float`` (double precision), and timestamps as
epoch seconds in ``Float`` columns, as in result.json itself.

Every foreign key cascades on delete in the database, so pruning a campaign is one DELETE
(SQLite enforces it because ``db`` turns ``PRAGMA foreign_keys`` on for every connection).

The schema is created by the Alembic migrations in ``migrations/``, never by
``metadata.create_all``: a change here needs a new migration (a test compares the two).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from model.result import CAMPAIGN_ID_MAX

# Constraint names fixed by convention, so the migration and both databases agree on them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The declarative base of the results tables."""

    metadata = MetaData(naming_convention=NAMING)


class CampaignRow(Base):
    """One finished campaign (the last stored judgement of it)."""

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(CAMPAIGN_ID_MAX), primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True)
    file: Mapped[str | None] = mapped_column(Text)
    lab: Mapped[str | None] = mapped_column(String)
    started_at: Mapped[float | None] = mapped_column(Float)
    # The record's finished_at, or when it was stored if the record has none: history's
    # order and retention need a date for every campaign.
    finished_at: Mapped[float] = mapped_column(Float, index=True)
    stored_at: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # The bisection that ran it as one of its steps (not a foreign key: a step is stored
    # when it ends, its bisection only when the bisection does).
    bisection: Mapped[str | None] = mapped_column(String, index=True)
    # Loaded only when asked for (``ResultsDb.campaign``): history lists do not need it.
    record: Mapped[dict[str, Any]] = mapped_column(JSON, deferred=True)

    runs: Mapped[list[RunRow]] = relationship(
        back_populates="campaign", cascade="all, delete-orphan", passive_deletes=True, order_by="RunRow.position"
    )


class RunRow(Base):
    """One run of a campaign: a kernel × workload × repeat, as it was last attempted."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("campaign_id", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order in the record: runs, then skipped runs
    run_id: Mapped[str] = mapped_column(String)
    kernel: Mapped[str] = mapped_column(String, index=True)  # the run's label
    release: Mapped[str | None] = mapped_column(String, index=True)
    kernel_version: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    artifact: Mapped[str | None] = mapped_column(String, index=True)
    patches: Mapped[list[str]] = mapped_column(JSON)
    workload: Mapped[str | None] = mapped_column(String)
    workload_mib: Mapped[int | None] = mapped_column(Integer)
    workload_passes: Mapped[int | None] = mapped_column(Integer)
    repeat: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    redone: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{attempt, reason}] per earlier attempt
    reasons: Mapped[list[str]] = mapped_column(JSON)  # why a run was refused or skipped
    verdict: Mapped[str | None] = mapped_column(String)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    nfs_version: Mapped[str | None] = mapped_column(String)
    nfs_options: Mapped[str | None] = mapped_column(Text)
    nfs_backend: Mapped[str | None] = mapped_column(String)
    sysctls: Mapped[dict[str, str]] = mapped_column(JSON)
    node_ram_mib: Mapped[int | None] = mapped_column(Integer)
    swap_mib: Mapped[int | None] = mapped_column(Integer)
    # The nodes' clock (model.figures.timing_label): figures of different clocks never meet.
    # None for a run that never started (skipped).
    timing: Mapped[str | None] = mapped_column(String)
    # The faults the run injected (model.faults, as planned): runs with and without never meet.
    faults: Mapped[list[str] | None] = mapped_column(JSON)

    campaign: Mapped[CampaignRow] = relationship(back_populates="runs")
    nodes: Mapped[list[NodeRow]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="NodeRow.id"
    )


class NodeRow(Base):
    """One node's part of a run."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("run_id", "node"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    node: Mapped[str] = mapped_column(String)
    verdict: Mapped[str | None] = mapped_column(String)

    run: Mapped[RunRow] = relationship(back_populates="nodes")
    criteria: Mapped[list[CriterionRow]] = relationship(
        back_populates="node", cascade="all, delete-orphan", passive_deletes=True, order_by="CriterionRow.id"
    )
    figures: Mapped[list[FigureRow]] = relationship(
        back_populates="node", cascade="all, delete-orphan", passive_deletes=True, order_by="FigureRow.id"
    )


class CriterionRow(Base):
    """One criterion judged on one node: the value read, the threshold, the outcome."""

    __tablename__ = "criteria"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String, index=True)
    value: Mapped[float | None] = mapped_column(Float)
    op: Mapped[str | None] = mapped_column(String)
    threshold: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str | None] = mapped_column(String)
    severity: Mapped[str | None] = mapped_column(String)
    builtin: Mapped[bool] = mapped_column(Boolean)
    query: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)

    node: Mapped[NodeRow] = relationship(back_populates="criteria")


class FigureRow(Base):
    """One performance figure of one node run, with the Prometheus cross-check.

    ``run_passed``: only figures of runs that passed count in comparisons; the others are
    kept for inspection.
    """

    __tablename__ = "figures"
    __table_args__ = (UniqueConstraint("node_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String, index=True)
    value: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str | None] = mapped_column(String)
    better: Mapped[str | None] = mapped_column(String)
    prometheus: Mapped[float | None] = mapped_column(Float)
    agrees: Mapped[bool | None] = mapped_column(Boolean)
    run_passed: Mapped[bool] = mapped_column(Boolean)

    node: Mapped[NodeRow] = relationship(back_populates="figures")


class ChangePointRow(Base):
    """One change point of a figure over a campaign's nightly history (``orchestrator.changepoints``).

    Not tied to the campaigns table: a detection over the nights is replaced as a whole
    (``history.changes.store_change_points``) each time it runs, and a row outlives the
    pruning of the night it names. ``campaign`` is the campaign's name; ``campaign_id``
    and ``at`` (that instance's finished_at) the night where the new level starts. Only
    change points beyond the figure's tolerance are stored. ``workload`` is set when the
    campaign runs several (one series per workload and figure).
    """

    __tablename__ = "change_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign: Mapped[str] = mapped_column(Text, index=True)
    figure: Mapped[str] = mapped_column(Text)
    workload: Mapped[str | None] = mapped_column(Text)
    campaign_id: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float, index=True)
    release_before: Mapped[str | None] = mapped_column(Text)
    release_after: Mapped[str | None] = mapped_column(Text)
    median_before: Mapped[float] = mapped_column(Float)
    median_after: Mapped[float] = mapped_column(Float)
    change_pct: Mapped[float | None] = mapped_column(Float)  # None when the level before was 0
    worse: Mapped[bool] = mapped_column(Boolean)
    detected_at: Mapped[float] = mapped_column(Float)


class BisectionRow(Base):
    """One finished bisection (``swaplab bisect``): its answer and the log of its steps.

    ``record`` is what ``swaplab bisect --status --json`` shows; each step names its child
    campaign, stored in ``campaigns`` with ``bisection`` set to this id.
    """

    __tablename__ = "bisections"

    id: Mapped[str] = mapped_column(String(CAMPAIGN_ID_MAX), primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True)
    status: Mapped[str] = mapped_column(String)  # done, cancelled, failed
    on: Mapped[str] = mapped_column(String)  # figure or verdict
    figure: Mapped[str | None] = mapped_column(String)
    outcome: Mapped[str | None] = mapped_column(String)  # culprit, range, nothing, undecided-ends
    culprit: Mapped[int | None] = mapped_column(Integer)  # the first bad patch's position
    created_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float, index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, deferred=True)
