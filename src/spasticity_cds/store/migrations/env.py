"""Alembic environment: migrations run only on a connection handed over by `spasticity_cds.store.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from spasticity_cds.store.schema import metadata


def run_migrations_on_given_connection() -> None:
    """Run pending migrations inside the caller's transaction (which already holds the migration lock)."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("store migrations run only through spasticity_cds.store.open_store")
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_on_given_connection()
