"""The results database: store finished campaigns, read them back, list the history, prune.

One database URL (``SWAPLAB_DB_URL``): SQLite in the cache by default (the embedded setup
needs no server), PostgreSQL in the compose stack (``postgresql+psycopg://…``).

The schema is Alembic's (``migrations/``). A ``ResultsDb`` does not touch the database when
it is built (a database that is down must not stop a worker from starting): its first
operation runs ``upgrade()`` — ``alembic upgrade head`` — once, and ``upgrade()`` may also
be called explicitly (at deployment, by a command). Upgrading is safe to repeat (a database
at head is left alone) and to run from several processes at once: on PostgreSQL an advisory
lock, on SQLite an immediate transaction serializes the migrations.

Every way the server can be unreachable (refused, down, timed out, locked, wrong password)
is raised as ``DatabaseUnavailable``, so a caller keeps the record for later (``outbox``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, CursorResult, Engine, create_engine, delete, event, make_url, or_, select, text
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import selectinload, sessionmaker, undefer
from sqlalchemy.sql.elements import ColumnElement

from model.paths import cache_dir, restrict
from orchestrator.history.errors import DatabaseUnavailable, InvalidRecord
from orchestrator.history.models import BisectionRow, CampaignRow, NodeRow, RunRow
from orchestrator.history.rows import bisection_row, campaign_row, parse, storable

__all__ = ["DatabaseUnavailable", "InvalidRecord", "ResultsDb", "database_url", "retention_days"]

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
DEFAULT_FILE = "results.db"
# A PostgreSQL server that does not answer (a dropped route) must not hang a worker.
CONNECT_TIMEOUT_S = 5
# pg_advisory_xact_lock key serializing schema upgrades across processes ("SWLB").
_MIGRATION_LOCK = 0x53574C42
# Concurrent stores of one campaign: the loser's INSERT collides and is retried.
_STORE_ATTEMPTS = 3
_DAY_S = 86400.0


def database_url() -> str:
    """``SWAPLAB_DB_URL``, default ``sqlite:///<cache>/results.db``."""
    return os.environ.get("SWAPLAB_DB_URL") or f"sqlite:///{cache_dir() / DEFAULT_FILE}"


def retention_days() -> float | None:
    """How many days finished campaigns are kept (``SWAPLAB_DB_RETENTION_DAYS``); None: forever."""
    raw = os.environ.get("SWAPLAB_DB_RETENTION_DAYS", "").strip()
    if not raw:
        return None
    try:
        days = float(raw)
    except ValueError:
        raise ValueError(f"SWAPLAB_DB_RETENTION_DAYS={raw!r}: not a number of days") from None
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"SWAPLAB_DB_RETENTION_DAYS={raw!r}: must be a positive number of days (unset: keep forever)")
    return days


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration without an alembic.ini: the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection  # env.py migrates on it
    return config


