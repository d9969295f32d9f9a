"""Store URLs and engines: SQLite by default (WAL, busy timeout, full fsync), PostgreSQL through psycopg 3."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from spasticity_cds.errors import StoreError

APP_DIR_NAME = "spasticity-cds"
DEFAULT_DB_FILE_NAME = "feedback.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 15_000
SQLITE_WAL_RETRY_S = 0.01
POSTGRES_CONNECT_TIMEOUT_S = 10
#: Connections the replay pool keeps (and may open again as many beyond): a write holds one for a round trip, so a
#: few serve a worker's calls in flight without adding much to the server's connection count.
REPLAY_POOL_SIZE = 4
READ_ONLY_OPTION = "spasticity_cds_read_only"
_URL_HELP = "expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def default_data_dir() -> Path:
    """Return this platform's per-user data directory for spasticity-cds (XDG on Linux)."""
    if sys.platform == "win32":
        local_app_data = os.environ.get("LOCALAPPDATA")
        base = Path(local_app_data) if local_app_data else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg_data_home = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg_data_home) if xdg_data_home else Path.home() / ".local" / "share"
    return base / APP_DIR_NAME


def default_store_url() -> str:
    """Return the SQLite URL used when no store URL is configured."""
    return str(URL.create("sqlite+pysqlite", database=str(default_data_dir() / DEFAULT_DB_FILE_NAME)))


def safe_url(url: URL) -> str:
    """Render a URL for messages and logs, with any password masked."""
    return url.render_as_string(hide_password=True)


def resolve_store_url(url: str | None) -> URL:
    """Parse and check a store URL; None means the default SQLite file, whose folder is created if missing."""
    if url is None:
        default_data_dir().mkdir(parents=True, exist_ok=True)
        return make_url(default_store_url())
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"the feedback store URL is not a database URL; {_URL_HELP}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _checked_sqlite_url(parsed)
    if backend == "postgresql":
        return _checked_postgres_url(parsed)
    raise StoreError(f"unsupported feedback store database {backend!r}; {_URL_HELP}", where=safe_url(parsed))


def _checked_sqlite_url(url: URL) -> URL:
    if url.drivername not in ("sqlite", "sqlite+pysqlite"):
        message = f"unsupported SQLite driver {url.drivername!r}; use sqlite:///PATH"
        raise StoreError(message, where=safe_url(url))
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise StoreError("the feedback store needs a SQLite file path (sqlite:///PATH)", where=safe_url(url))
    return url.set(drivername="sqlite+pysqlite")


def _checked_postgres_url(url: URL) -> URL:
    if url.drivername not in ("postgresql", "postgresql+psycopg"):
        message = f"unsupported PostgreSQL driver {url.drivername!r}; use postgresql+psycopg://"
        raise StoreError(message, where=safe_url(url))
    return url.set(drivername="postgresql+psycopg")


def create_store_engine(url: URL) -> Engine:
    """Create an engine for a URL from `resolve_store_url`; nothing connects until first use."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, hide_parameters=True)
        _configure_sqlite(engine)
        return engine
    return _postgres_engine(url, pool_pre_ping=True)


def create_replay_engine(url: URL) -> Engine | None:
    """PostgreSQL: a second, small engine for the JWT replay cache and SMART session look-ups, or None (SQLite uses
    the store's engine).

    Each of those is a single statement (a replay INSERT, a session's SELECT or DELETE .. RETURNING), so it runs in
    autocommit (one round trip instead of BEGIN, the statement and COMMIT), and without the pre-ping's extra round
    trip: `SqlFeedbackStore` retries once on a connection that turns out to be dead instead. Every call signed with a
    JWT waits for its replay write, and every SMART plan page for its session read.
    """
    if url.get_backend_name() == "sqlite":
        return None
    return _postgres_engine(
        url, isolation_level="AUTOCOMMIT", pool_size=REPLAY_POOL_SIZE, max_overflow=REPLAY_POOL_SIZE
    )


def _postgres_engine(url: URL, **options: Any) -> Engine:
    return create_engine(
        url, hide_parameters=True, connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}, **options
    )


def _configure_sqlite(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, issue BEGIN, so that writes take the write lock up front."""

    def on_connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)


def _switch_to_wal(cursor: Any) -> None:
    """Put the file in WAL mode, retrying within the busy timeout.

    Switching a new file needs its exclusive lock, and when other processes open the same new file at that moment
    SQLite can answer "database is locked" at once instead of waiting for busy_timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(SQLITE_WAL_RETRY_S)


@contextmanager
def store_errors(action: str, url: URL) -> Iterator[None]:
    """Turn database failures into `StoreError`, naming the action and the URL but never the password."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"could not {action}: {_describe(exc, url)}", where=safe_url(url)) from exc


def _describe(exc: SQLAlchemyError, url: URL) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    text = lines[0] if lines else type(cause).__name__
    if url.password:
        text = text.replace(str(url.password), "***")
    return text
