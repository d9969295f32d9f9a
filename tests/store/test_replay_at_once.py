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


def test_a_value_the_driver_cannot_bind_releases_the_write_lock(
    sqlite_store: SqlFeedbackStore, tmp_path: object
) -> None:
    with sqlite_store as store:
        with pytest.raises(UnicodeEncodeError):
            store.remember_jti_at_once(ISSUER, "\ud800", EXPIRES)  # a lone surrogate cannot be UTF-8
        other = sqlite3.connect(f"{tmp_path}/feedback.sqlite3", isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")  # the write lock is free again
        other.execute("ROLLBACK")
        other.close()
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is True


def test_busy_in_an_extended_form_is_not_now(monkeypatch: pytest.MonkeyPatch, sqlite_store: SqlFeedbackStore) -> None:
    busy_snapshot = sqlite3.OperationalError("database is locked")
    busy_snapshot.sqlite_errorcode = sqlite3.SQLITE_BUSY_SNAPSHOT  # type: ignore[attr-defined]
    busy_snapshot.sqlite_errorname = "SQLITE_BUSY_SNAPSHOT"  # type: ignore[attr-defined]

    def busy(*_: object) -> bool:
        raise busy_snapshot

    with sqlite_store as store:
        writer = store._replay_at_once
        assert writer is not None
        monkeypatch.setattr(writer, "_insert", busy)
        assert store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is None


def test_after_close_it_is_always_not_now(sqlite_store: SqlFeedbackStore) -> None:
    sqlite_store.close()
    assert sqlite_store.remember_jti_at_once(ISSUER, "jti-1", EXPIRES) is None
