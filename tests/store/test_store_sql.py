"""The feedback store's behaviour, run on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from spasticity_cds.errors import StoreError
from spasticity_cds.store import (
    FeedbackOutcome,
    HookFeedback,
    IssuedCard,
    PageContext,
    PageFeedback,
    RuleFeedbackStats,
    SqlFeedbackStore,
    hash_patient_ref,
    open_store,
    schema,
    sql_store,
)
from spasticity_cds.store.connection import create_store_engine, resolve_store_url
from spasticity_cds.store.migrate import alembic_config, current_revision, head_revision
from spasticity_cds.store.schema import metadata

from .helpers import FROZEN_NOW, FrozenClock


def issued_card(card_uuid: str, rule_id: str = "baclofen-start", rule_version: int = 1) -> IssuedCard:
    return IssuedCard(
        card_uuid=card_uuid,
        service_id="spasticity-patient-view",
        hook_instance=f"hook-{card_uuid}",
        rule_id=rule_id,
        rule_version=rule_version,
        kb_version="1.4.0",
        patient_ref_hash=hash_patient_ref("Patient/example"),
        issued_at=FROZEN_NOW,
    )


def hook_feedback(
    card_uuid: str,
    outcome: FeedbackOutcome = FeedbackOutcome.OVERRIDDEN,
    at: datetime = FROZEN_NOW,
    **fields: object,
) -> HookFeedback:
    return HookFeedback(
        service_id="spasticity-patient-view",
        card_uuid=card_uuid,
        outcome=outcome,
        outcome_timestamp=at,
        received_at=at + timedelta(seconds=2),
        **fields,  # type: ignore[arg-type]
    )


def page_feedback(useful: bool | None, rule_id: str | None = "baclofen-start", **fields: object) -> PageFeedback:
    return PageFeedback(
        id=uuid.uuid4(),
        context=PageContext.FINDING,
        created_at=FROZEN_NOW,
        useful=useful,
        rule_id=rule_id,
        rule_version=1 if rule_id else None,
        **fields,  # type: ignore[arg-type]
    )


def test_open_store_migrates_an_empty_database_to_head(store_url: str) -> None:
    with open_store(store_url) as store, store.engine.connect() as connection:
        assert current_revision(connection) == head_revision()


def test_reopening_a_migrated_store_keeps_its_rows(store_url: str) -> None:
    with open_store(store_url) as store:
        store.record_issued_cards([issued_card("card-1")])
    with open_store(store_url) as store:
        assert store.counts().issued_cards == 1


def test_a_schema_from_a_newer_version_is_a_store_error(store_url: str) -> None:
    with open_store(store_url) as store, store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(StoreError, match="newer version"):
        open_store(store_url)


def test_migrations_build_exactly_the_declared_schema(store: SqlFeedbackStore) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_issued_cards_are_idempotent_on_card_uuid(store: SqlFeedbackStore) -> None:
    assert store.record_issued_cards([issued_card("card-1"), issued_card("card-2")]) == 2
    assert store.record_issued_cards([issued_card("card-1"), issued_card("card-3")]) == 1
    assert store.counts().issued_cards == 3


def test_a_large_batch_in_one_call_counts_only_the_new_rows(store: SqlFeedbackStore) -> None:
    # More rows than SQLite accepts bound parameters in one statement (32 766 / 8 columns).
    assert store.record_issued_cards([issued_card(f"card-{n}") for n in range(0, 6000, 2)]) == 3000
    assert store.record_issued_cards([issued_card(f"card-{n}") for n in range(6000)]) == 3000
    assert store.record_issued_cards([]) == 0
    assert store.counts().issued_cards == 6000


def test_issued_card_round_trips(store: SqlFeedbackStore) -> None:
    card = issued_card("card-1")
    store.record_issued_cards([card])

    assert store.find_issued_card("card-1") == card
    assert store.find_issued_card("card-unknown") is None


def test_an_issued_card_keeps_its_suggestion_uuids_and_none_stays_unknown(store: SqlFeedbackStore) -> None:
    with_two, with_none = issued_card("card-1"), issued_card("card-2")
    with_two = dataclasses.replace(with_two, suggestion_uuids=("s-1", "s-2"))
    without = dataclasses.replace(issued_card("card-3"), suggestion_uuids=())
    store.record_issued_cards([with_two, with_none, without])

    assert store.find_issued_card("card-1") == with_two
    assert store.find_issued_card("card-2") == with_none and with_none.suggestion_uuids is None
    assert store.find_issued_card("card-3") == without
    with store.engine.connect() as connection:  # "not kept" is SQL NULL, not the JSON null a query would miss
        unknown = text("SELECT card_uuid FROM issued_cards WHERE suggestion_uuids IS NULL")
        assert [row[0] for row in connection.execute(unknown)] == ["card-2"]


def test_migration_0003_keeps_cards_and_feedback_and_marks_them_unchecked(store_url: str) -> None:
    """A store at revision 0002 with a card and feedback: after the upgrade both are kept, and neither claims to
    know the card's suggestions (NULL), since they were not stored then."""
    engine = create_store_engine(resolve_store_url(store_url))
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    card = issued_card("card-1")
    old = hook_feedback("card-1", FeedbackOutcome.ACCEPTED, accepted_suggestions=("s-1",))
    with engine.begin() as connection:
        card_row = {k: v for k, v in sql_store._issued_card_row(card).items() if k != "suggestion_uuids"}
        connection.execute(schema.issued_cards.insert().values(card_row))
        row = {k: v for k, v in sql_store._hook_feedback_row(old).items() if k != "unknown_suggestions"}
        connection.execute(schema.hook_feedback.insert().values(row))
    engine.dispose()
    with open_store(store_url) as upgraded:
        assert upgraded.find_issued_card("card-1") == card and card.suggestion_uuids is None
        assert upgraded.list_hook_feedback() == [old] and old.unknown_suggestions is None
        assert upgraded.record_hook_feedback([old]) == 0  # the same report is still recognised


