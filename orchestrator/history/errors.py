"""What the results history raises, without SQLAlchemy: callers (the outbox, the CLI) catch
these without loading the database layer."""

from __future__ import annotations


class HistoryError(Exception):
    """Base of the results history's own errors."""


class DatabaseUnavailable(HistoryError):
    """The results database cannot be reached (down, refused, timed out, locked).

    Transient by nature: keep the record and store it later (``outbox``).
    """


class InvalidRecord(HistoryError, ValueError):
    """A campaign record that cannot be stored as it is: retrying will not help."""
