"""The feedback store on SQLAlchemy Core; the same statements run on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Delete, Engine, Select, String, Table, and_, case, cast, delete, func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError

from spasticity_cds.store import schema
from spasticity_cds.store.connection import READ_ONLY_OPTION, store_errors
from spasticity_cds.store.records import (
    FeedbackOutcome,
    HookFeedback,
    IssuedCard,
    PageFeedback,
    RuleFeedbackStats,
    SealedSmartSession,
    SmartSessionStage,
    StoreCounts,
)
from spasticity_cds.store.replay_at_once import SqliteReplayWriter

RuleKey = tuple[str, int]
T = TypeVar("T")


JTI_PURGE_INTERVAL = timedelta(seconds=60)
SESSION_PURGE_INTERVAL = timedelta(seconds=60)


class SqlFeedbackStore:
    """`FeedbackStore` over one SQLAlchemy engine; open it with `spasticity_cds.store.open_store`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime], replay_engine: Engine | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._replay_engine = replay_engine
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        # Built once: a statement built per call (and with the rows as literal VALUES) cost more CPU than the write.
        self._insert_new = {
            table: dialect.insert(table).on_conflict_do_nothing()
            for table in (schema.issued_cards, schema.hook_feedback, schema.page_feedback, schema.jwt_replay)
        }
        self._next_jti_purge: datetime | None = None
        self._next_session_purge: datetime | None = None
        on_sqlite = engine.dialect.name == "sqlite"
        self._replay_at_once = SqliteReplayWriter(engine) if on_sqlite else None
        # SQLite has one writer at a time. Threads of this process (replay writes, the card writer, feedback) queue
        # here instead of in SQLite's busy handler, whose sleeps grow to 100 ms: with 16 clients that made the
        # p99 of JWT calls about a second. PostgreSQL writes concurrently and takes no lock here.
        self._writer_lock = threading.Lock() if on_sqlite else None
        self._one_writer: AbstractContextManager[object] = self._writer_lock or nullcontext()

    @property
    def engine(self) -> Engine:
        """The underlying engine (for tests and diagnostics)."""
        return self._engine

    def __enter__(self) -> SqlFeedbackStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's connections."""
        if self._replay_at_once is not None:
            with self._one_writer:
                self._replay_at_once.close()
        self._engine.dispose()
        if self._replay_engine is not None:
            self._replay_engine.dispose()

    def record_issued_cards(self, cards: Iterable[IssuedCard]) -> int:
        """Store cards a hook call returned (idempotent on card_uuid); return how many were new."""
        with self._writing("record issued cards") as connection:
            return self._insert(connection, schema.issued_cards, [_issued_card_row(c) for c in cards])

    def record_hook_feedback(self, items: Iterable[HookFeedback]) -> int:
        """Store CDS Hooks feedback (idempotent on the card and the report's content); return how many were new."""
        with self._writing("record hook feedback") as connection:
            return self._insert(connection, schema.hook_feedback, [_hook_feedback_row(i) for i in items])

    def record_page_feedback(self, item: PageFeedback) -> bool:
        """Store one page feedback answer (idempotent on its id); return whether it was new."""
        with self._writing("record page feedback") as connection:
            return self._insert(connection, schema.page_feedback, [_page_feedback_row(item)]) == 1

    def remember_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record a JWT id until `expires_at`; return False if (issuer, jti) was already recorded.

        Expired entries are purged first, at most once per JTI_PURGE_INTERVAL per process (a purge on every call
        cost more than the insert). The unique key makes the insert atomic across processes. On PostgreSQL the
        insert is one autocommitted statement on the replay engine (`create_replay_engine`).
        """
        row = {"issuer": issuer, "jti": jti, "expires_at": expires_at}
        now = self._clock()
        purge = _due(self._next_jti_purge, now)
        if purge:
            self._next_jti_purge = now + JTI_PURGE_INTERVAL
        purge_before = now if purge else None
        if self._replay_engine is None:
            with self._writing("remember a JWT id") as connection:
                return self._insert_jti(connection, row, purge_before)
        # Had a lost insert been committed, the retry finds the jti and the call is refused (the safe side).
        return self._quick(
            "remember a JWT id",
            lambda connection, again: self._insert_jti(connection, row, None if again else purge_before),
        )

    def remember_jti_at_once(self, issuer: str, jti: str, expires_at: datetime) -> bool | None:
        """`remember_jti` if it can be done without waiting, else None (and nothing was written).

        Only on SQLite (a local file; PostgreSQL is a round trip to a server), when no other thread of this process
        is writing, no other process holds the write lock, and no purge of expired ids is due. A hook call then
        remembers its jti on the event loop: the hand-off to a thread cost more than the write itself.
        """
        writer, lock = self._replay_at_once, self._writer_lock
        if writer is None or lock is None or _due(self._next_jti_purge, self._clock()):
            return None
        if not lock.acquire(blocking=False):
            return None
        try:
            return writer.remember(issuer, jti, expires_at)
        finally:
            lock.release()

    def _insert_jti(self, connection: Connection, row: Mapping[str, Any], purge_before: datetime | None) -> bool:
        if purge_before is not None:
            connection.execute(_purge_expired_jtis(purge_before))
        return self._insert(connection, schema.jwt_replay, [row]) == 1

    def _insert(self, connection: Connection, table: Table, rows: list[Mapping[str, Any]]) -> int:
        """INSERT .. ON CONFLICT DO NOTHING of every row in one execution; how many rows were new."""
        if not rows:
            return 0
        inserted = connection.execute(self._insert_new[table], rows, execution_options={"preserve_rowcount": True})
        return int(inserted.rowcount)

    def add_smart_session(self, session: SealedSmartSession, *, max_pending: int) -> None:
        """Keep a new SMART session; StoreError if it cannot (or if its key is taken: ids are never reused).

        Expired sessions are purged first, at most once per SESSION_PURGE_INTERVAL per process. A pending launch
        beyond the ``max_pending`` newest is removed, oldest first; a logged-in session never is (anyone can start
        launches, and a flood of them must not end plans in use): it ends at its ``expires_at``.
        """
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        now = self._clock()
        purge = _due(self._next_session_purge, now)
        with self._writing("keep a SMART session") as connection:
            if purge:
                connection.execute(_purge_expired_sessions(now))
            connection.execute(schema.smart_sessions.insert(), [_smart_session_row(session)])
            if session.stage is SmartSessionStage.PENDING:
                _drop_pending_beyond(connection, max_pending)
        if purge:  # only once the purge is committed: a failed one is tried again on the next call
            self._next_session_purge = now + SESSION_PURGE_INTERVAL

    def take_pending_smart_session(self, key_hash: str) -> SealedSmartSession | None:
        """Remove and return the pending launch under ``key_hash``, None if there is none (or it has expired).

        Taken atomically: of callers racing for the same key, in threads, processes or hosts, exactly one gets the
        session. On PostgreSQL it is one autocommitted ``DELETE .. RETURNING`` on the quick engine; a connection the
        server had closed is retried once, and had the lost delete been committed, the retry finds nothing and the
        launch is refused (the safe side).
        """
        table = schema.smart_sessions
        pending = (table.c.key_hash == key_hash, table.c.stage == SmartSessionStage.PENDING.value)
        if self._replay_engine is None:
            # SQLite: a read then a delete in one write transaction (BEGIN IMMEDIATE: writers take turns, so it is
            # as atomic as DELETE .. RETURNING, which SQLite before 3.35, still shipped by some systems, lacks).
            with self._writing("take a SMART launch") as connection:
                row = connection.execute(select(table).where(*pending)).mappings().first()
                if row is not None:
                    connection.execute(delete(table).where(*pending))
        else:
            statement = delete(table).where(*pending).returning(*table.c)
            row = self._quick(
                "take a SMART launch", lambda connection, _: connection.execute(statement).mappings().first()
            )
        if row is None:
            return None
        session = _smart_session_from_row(row)
        return session if session.expires_at > self._clock() else None

    def find_active_smart_session(self, key_hash: str) -> SealedSmartSession | None:
        """The logged-in session under ``key_hash``, unless it has expired; read on every plan page, so it is one
        primary-key lookup (on PostgreSQL one autocommitted statement, without a pre-ping round trip)."""
        table = schema.smart_sessions
        query = select(table).where(
            table.c.key_hash == key_hash,
            table.c.stage == SmartSessionStage.ACTIVE.value,
            table.c.expires_at > self._clock(),
        )
        if self._replay_engine is None:
            with self._reading("read a SMART session") as connection:
                row = connection.execute(query).mappings().first()
        else:
            row = self._quick(
                "read a SMART session", lambda connection, _: connection.execute(query).mappings().first()
            )
        return _smart_session_from_row(row) if row is not None else None

    def _quick(self, action: str, run: Callable[[Connection, bool], T]) -> T:
        """``run`` on a connection of PostgreSQL's autocommit engine (one statement, one round trip: no pre-ping, no
        BEGIN and COMMIT); a pooled connection the server had closed fails on use, so ``run`` goes once more on a new
        one, told that it is the second try."""
        assert self._replay_engine is not None
        with store_errors(action, self._engine.url):
            try:
                with self._replay_engine.connect() as connection:
                    return run(connection, False)
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
            with self._replay_engine.connect() as connection:
                return run(connection, True)

    def find_issued_card(self, card_uuid: str) -> IssuedCard | None:
        """Return the issued card with this uuid, if the store has it."""
        query = select(schema.issued_cards).where(schema.issued_cards.c.card_uuid == card_uuid)
        with self._reading("find an issued card") as connection:
            row = connection.execute(query).mappings().first()
        return _issued_card_from_row(row) if row is not None else None

    def list_hook_feedback(self, limit: int = 100) -> list[HookFeedback]:
        """Return the newest hook feedback first (by received_at)."""
        table = schema.hook_feedback
        query = select(table).order_by(table.c.received_at.desc(), table.c.id.desc()).limit(_positive(limit))
        with self._reading("list hook feedback") as connection:
            return [_hook_feedback_from_row(row) for row in connection.execute(query).mappings()]

    def list_page_feedback(self, limit: int = 100) -> list[PageFeedback]:
        """Return the newest page feedback first (by created_at)."""
        table = schema.page_feedback
        query = select(table).order_by(table.c.created_at.desc(), table.c.id).limit(_positive(limit))
        with self._reading("list page feedback") as connection:
            return [_page_feedback_from_row(row) for row in connection.execute(query).mappings()]

    def feedback_report(self) -> list[RuleFeedbackStats]:
        """Return feedback totals per rule id and version, ordered by rule id then version."""
        totals: dict[RuleKey, _Totals] = {}
        with self._reading("build the feedback report") as connection:
            for rule_id, version, issued in connection.execute(_cards_issued_per_rule()):
                totals.setdefault((rule_id, version), _Totals()).cards_issued = issued
            for rule_id, version, outcome, unverified, cards in connection.execute(_latest_outcomes_per_rule()):
                totals.setdefault((rule_id, version), _Totals()).add_outcome(outcome, bool(unverified), cards)
            for rule_id, version, useful, answers in connection.execute(_page_usefulness_per_rule()):
                totals.setdefault((rule_id, version), _Totals()).add_usefulness(useful, answers)
        return [totals[key].to_stats(key) for key in sorted(totals)]

    def counts(self) -> StoreCounts:
        """Return the number of rows in each table."""
        tables = (
            schema.issued_cards,
            schema.hook_feedback,
            schema.page_feedback,
            schema.jwt_replay,
            schema.smart_sessions,
        )
        with self._reading("count rows") as connection:
            issued, hook, page, replay, sessions = (_count_rows(connection, table) for table in tables)
        return StoreCounts(
            issued_cards=issued,
            hook_feedback=hook,
            page_feedback=page,
            replay_entries=replay,
            smart_sessions=sessions,
        )

    @contextmanager
    def _writing(self, action: str) -> Iterator[Connection]:
        """One write transaction, committed before the block's result is returned."""
        with self._one_writer, store_errors(action, self._engine.url), self._engine.begin() as connection:
            yield connection

    @contextmanager
    def _reading(self, action: str) -> Iterator[Connection]:
        """One read transaction (on SQLite a deferred one, so that readers never wait for writers)."""
        with store_errors(action, self._engine.url), self._engine.connect() as connection:
            connection.execution_options(**{READ_ONLY_OPTION: True})
            yield connection