def test_hook_feedback_round_trips_every_field(store: SqlFeedbackStore) -> None:
    item = hook_feedback(
        "card-1",
        FeedbackOutcome.ACCEPTED,
        hook_instance="hook-1",
        rule_id="tizanidine-hepatic",
        rule_version=3,
        kb_version="1.4.0",
        accepted_suggestions=("sugg-1", "sugg-2"),
        override_reason_code="patient-declined",
        override_reason_system="http://hl7.org/fhir/CodeSystem/cds-hooks-override-reason",
        override_reason_display="Patient declined",
        user_comment="Discussed with the patient; ünïcode kept.",
        unknown_suggestions=("sugg-2",),
    )
    store.record_hook_feedback([item])

    [stored] = store.list_hook_feedback()
    assert stored == item


def test_the_same_feedback_twice_is_stored_once(store: SqlFeedbackStore) -> None:
    same_instant_other_offset = FROZEN_NOW.astimezone(timezone(timedelta(hours=9)))

    assert store.record_hook_feedback([hook_feedback("card-1")]) == 1
    assert store.record_hook_feedback([hook_feedback("card-1", at=same_instant_other_offset)]) == 0
    assert store.record_hook_feedback([hook_feedback("card-1"), hook_feedback("card-1")]) == 0
    assert store.counts().hook_feedback == 1


def test_a_report_that_adds_a_reason_or_a_comment_is_a_new_row(store: SqlFeedbackStore) -> None:
    reason = {"override_reason_code": "patient-declined", "override_reason_system": "http://example.org/cs"}
    assert store.record_hook_feedback([hook_feedback("card-1")]) == 1
    assert store.record_hook_feedback([hook_feedback("card-1", **reason)]) == 1
    assert store.record_hook_feedback([hook_feedback("card-1", **reason, user_comment="Declined today")]) == 1
    assert store.record_hook_feedback([hook_feedback("card-1", **reason, user_comment="Declined today")]) == 0
    assert store.record_hook_feedback([hook_feedback("card-1", accepted_suggestions=("b", "a"))]) == 1
    assert store.record_hook_feedback([hook_feedback("card-1", accepted_suggestions=("a", "b"))]) == 0
    assert store.counts().hook_feedback == 4


