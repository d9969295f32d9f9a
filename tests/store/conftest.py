"""Fixtures for the store tests: every store test runs on SQLite, and on PostgreSQL when a server is given."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spasticity_cds.store import SqlFeedbackStore, open_store
from tests.postgres import fresh_schema

from .helpers import FROZEN_NOW, FrozenClock


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to an empty database: a new SQLite file, or a new schema on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'feedback.sqlite3'}"
    else:
        with fresh_schema("store_test") as url:
            yield url


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
    with fresh_schema("store_test") as url:
        yield url