def _positive(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return limit


def _purge_expired_jtis(now: datetime) -> Delete:
    """Delete expired replay entries, skipping rows another transaction holds (so purges never deadlock)."""
    replay = schema.jwt_replay
    key = tuple_(replay.c.issuer, replay.c.jti)
    expired = select(replay.c.issuer, replay.c.jti).where(replay.c.expires_at < now)
    return delete(replay).where(key.in_(expired.with_for_update(skip_locked=True)))


def _purge_expired_sessions(now: datetime) -> Delete:
    """Delete ended SMART sessions, skipping rows another transaction holds (as `_purge_expired_jtis`)."""
    sessions = schema.smart_sessions
    expired = select(sessions.c.key_hash).where(sessions.c.expires_at <= now)
    return delete(sessions).where(sessions.c.key_hash.in_(expired.with_for_update(skip_locked=True)))


def _drop_pending_beyond(connection: Connection, max_pending: int) -> None:
    """Delete the pending launches older than the ``max_pending`` newest (logged-in sessions are never touched).

    The newest of those to drop is read first, without a lock, and everything pending up to it deleted: locking the
    rows while counting past the kept ones locked those too (PostgreSQL locks before it skips an OFFSET), and cost
    7-9 ms a launch at the cap, the flood the cap is for. Launches added meanwhile are newer, so at least the
    ``max_pending`` newest always stay.
    """
    sessions = schema.smart_sessions
    is_pending = sessions.c.stage == SmartSessionStage.PENDING.value
    cutoff = connection.execute(
        select(sessions.c.created_at, sessions.c.key_hash)
        .where(is_pending)
        .order_by(sessions.c.created_at.desc(), sessions.c.key_hash.desc())
        .offset(max_pending)
        .limit(1)
    ).first()
    if cutoff is None:
        return
    created_at, key_hash = cutoff
    older = or_(
        sessions.c.created_at < created_at,
        and_(sessions.c.created_at == created_at, sessions.c.key_hash <= key_hash),
    )
    connection.execute(delete(sessions).where(is_pending, older))


def _count_rows(connection: Connection, table: Table) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _cards_issued_per_rule() -> Select[str, int, int]:
    cards = schema.issued_cards
    return select(cards.c.rule_id, cards.c.rule_version, func.count()).group_by(cards.c.rule_id, cards.c.rule_version)


def _latest_outcomes_per_rule() -> Select[str, int, str, bool, int]:
    """Count each card once, by its latest outcome and whether it named suggestions the card never carried, under
    its issued card's rule (or the feedback's)."""
    feedback, cards = schema.hook_feedback, schema.issued_cards
    newest_first = (feedback.c.outcome_timestamp.desc(), feedback.c.id.desc())
    # The JSON list as stored ("[]" when every suggestion matched; SQL NULL when it could not be checked) read as
    # text, the same on SQLite and PostgreSQL, so no JSON function of either is needed.
    listed = func.coalesce(cast(feedback.c.unknown_suggestions, String), "[]")
    ranked = (
        select(
            func.coalesce(cards.c.rule_id, feedback.c.rule_id).label("rule_id"),
            func.coalesce(cards.c.rule_version, feedback.c.rule_version).label("rule_version"),
            feedback.c.outcome,
            case((listed.in_(["[]", "null"]), False), else_=True).label("unverified"),
            func.row_number().over(partition_by=feedback.c.card_uuid, order_by=newest_first).label("recency"),
        )
        .select_from(feedback.outerjoin(cards, cards.c.card_uuid == feedback.c.card_uuid))
        .subquery()
    )
    return (
        select(ranked.c.rule_id, ranked.c.rule_version, ranked.c.outcome, ranked.c.unverified, func.count())
        .where(ranked.c.recency == 1, ranked.c.rule_id.is_not(None), ranked.c.rule_version.is_not(None))
        .group_by(ranked.c.rule_id, ranked.c.rule_version, ranked.c.outcome, ranked.c.unverified)
    )


def _page_usefulness_per_rule() -> Select[str, int, bool, int]:
    page = schema.page_feedback
    return (
        select(page.c.rule_id, page.c.rule_version, page.c.useful, func.count())
        .where(page.c.rule_id.is_not(None), page.c.rule_version.is_not(None), page.c.useful.is_not(None))
        .group_by(page.c.rule_id, page.c.rule_version, page.c.useful)
    )


@dataclass
class _Totals:
    cards_issued: int = 0
    accepted: int = 0
    overridden: int = 0
    useful_yes: int = 0
    useful_no: int = 0
    accepted_unverified: int = 0

    def add_outcome(self, outcome: str, unverified: bool, cards: int) -> None:
        if outcome != FeedbackOutcome.ACCEPTED:
            self.overridden += cards
        elif unverified:
            self.accepted_unverified += cards
        else:
            self.accepted += cards

    def add_usefulness(self, useful: bool, answers: int) -> None:
        if useful:
            self.useful_yes += answers
        else:
            self.useful_no += answers

    def to_stats(self, key: RuleKey) -> RuleFeedbackStats:
        return RuleFeedbackStats(
            rule_id=key[0],
            rule_version=key[1],
            cards_issued=self.cards_issued,
            accepted=self.accepted,
            overridden=self.overridden,
            page_useful_yes=self.useful_yes,
            page_useful_no=self.useful_no,
            accepted_unverified=self.accepted_unverified,
        )


def _issued_card_row(card: IssuedCard) -> dict[str, Any]:
    return {
        "card_uuid": card.card_uuid,
        "service_id": card.service_id,
        "hook_instance": card.hook_instance,
        "rule_id": card.rule_id,
        "rule_version": card.rule_version,
        "kb_version": card.kb_version,
        "patient_ref_hash": card.patient_ref_hash,
        "issued_at": card.issued_at,
        "suggestion_uuids": _json_list(card.suggestion_uuids),
    }


def _issued_card_from_row(row: RowMapping) -> IssuedCard:
    return IssuedCard(**{name: row[name] for name in IssuedCard.__dataclass_fields__})


def _json_list(values: tuple[str, ...] | None) -> list[str] | None:
    """A tuple as a JSON list; None stays SQL NULL ("not known"), never JSON null, so queries can tell."""
    return list(values) if values is not None else None


def _hook_feedback_row(item: HookFeedback) -> dict[str, Any]:
    return {
        "service_id": item.service_id,
        "hook_instance": item.hook_instance,
        "card_uuid": item.card_uuid,
        "rule_id": item.rule_id,
        "rule_version": item.rule_version,
        "kb_version": item.kb_version,
        "outcome": item.outcome.value,
        "accepted_suggestions": list(item.accepted_suggestions),
        "override_reason_code": item.override_reason_code,
        "override_reason_system": item.override_reason_system,
        "override_reason_display": item.override_reason_display,
        "user_comment": item.user_comment,
        "outcome_timestamp": item.outcome_timestamp,
        "received_at": item.received_at,
        "report_digest": item.report_digest,
        "unknown_suggestions": _json_list(item.unknown_suggestions),
    }


def _hook_feedback_from_row(row: RowMapping) -> HookFeedback:
    fields = {name: row[name] for name in HookFeedback.__dataclass_fields__}
    fields["accepted_suggestions"] = tuple(row["accepted_suggestions"])
    return HookFeedback(**fields)


def _page_feedback_row(item: PageFeedback) -> dict[str, Any]:
    return _row(item, context=item.context.value)


def _page_feedback_from_row(row: RowMapping) -> PageFeedback:
    return PageFeedback(**{name: row[name] for name in PageFeedback.__dataclass_fields__})


def _smart_session_row(session: SealedSmartSession) -> dict[str, Any]:
    return _row(session, stage=session.stage.value)


def _row(record: Any, **stored_as: Any) -> dict[str, Any]:
    """A record's fields by name (its dataclass fields are the table's columns), those given stored as given."""
    return {name: getattr(record, name) for name in record.__dataclass_fields__} | stored_as


def _due(next_at: datetime | None, now: datetime) -> bool:
    """Whether a once-a-while purge is due: never run in this process, or its next time has come."""
    return next_at is None or now >= next_at


def _smart_session_from_row(row: RowMapping) -> SealedSmartSession:
    fields = {name: row[name] for name in SealedSmartSession.__dataclass_fields__}
    fields["sealed"] = bytes(fields["sealed"])  # psycopg reads bytea as memoryview
    return SealedSmartSession(**fields)