def test_migration_0002_keys_existing_feedback_by_its_content(store_url: str) -> None:
    """A store at revision 0001 with feedback in it: after the upgrade every row is kept, an old report sent again
    is still recognised, and the outcome check survived SQLite's copy of the table."""
    engine = create_store_engine(resolve_store_url(store_url))
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    old = hook_feedback("card-1", override_reason_code="patient-declined", user_comment="ünïcode")
    with engine.begin() as connection:
        newer = ("report_digest", "unknown_suggestions")  # columns of revisions 0002 and 0003
        row = {key: value for key, value in sql_store._hook_feedback_row(old).items() if key not in newer}
        connection.execute(schema.hook_feedback.insert().values(row))
    engine.dispose()
    with open_store(store_url) as upgraded:
        assert upgraded.list_hook_feedback() == [old]
        assert upgraded.record_hook_feedback([old]) == 0
        assert upgraded.record_hook_feedback([hook_feedback("card-1")]) == 1
        bad = sql_store._hook_feedback_row(hook_feedback("card-2")) | {"outcome": "ignored"}
        with pytest.raises(IntegrityError), upgraded.engine.begin() as connection:
            connection.execute(schema.hook_feedback.insert().values(bad))


def test_a_new_outcome_or_timestamp_for_a_card_is_a_new_row(store: SqlFeedbackStore) -> None:
    later = FROZEN_NOW + timedelta(minutes=1)
    items = [
        hook_feedback("card-1"),
        hook_feedback("card-1", FeedbackOutcome.ACCEPTED),
        hook_feedback("card-1", at=later),
    ]

    assert store.record_hook_feedback(items) == 3


def test_page_feedback_is_idempotent_on_its_id_and_round_trips(store: SqlFeedbackStore) -> None:
    item = page_feedback(True, answered=True, card_uuid="card-1", comment="Clear and cited.")

    assert store.record_page_feedback(item) is True
    assert store.record_page_feedback(item) is False
    assert store.list_page_feedback() == [item]


def test_lists_are_newest_first_and_limited(store: SqlFeedbackStore) -> None:
    for minute in range(5):
        at = FROZEN_NOW + timedelta(minutes=minute)
        store.record_hook_feedback([hook_feedback(f"card-{minute}", at=at)])

    newest = store.list_hook_feedback(limit=2)

    assert [item.card_uuid for item in newest] == ["card-4", "card-3"]
    with pytest.raises(ValueError, match="limit"):
        store.list_page_feedback(limit=0)


def test_a_jwt_id_is_accepted_once_per_issuer(store: SqlFeedbackStore) -> None:
    expires = FROZEN_NOW + timedelta(minutes=5)

    assert store.remember_jti("https://ehr.example", "jti-1", expires) is True
    assert store.remember_jti("https://ehr.example", "jti-1", expires) is False
    assert store.remember_jti("https://other.example", "jti-1", expires) is True


def test_expired_jwt_ids_are_purged(store: SqlFeedbackStore, clock: FrozenClock) -> None:
    store.remember_jti("https://ehr.example", "old", FROZEN_NOW + timedelta(minutes=5))
    clock.advance(timedelta(minutes=6))

    store.remember_jti("https://ehr.example", "new", clock.now + timedelta(minutes=5))

    assert store.counts().replay_entries == 1


@pytest.mark.postgres
def test_a_replay_write_on_a_connection_the_server_closed_is_retried_on_a_new_one(postgres_store_url: str) -> None:
    with open_store(postgres_store_url) as store:
        expires = FROZEN_NOW + timedelta(minutes=5)
        assert store.remember_jti("https://ehr.example", "before", expires) is True
        with store.engine.begin() as connection:
            closed = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND state = 'idle' AND query ILIKE '%jwt_replay%'"
                )
            ).scalar_one()
        assert closed == 1

        assert store.remember_jti("https://ehr.example", "after", expires) is True
        assert store.remember_jti("https://ehr.example", "before", expires) is False


