"""Alembic's environment for the results database.

``ResultsDb.upgrade`` passes its open connection in ``config.attributes["connection"]``
(no alembic.ini at run time); without one (a developer running ``alembic`` by hand with
``-x url=…`` or ``sqlalchemy.url``), it connects to that URL or to ``database_url()``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from orchestrator.history.models import Base


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: later migrations rewrite tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    from orchestrator.history.db import database_url  # env.py is loaded by db: import late

    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or context.config.get_main_option("sqlalchemy.url")
        or database_url()
    )


def run() -> None:
    """Migrate on the caller's connection, or on one to the configured URL."""
    if context.is_offline_mode():
        context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(_url())
    try:
        with engine.begin() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


run()
