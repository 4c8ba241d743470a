"""The results history: every finished campaign, run, node, criterion and figure, in a database.

Redis is the live state and forgets; this package is what lasts. ``db`` opens the database
(SQLite in the cache by default, PostgreSQL in the compose stack) and stores and queries
campaign records (a campaign that finishes while it is down waits in its sink's outbox:
orchestrator.sinks); ``changes`` keeps the change points; ``migrations`` (Alembic)
creates and evolves the schema.

Nothing here is imported by the package itself, so ``import orchestrator.history.errors``
does not load SQLAlchemy.
"""
