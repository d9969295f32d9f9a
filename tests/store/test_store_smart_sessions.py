"""SMART launch sessions in the store, on SQLite and (when configured) PostgreSQL: single use, expiry, the cap."""

from __future__ import annotations

import secrets
import threading
from datetime import datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import select, text

from spasticity_cds.errors import StoreError
from spasticity_cds.store import (
    SealedSmartSession,
    SmartSessionStage,
    SqlFeedbackStore,
    hash_session_id,
    open_store,
    schema,
    sql_store,
)
from spasticity_cds.store.connection import create_store_engine, resolve_store_url
from spasticity_cds.store.migrate import alembic_config

from .helpers import FROZEN_NOW, FrozenClock

PENDING, ACTIVE = SmartSessionStage.PENDING, SmartSessionStage.ACTIVE
CAP = 10_000


def sealed_session(
    stage: SmartSessionStage = PENDING,
    created_at: datetime = FROZEN_NOW,
    lifetime: timedelta = timedelta(hours=1),
    key: str | None = None,
) -> SealedSmartSession:
    return SealedSmartSession(
        key_hash=hash_session_id(key or secrets.token_urlsafe(32)),
        stage=stage,
        sealed=secrets.token_bytes(48),
        created_at=created_at,
        expires_at=created_at + lifetime,
    )


