"""JWT ids remembered at once on SQLite (`remember_jti_at_once`), and "not now" whenever that would mean waiting."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

import pytest

from spasticity_cds.errors import StoreError
from spasticity_cds.store import SqlFeedbackStore, open_store

from .helpers import FROZEN_NOW, FrozenClock

ISSUER = "https://ehr.example"
EXPIRES = FROZEN_NOW + timedelta(minutes=5)


@pytest.fixture
def sqlite_store(tmp_path: object, clock: FrozenClock) -> SqlFeedbackStore:
    store = open_store(f"sqlite:///{tmp_path}/feedback.sqlite3", clock=clock)
    store.remember_jti(ISSUER, "opening", EXPIRES)  # the first write purges; the next purge is a minute away
    return store


def test_a_jwt_id_is_accepted_once_whichever_path_remembers_it(sqlite_store: SqlFeedbackStore) -> None:
    with sqlite_store as store:
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is True
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is False
        assert store.remember_jti(ISSUER, "jti-1", EXPIRES) is False
        assert store.remember_jti(ISSUER, "jti-2", EXPIRES) is True
        assert store.remember_jti_at_once(ISSUER, "jti-2", EXPIRES) is False
        assert store.remember_jti_at_once("https://other.example", "jti-1", EXPIRES) is True
        assert store.counts().replay_entries == 4


def test_it_is_committed_as_the_ordinary_path_stores_it(sqlite_store: SqlFeedbackStore, tmp_path: object) -> None:
    with sqlite_store as store:
        assert store.remember_jti_at_once(ISSUER, "at-once", EXPIRES) is True
        assert store.remember_jti(ISSUER, "ordinary", EXPIRES) is True
    with sqlite3.connect(f"{tmp_path}/feedback.sqlite3") as other:
        stored = dict(other.execute("SELECT jti, expires_at FROM jwt_replay WHERE jti <> 'opening'").fetchall())
    assert stored["at-once"] == stored["ordinary"] == "2026-03-14 14:31:53.000000"


def test_not_now_while_another_thread_of_the_process_writes(sqlite_store: SqlFeedbackStore) -> None:
    with sqlite_store as store:
        with store._one_writer:
            assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is None
        assert store.remember_jti(ISSUER, "jti-1", EXPIRES) is True  # nothing was written


def test_not_now_at_once_while_another_process_holds_the_write_lock(
    sqlite_store: SqlFeedbackStore, tmp_path: object
) -> None:
    other = sqlite3.connect(f"{tmp_path}/feedback.sqlite3", isolation_level=None)
    with sqlite_store as store:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is None
        assert time.monotonic() - started < 1.0  # not SQLite's busy wait (15 s for the store's other writes)
        other.execute("ROLLBACK")
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is True
    other.close()


def test_not_now_when_expired_ids_are_due_to_be_purged(sqlite_store: SqlFeedbackStore, clock: FrozenClock) -> None:
    with sqlite_store as store:
        clock.advance(timedelta(minutes=2))
        assert store.remember_jti_at_once(ISSUER, "jti-1", clock.now + timedelta(minutes=5)) is None
        assert store.remember_jti(ISSUER, "jti-1", clock.now + timedelta(minutes=5)) is True
        assert store.remember_jti_at_once(ISSUER, "jti-2", clock.now + timedelta(minutes=5)) is True


def test_a_failing_database_is_a_store_error(sqlite_store: SqlFeedbackStore, tmp_path: object) -> None:
    with sqlite_store as store:
        with sqlite3.connect(f"{tmp_path}/feedback.sqlite3") as other:
            other.execute("DROP TABLE jwt_replay")
        with pytest.raises(StoreError, match="could not remember a JWT id"):
            store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES)
        with store._one_writer:  # the lock was released
            pass


@pytest.mark.postgres
def test_never_on_postgresql_a_server_round_trip(postgres_store_url: str) -> None:
    with open_store(postgres_store_url) as store:
        store.remember_jti(ISSUER, "opening", EXPIRES)
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is None
        assert store.remember_jti(ISSUER, "jti-1", EXPIRES) is True
