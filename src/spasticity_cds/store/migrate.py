"""Bring a store's schema to the newest Alembic revision in `store/migrations/`, one process at a time."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number works; this one spells "SPCDSMIG" so that it is recognisable in pg_locks.
POSTGRES_MIGRATION_LOCK_KEY = 0x5350_4344_534D_4947


def alembic_config() -> Config:
    """An Alembic config for the shipped migrations (no alembic.ini); also used to write new revisions."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    return config


def head_revision() -> str:
    """Return the newest revision the shipped migrations define."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the store ships no migrations")
    return head


def current_revision(connection: Connection) -> str | None:
    """Return the revision a database is at, or None for an empty database."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> None:
    """Apply pending migrations in one transaction that holds the database-wide migration lock.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or when a crashed process's
    session ends.
    SQLite: the transaction starts with BEGIN IMMEDIATE (see `connection.py`), which holds the write lock.
    Either way a second process waits, then finds the schema at head and does nothing.
    """
    config = alembic_config()
    with engine.begin() as connection:
        _take_migration_lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _take_migration_lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK_KEY})