def test_concurrent_replays_of_one_jwt_id_are_accepted_once(store: SqlFeedbackStore, clock: FrozenClock) -> None:
    for stale in range(20):
        store.remember_jti("https://ehr.example", f"stale-{stale}", FROZEN_NOW + timedelta(minutes=5))
    clock.advance(timedelta(minutes=10))
    expires = clock.now + timedelta(minutes=5)
    results: list[bool] = []
    start = threading.Barrier(8)

    def remember() -> None:
        start.wait()
        results.append(store.remember_jti("https://ehr.example", "jti-raced", expires))

    threads = [threading.Thread(target=remember) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert store.counts().replay_entries == 1
    assert sorted(results) == [False] * 7 + [True]


def test_feedback_report_counts_each_card_once_by_its_latest_outcome(store: SqlFeedbackStore) -> None:
    store.record_issued_cards([issued_card(f"b-{n}") for n in range(4)])
    store.record_issued_cards([issued_card("t-1", rule_id="tizanidine-hepatic", rule_version=2)])
    store.record_hook_feedback(
        [
            hook_feedback("b-0", FeedbackOutcome.OVERRIDDEN),
            hook_feedback("b-0", FeedbackOutcome.ACCEPTED, at=FROZEN_NOW + timedelta(minutes=1)),
            hook_feedback("b-1", FeedbackOutcome.ACCEPTED),
            hook_feedback("b-2", FeedbackOutcome.OVERRIDDEN),
            hook_feedback("t-1", FeedbackOutcome.OVERRIDDEN),
            hook_feedback("unknown-card", rule_id="dantrolene-liver", rule_version=1),
            hook_feedback("unknown-and-unattributed"),
        ]
    )
    for useful in (True, True, False, None):
        store.record_page_feedback(page_feedback(useful))
    store.record_page_feedback(page_feedback(True, rule_id=None))

    report = store.feedback_report()

    assert report == [
        RuleFeedbackStats("baclofen-start", 1, 4, 2, 1, page_useful_yes=2, page_useful_no=1),
        RuleFeedbackStats("dantrolene-liver", 1, 0, 0, 1),
        RuleFeedbackStats("tizanidine-hepatic", 2, 1, 0, 1),
    ]
    assert report[0].acceptance_rate == 0.5
    assert report[0].override_rate == 0.25


def test_an_acceptance_of_suggestions_the_card_never_carried_is_counted_apart(store: SqlFeedbackStore) -> None:
    store.record_issued_cards([issued_card(f"c-{n}") for n in range(5)])
    store.record_hook_feedback(
        [
            hook_feedback("c-0", FeedbackOutcome.ACCEPTED, accepted_suggestions=("s-1",), unknown_suggestions=()),
            hook_feedback("c-1", FeedbackOutcome.ACCEPTED, accepted_suggestions=("x",), unknown_suggestions=("x",)),
            hook_feedback("c-2", FeedbackOutcome.ACCEPTED),  # not checked (None): counted as sent
            hook_feedback("c-3", FeedbackOutcome.ACCEPTED, accepted_suggestions=("y",), unknown_suggestions=("y",)),
            hook_feedback(
                "c-3",
                FeedbackOutcome.ACCEPTED,
                at=FROZEN_NOW + timedelta(minutes=1),
                accepted_suggestions=("s-9",),
                unknown_suggestions=(),
            ),  # the latest report of the card decides
        ]
    )

    (stats,) = store.feedback_report()

    assert (stats.accepted, stats.accepted_unverified, stats.overridden) == (3, 1, 0)
    assert stats.acceptance_rate == 3 / 5


def test_empty_store_reports_nothing(store: SqlFeedbackStore) -> None:
    assert store.feedback_report() == []
    assert store.list_hook_feedback() == []


def test_timestamps_come_back_aware_and_equal(store: SqlFeedbackStore) -> None:
    store.record_issued_cards([issued_card("card-1")])

    card = store.find_issued_card("card-1")

    assert card is not None
    assert card.issued_at == FROZEN_NOW
    assert card.issued_at.tzinfo is UTC
