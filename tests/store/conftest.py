"""Fixtures for the store tests: every store test runs on SQLite, and on PostgreSQL when a server is given."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from spasticity_cds.store import SqlFeedbackStore, open_store

from .helpers import FROZEN_NOW, POSTGRES_URL_ENV, FrozenClock


def _postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set (start a server with scripts/start-postgres)")
    return url


def _fresh_postgres_schema(base_url: str) -> Iterator[str]:
    """Yield a URL whose search_path is a new, empty schema; drop the schema afterwards."""
    schema_name = f"store_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema_name}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema_name}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema_name}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to an empty database: a new SQLite file, or a new schema on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'feedback.sqlite3'}"
    else:
        yield from _fresh_postgres_schema(_postgres_base_url())


@pytest.fixture
def clock() -> FrozenClock:
    """The store's clock, frozen at FROZEN_NOW."""
    return FrozenClock(FROZEN_NOW)


@pytest.fixture
def store(store_url: str, clock: FrozenClock) -> Iterator[SqlFeedbackStore]:
    """An opened (migrated) store on an empty database, closed after the test."""
    with open_store(store_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def postgres_store_url() -> Iterator[str]:
    """A URL to an empty schema on the test PostgreSQL server, for PostgreSQL-only behaviour."""
    yield from _fresh_postgres_schema(_postgres_base_url())
