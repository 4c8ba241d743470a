"""Change points in the results database: what the history dashboard marks on its plots.

``orchestrator.changepoints`` finds them over a campaign's nights; this module keeps the
latest finding per campaign in the ``change_points`` table (migration 0002). A detection
runs over the whole series each time, so its result *replaces* the campaign's rows: a
change point that more nights showed to be elsewhere (or none at all) does not linger.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from orchestrator.history.models import ChangePointRow

if TYPE_CHECKING:
    from orchestrator.changepoints import ChangePoint
    from orchestrator.history.db import ResultsDb

__all__ = ["store_change_points", "stored_change_points"]

# pg_advisory_xact_lock class key ("SWCP") for replacing one campaign's change points.
_REPLACE_LOCK = 0x53574350


def store_change_points(
    db: ResultsDb, campaign: str, points: Iterable[ChangePoint], detected_at: float | None = None
) -> int:
    """Replace the change points stored for ``campaign`` by ``points``; how many were stored.

    Only points beyond their figure's tolerance are stored (the others are not worth a
    mark on a dashboard). Raises DatabaseUnavailable when the database cannot be reached.
    """
    now = time.time() if detected_at is None else detected_at
    rows = [_row(campaign, point, now) for point in points if point.beyond_tolerance]
    db._ensure_schema()  # same package: the first operation migrates, as ResultsDb's own do
    with db._reachable(), db._sessions.begin() as session:
        _serialize_replacements(session, campaign)
        session.execute(delete(ChangePointRow).where(ChangePointRow.campaign == campaign))
        session.add_all(rows)
    return len(rows)


def stored_change_points(db: ResultsDb, campaign: str) -> list[dict[str, Any]]:
    """The change points stored for ``campaign``, by night: one dict per row (column: value)."""
    query = select(ChangePointRow).where(ChangePointRow.campaign == campaign)
    db._ensure_schema()
    with db._reachable(), db._sessions() as session:
        rows = session.scalars(query.order_by(ChangePointRow.at, ChangePointRow.id)).all()
        return [{column.name: getattr(row, column.name) for column in ChangePointRow.__table__.columns} for row in rows]


def _serialize_replacements(session: Session, campaign: str) -> None:
    """Make two replacements of one campaign's rows wait for each other.

    On PostgreSQL (read committed) two transactions would each delete the rows they see
    and both insert: duplicates. A transaction-scoped advisory lock per campaign orders
    them. SQLite needs none: the DELETE takes the database's single write lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:key AS integer), hashtext(:campaign))"),
            {"key": _REPLACE_LOCK, "campaign": campaign},
        )


def _row(campaign: str, point: ChangePoint, detected_at: float) -> ChangePointRow:
    return ChangePointRow(
        campaign=campaign,
        figure=point.figure,
        workload=point.workload,
        campaign_id=point.campaign_id,
        at=point.at,
        release_before=point.release_before,
        release_after=point.release_after,
        median_before=point.median_before,
        median_after=point.median_after,
        change_pct=point.change_pct,
        worse=point.worse,
        detected_at=detected_at,
    )