def head_revision() -> str | None:
    """The newest migration's revision."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class ResultsDb:
    """The results database at ``url`` (default: ``database_url()``).

    Retention (``retention_days()``) is read once, when the object is built: an invalid
    value fails here, before anything is stored, rather than after every store.
    """

    def __init__(self, url: str | None = None) -> None:
        try:
            self.url: URL = make_url(url or database_url())
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        self.retention = retention_days()
        self.engine: Engine = _engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @property
    def where(self) -> str:
        """The URL without its password, for messages."""
        return self.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> ResultsDb:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------
    def upgrade(self) -> None:
        """``alembic upgrade head``: create or migrate the schema; a no-op at head."""
        head = head_revision()
        # The common case, a database at head, takes no lock (and logs nothing).
        if self.revision() != head:
            with self._reachable(), self.engine.begin() as conn:
                _serialize_migrations(conn)
                command.upgrade(alembic_config(conn), "head")
        self._schema_ready = True

    def revision(self) -> str | None:
        """The database's current Alembic revision (None: never migrated)."""
        with self._reachable(), self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                self.upgrade()

    # -- writing -------------------------------------------------------------------------
    def store(self, record: Mapping[str, Any]) -> None:
        """Store one finished campaign, replacing what was stored of it before (a re-judgement).

        Raises InvalidRecord (refused: storing it again will not help) or
        DatabaseUnavailable (keep it and retry). Applies retention after storing, when set.
        """
        clean = storable(record)
        campaign = parse(clean)
        self._ensure_schema()
        for attempt in range(1, _STORE_ATTEMPTS + 1):
            try:
                with self._reachable(), self._sessions.begin() as session:
                    session.execute(delete(CampaignRow).where(CampaignRow.id == campaign.campaign_id))
                    session.add(campaign_row(campaign, clean, time.time()))
                break
            except IntegrityError:
                # Another store of the same campaign committed between our DELETE and INSERT.
                if attempt == _STORE_ATTEMPTS:
                    raise
        if self.retention is not None:
            self.prune(self.retention)

    def prune(self, older_than_days: float) -> int:
        """Delete the campaigns that finished more than ``older_than_days`` ago; how many."""
        if not math.isfinite(older_than_days) or older_than_days < 0:
            raise ValueError(f"older_than_days must be a non-negative number, not {older_than_days}")
        cutoff = time.time() - older_than_days * _DAY_S
        self._ensure_schema()
        with self._reachable(), self._sessions.begin() as session:
            # Runs, nodes, criteria and figures go with it: ON DELETE CASCADE.
            result = session.execute(delete(CampaignRow).where(CampaignRow.finished_at < cutoff))
            session.execute(delete(BisectionRow).where(BisectionRow.finished_at < cutoff))
            return int(cast(CursorResult[Any], result).rowcount)

    def store_bisection(self, shown: Mapping[str, Any]) -> None:
        """Store one finished bisection as ``swaplab bisect --status --json`` shows it,
        replacing what was stored of it before. InvalidRecord when it does not read as one."""
        row = bisection_row(shown, time.time())
        self._ensure_schema()
        with self._reachable(), self._sessions.begin() as session:
            session.execute(delete(BisectionRow).where(BisectionRow.id == row.id))
            session.add(row)

    def bisection(self, bid: str) -> dict[str, Any] | None:
        """The stored bisection ``bid`` as ``--status --json`` showed it when it ended, or None."""
        self._ensure_schema()
        with self._reachable(), self._sessions() as session:
            record = session.scalar(select(BisectionRow.record).where(BisectionRow.id == bid))
        return dict(record) if record is not None else None

    def records_with_artifact(self, artifact: str, limit: int = 20, not_of: str | None = None) -> list[dict[str, Any]]:
        """The newest stored records (result.json) with a run of the kernel built as
        ``artifact``; ``not_of``: leaving out the steps of that bisection."""
        query = (
            select(CampaignRow.record)
            .where(CampaignRow.runs.any(RunRow.artifact == artifact))
            .order_by(CampaignRow.finished_at.desc())
            .limit(limit)
        )
        if not_of is not None:
            query = query.where(or_(CampaignRow.bisection.is_(None), CampaignRow.bisection != not_of))
        self._ensure_schema()
        with self._reachable(), self._sessions() as session:
            return [dict(record) for record in session.scalars(query)]

    def bisections(self, limit: int = 50) -> list[dict[str, Any]]:
        """Past bisections, newest first: each one's answer and its steps' campaigns."""
        query = select(BisectionRow).order_by(BisectionRow.finished_at.desc()).limit(limit)
        self._ensure_schema()
        with self._reachable(), self._sessions() as session:
            return [_bisection_item(row) for row in session.scalars(query.options(undefer(BisectionRow.record)))]

    # -- reading -------------------------------------------------------------------------
    def campaign(self, cid: str) -> dict[str, Any] | None:
        """The whole stored record (result.json) of campaign ``cid``, or None."""
        self._ensure_schema()
        with self._reachable(), self._sessions() as session:
            record = session.scalar(select(CampaignRow.record).where(CampaignRow.id == cid))
        return dict(record) if record is not None else None

    def history(
        self, campaign: str | None = None, kernel: str | None = None, limit: int = 50, bisection: str | None = None
    ) -> list[dict[str, Any]]:
        """Past campaigns, newest first: verdicts and, per run, its kernel and figures.

        ``campaign``: only instances of the campaign of that name. ``kernel``: only
        campaigns that ran a kernel whose label or release contains it (case-insensitive),
        and of those only the matching runs. Each run's ``figures`` are the mean of its
        nodes' (per node in ``nodes``). ``bisection``: only the steps of that bisection.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = (
            select(CampaignRow)
            .order_by(CampaignRow.finished_at.desc(), CampaignRow.id.desc())
            .limit(limit)
            .options(selectinload(CampaignRow.runs).selectinload(RunRow.nodes).selectinload(NodeRow.figures))
        )
        if campaign is not None:
            query = query.where(CampaignRow.name == campaign)
        if kernel:
            query = query.where(CampaignRow.runs.any(_kernel_matches(kernel)))
        if bisection is not None:
            query = query.where(CampaignRow.bisection == bisection)
        self._ensure_schema()
        with self._reachable(), self._sessions() as session:
            return [_history_item(row, kernel) for row in session.scalars(query)]

    # -- errors --------------------------------------------------------------------------
    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turn the driver's ways of saying "cannot reach the server" into DatabaseUnavailable."""
        try:
            yield
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            cause = getattr(exc, "orig", None) or exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise DatabaseUnavailable(f"results database {self.where} unavailable: {first}") from exc


