"""JWT ids written to a SQLite store at once or not at all, so that a hook call never waits on the event loop."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import PoolProxiedConnection

from spasticity_cds.errors import StoreError
from spasticity_cds.store import schema
from spasticity_cds.store.connection import safe_url, store_errors


class SqliteReplayWriter:
    """A connection of the store's own engine (WAL, full fsync), kept out of its pool with ``busy_timeout = 0``.

    The caller holds the store's in-process writer lock; a write lock held by another process answers "not now"
    (None) at once instead of SQLite's busy wait, and the caller then writes through the ordinary path in a thread.
    "At once" is about locks, not the disk: the commit still fsyncs the WAL (and may run its auto-checkpoint), on
    the caller's thread, which on a slow disk is a pause of the event loop; that is why production uses PostgreSQL.
    The statement is the store's own INSERT .. ON CONFLICT DO NOTHING, compiled once for SQLite.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        compiled = sqlite.insert(schema.jwt_replay).on_conflict_do_nothing().compile(dialect=engine.dialect)
        self._sql = compiled.string
        self._columns = tuple(compiled.positiontup or ())
        expires_at_type = schema.jwt_replay.c.expires_at.type.dialect_impl(engine.dialect)
        self._expires_at = expires_at_type.bind_processor(engine.dialect)
        self._pooled: PoolProxiedConnection | None = None
        self._closed = False
        self._connection: sqlite3.Connection | None = None

    def remember(self, issuer: str, jti: str, expires_at: datetime) -> bool | None:
        """True if the id is new (now committed), False if seen before, None if another process is writing (or the
        writer is closed)."""
        if self._closed:
            return None
        row = {"issuer": issuer, "jti": jti, "expires_at": self._bound(expires_at)}
        parameters = tuple(row[column] for column in self._columns)
        with store_errors("remember a JWT id", self._engine.url):
            connection = self._connection or self._connect()
        try:
            return self._insert(connection, parameters)
        except sqlite3.Error as error:
            # The extended code (SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED_SHAREDCACHE, ...) carries its primary one in
            # its low byte: every busy or locked kind means "not now".
            if error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise StoreError(f"could not remember a JWT id: {error}", where=safe_url(self._engine.url)) from error

    def _insert(self, connection: sqlite3.Connection, parameters: tuple[Any, ...]) -> bool:
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(self._sql, parameters)
            new = cursor.rowcount == 1
            cursor.execute("COMMIT")
        except BaseException:
            # Whatever stopped it (a database error, a value the driver cannot bind), the write lock is released:
            # an open transaction here would hold every other writer of the file.
            if connection.in_transaction:
                connection.rollback()
            raise
        finally:
            cursor.close()
        return new

    def close(self) -> None:
        """Close the connection; the writer then answers "not now" to every write (the store is closing)."""
        self._closed = True
        if self._pooled is not None:
            self._pooled.close()
        self._pooled = self._connection = None

    def _bound(self, expires_at: datetime) -> Any:
        return self._expires_at(expires_at) if self._expires_at is not None else expires_at

    def _connect(self) -> sqlite3.Connection:
        pooled = self._engine.raw_connection()
        pooled.detach()  # its busy timeout differs from the pool's: it must never serve another caller
        connection = pooled.dbapi_connection
        if not isinstance(connection, sqlite3.Connection):
            pooled.close()
            raise StoreError("the at-once replay writer needs a SQLite store", where=safe_url(self._engine.url))
        connection.execute("PRAGMA busy_timeout = 0")
        self._pooled, self._connection = pooled, connection
        return connection