def test_a_session_id_is_stored_only_as_its_hash() -> None:
    assert hash_session_id("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ValueError, match="hash_session_id"):
        SealedSmartSession(
            key_hash=secrets.token_urlsafe(32),  # a raw id
            stage=PENDING,
            sealed=b"x",
            created_at=FROZEN_NOW,
            expires_at=FROZEN_NOW,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        SealedSmartSession(
            key_hash=hash_session_id("a"),
            stage=PENDING,
            sealed=b"x",
            created_at=FROZEN_NOW.replace(tzinfo=None),
            expires_at=FROZEN_NOW,
        )
    with pytest.raises(ValueError, match="sealed"):
        SealedSmartSession(
            key_hash=hash_session_id("a"), stage=PENDING, sealed=b"", created_at=FROZEN_NOW, expires_at=FROZEN_NOW
        )
    assert sealed_session(stage="active").stage is ACTIVE  # type: ignore[arg-type]


def test_a_pending_launch_is_taken_once_and_round_trips(store: SqlFeedbackStore) -> None:
    launch = sealed_session()
    store.add_smart_session(launch, max_pending=CAP)

    assert store.find_active_smart_session(launch.key_hash) is None  # a pending launch opens no plan
    assert store.take_pending_smart_session(launch.key_hash) == launch
    assert store.take_pending_smart_session(launch.key_hash) is None
    assert store.counts().smart_sessions == 0


def test_an_active_session_is_read_on_every_page_and_cannot_be_taken(store: SqlFeedbackStore) -> None:
    active = sealed_session(ACTIVE)
    store.add_smart_session(active, max_pending=CAP)

    assert store.find_active_smart_session(active.key_hash) == active
    assert store.find_active_smart_session(active.key_hash) == active
    assert store.take_pending_smart_session(active.key_hash) is None  # a plan's id used as an OAuth state
    assert store.find_active_smart_session(active.key_hash) == active
    assert store.find_active_smart_session(hash_session_id("unknown")) is None


def test_a_key_is_never_reused(store: SqlFeedbackStore) -> None:
    first = sealed_session(ACTIVE, key="same")
    store.add_smart_session(first, max_pending=CAP)
    with pytest.raises(StoreError, match="keep a SMART session"):
        store.add_smart_session(sealed_session(ACTIVE, key="same"), max_pending=CAP)
    assert store.find_active_smart_session(first.key_hash) == first  # the first is kept, never overwritten


def test_expired_sessions_are_neither_found_nor_taken_and_are_purged(
    store: SqlFeedbackStore, clock: FrozenClock
) -> None:
    launch, active = sealed_session(), sealed_session(ACTIVE, lifetime=timedelta(minutes=5))
    store.add_smart_session(launch, max_pending=CAP)
    store.add_smart_session(active, max_pending=CAP)
    clock.advance(timedelta(minutes=5))
    assert store.find_active_smart_session(active.key_hash) is None  # it ends at expires_at exactly
    clock.advance(timedelta(minutes=55))
    assert store.take_pending_smart_session(launch.key_hash) is None  # a pending launch too, after the hour
    short = sealed_session(ACTIVE, created_at=clock.now, lifetime=timedelta(seconds=10))
    store.add_smart_session(short, max_pending=CAP)  # a purge was due: the ended session went
    assert store.counts().smart_sessions == 1
    clock.advance(timedelta(seconds=30))
    store.add_smart_session(sealed_session(ACTIVE, created_at=clock.now), max_pending=CAP)
    assert store.counts().smart_sessions == 2  # no purge yet: at most one a minute per process
    clock.advance(sql_store.SESSION_PURGE_INTERVAL)
    store.add_smart_session(sealed_session(ACTIVE, created_at=clock.now), max_pending=CAP)
    assert store.counts().smart_sessions == 2  # the short one went, the two live ones stay


def test_a_flood_of_launches_removes_the_oldest_pending_ones_never_a_logged_in_session(
    store: SqlFeedbackStore,
) -> None:
    in_use = sealed_session(ACTIVE, created_at=FROZEN_NOW - timedelta(minutes=30))
    store.add_smart_session(in_use, max_pending=3)
    launches = [sealed_session(created_at=FROZEN_NOW + timedelta(seconds=n)) for n in range(6)]
    for launch in launches:
        store.add_smart_session(launch, max_pending=3)

    assert store.counts().smart_sessions == 4
    assert store.find_active_smart_session(in_use.key_hash) == in_use
    assert [store.take_pending_smart_session(launch.key_hash) for launch in launches] == [None] * 3 + launches[3:]
    with pytest.raises(ValueError, match="max_pending"):
        store.add_smart_session(sealed_session(), max_pending=0)


def test_a_logged_in_session_does_not_count_against_the_pending_cap(store: SqlFeedbackStore) -> None:
    launch = sealed_session()
    store.add_smart_session(launch, max_pending=1)
    for n in range(3):
        store.add_smart_session(sealed_session(ACTIVE, created_at=FROZEN_NOW + timedelta(seconds=n)), max_pending=1)
    assert store.take_pending_smart_session(launch.key_hash) == launch


def _race(takers: list[SqlFeedbackStore], key_hash: str, threads_per_store: int) -> list[SealedSmartSession | None]:
    results: list[SealedSmartSession | None] = []
    lock = threading.Lock()
    start = threading.Barrier(len(takers) * threads_per_store)

    def take(store: SqlFeedbackStore) -> None:
        start.wait()
        taken = store.take_pending_smart_session(key_hash)
        with lock:
            results.append(taken)

    threads = [threading.Thread(target=take, args=(s,)) for s in takers for _ in range(threads_per_store)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_callbacks_with_one_state_take_the_launch_once(store: SqlFeedbackStore) -> None:
    for _ in range(5):
        launch = sealed_session()
        store.add_smart_session(launch, max_pending=CAP)
        results = _race([store], launch.key_hash, 8)
        assert sorted(results, key=lambda r: r is not None) == [None] * 7 + [launch]


def test_two_processes_racing_for_one_state_take_it_once(store_url: str, clock: FrozenClock) -> None:
    """Two opened stores (as two workers have: their own engines, pools and, on SQLite, their own writer locks)."""
    with open_store(store_url, clock=clock) as first, open_store(store_url, clock=clock) as second:
        for _ in range(5):
            launch = sealed_session()
            first.add_smart_session(launch, max_pending=CAP)
            results = _race([first, second], launch.key_hash, 4)
            assert sorted(results, key=lambda r: r is not None) == [None] * 7 + [launch]


def test_the_store_holds_only_what_it_was_given(store: SqlFeedbackStore) -> None:
    session_id = secrets.token_urlsafe(32)
    active = sealed_session(ACTIVE, key=session_id)
    store.add_smart_session(active, max_pending=CAP)
    with store.engine.connect() as connection:
        [row] = connection.execute(select(schema.smart_sessions)).mappings().all()
    assert row["key_hash"] == hash_session_id(session_id) and session_id not in str(dict(row))
    assert bytes(row["sealed"]) == active.sealed


def test_migration_0004_adds_the_session_table_and_keeps_the_rest(store_url: str, clock: FrozenClock) -> None:
    engine = create_store_engine(resolve_store_url(store_url))
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(text("INSERT INTO jwt_replay VALUES ('iss', 'jti', '2030-01-01 00:00:00')"))
    engine.dispose()
    with open_store(store_url, clock=clock) as upgraded:
        assert upgraded.counts().replay_entries == 1 and upgraded.counts().smart_sessions == 0
        launch = sealed_session()
        upgraded.add_smart_session(launch, max_pending=CAP)
        assert upgraded.take_pending_smart_session(launch.key_hash) == launch
    engine = create_store_engine(resolve_store_url(store_url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
        assert connection.execute(text("SELECT count(*) FROM jwt_replay")).scalar_one() == 1
    engine.dispose()


@pytest.mark.postgres
def test_a_session_read_on_a_connection_the_server_closed_is_retried_on_a_new_one(
    postgres_store_url: str, clock: FrozenClock
) -> None:
    with open_store(postgres_store_url, clock=clock) as store:
        active, launch = sealed_session(ACTIVE), sealed_session()
        store.add_smart_session(active, max_pending=CAP)
        store.add_smart_session(launch, max_pending=CAP)
        assert store.find_active_smart_session(active.key_hash) == active
        with store.engine.begin() as connection:
            closed = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND state = 'idle' AND query ILIKE '%smart_sessions%'"
                )
            ).scalar_one()
        assert closed == 1
        assert store.find_active_smart_session(active.key_hash) == active
        assert store.take_pending_smart_session(launch.key_hash) == launch