def _engine(url: URL) -> Engine:
    options: dict[str, Any] = {
        # A pooled connection to a server that restarted is replaced, not handed out dead.
        "pool_pre_ping": True,
        # storable() removed NaN; a NaN that still got here is a bug, not a value to hide.
        "json_serializer": functools.partial(json.dumps, allow_nan=False),
    }
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_foreign_keys)
        if url.database and url.database != ":memory:" and not url.query.get("uri"):
            event.listen(engine, "do_connect", functools.partial(_private_sqlite_file, Path(url.database)))
    return engine


def _private_sqlite_file(path: Path, *_connect_args: Any) -> None:
    """Create the database file 0600 before SQLite does (it would use the umask: 0644).

    Every record is in it, and SQLite gives its journal files the database file's mode.
    A file an older swaplab made readable by everyone is narrowed. Done at the first
    connection, not when the object is built (that touches nothing).
    """
    # A missing directory or a file that is not ours: SQLite's own error says it better.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for name in (path, *(path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
        with contextlib.suppress(OSError):
            restrict(name, 0o600)


def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    # SQLite ignores foreign keys, hence ON DELETE CASCADE, unless each connection asks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _serialize_migrations(conn: Connection) -> None:
    """Make concurrent upgrades wait for each other (the first migrates, the others see head)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    elif conn.dialect.name == "sqlite":
        # Take the write lock now: the version check and the DDL then run under it.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _kernel_matches(kernel: str) -> ColumnElement[bool]:
    return or_(RunRow.kernel.icontains(kernel, autoescape=True), RunRow.release.icontains(kernel, autoescape=True))


def _history_item(row: CampaignRow, kernel: str | None) -> dict[str, Any]:
    wanted = kernel.lower() if kernel else None
    runs = [
        run
        for run in row.runs
        if wanted is None or wanted in run.kernel.lower() or wanted in (run.release or "").lower()
    ]
    return {
        "campaign_id": row.id,
        "campaign": row.name,
        "finished_at": row.finished_at,
        "verdict": row.verdict,
        "exit_code": row.exit_code,
        **({"bisection": row.bisection} if row.bisection else {}),  # a bisection's step
        "runs": [_run_item(run) for run in runs],
    }


def _bisection_item(row: BisectionRow) -> dict[str, Any]:
    result = row.record.get("result") or {}
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "on": row.on,
        "figure": row.figure,
        "outcome": row.outcome,
        "culprit": row.culprit,
        "describe": result.get("describe") if isinstance(result, dict) else None,
        "finished_at": row.finished_at,
        "campaigns": row.record.get("campaigns", []),
    }


def _run_item(run: RunRow) -> dict[str, Any]:
    figures = [{f.name: f.value for f in node.figures} for node in run.nodes]
    nodes = [{"node": n.node, "verdict": n.verdict, "figures": f} for n, f in zip(run.nodes, figures, strict=True)]
    return {
        "run_id": run.run_id,
        "kernel": run.kernel,
        "release": run.release,
        "workload": run.workload,
        "timing": run.timing,
        "faults": list(run.faults or []),
        "repeat": run.repeat,
        "verdict": run.verdict,
        "attempt": run.attempt,
        "redone": run.redone,
        "figures": _mean_figures(figures),
        "nodes": nodes,
    }


def _mean_figures(per_node: list[dict[str, float | None]]) -> dict[str, float | None]:
    names = list(dict.fromkeys(name for figures in per_node for name in figures))
    means: dict[str, float | None] = {}
    for name in names:
        values = [v for figures in per_node if (v := figures.get(name)) is not None]
        means[name] = statistics.fmean(values) if values else None
    return means
