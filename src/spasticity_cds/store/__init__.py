"""Durable store: issued cards, CDS Hooks and page feedback, JWT replay cache, SMART sessions (SQLite, PostgreSQL).

    store = open_store(None)                                   # SQLite file in the user's data directory
    store = open_store("sqlite:///var/lib/cds/feedback.sqlite3")
    store = open_store("postgresql+psycopg://user:password@host:5432/db")

`open_store` migrates the schema to the newest shipped Alembic revision before it returns. See docs/store.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from alembic.util.exc import CommandError

from spasticity_cds.errors import StoreError
from spasticity_cds.store.base import FeedbackStore
from spasticity_cds.store.connection import (
    create_replay_engine,
    create_store_engine,
    default_data_dir,
    default_store_url,
    resolve_store_url,
    safe_url,
    store_errors,
)
from spasticity_cds.store.migrate import upgrade_to_head
from spasticity_cds.store.records import (
    FeedbackOutcome,
    HookFeedback,
    IssuedCard,
    PageContext,
    PageFeedback,
    RuleFeedbackStats,
    SealedSmartSession,
    SmartSessionStage,
    StoreCounts,
    hash_patient_ref,
    hash_session_id,
)
from spasticity_cds.store.sql_store import SqlFeedbackStore

__all__ = [
    "FeedbackOutcome",
    "FeedbackStore",
    "HookFeedback",
    "IssuedCard",
    "PageContext",
    "PageFeedback",
    "RuleFeedbackStats",
    "SealedSmartSession",
    "SmartSessionStage",
    "SqlFeedbackStore",
    "StoreCounts",
    "default_data_dir",
    "default_store_url",
    "hash_patient_ref",
    "hash_session_id",
    "open_store",
]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def open_store(url: str | None = None, *, clock: Callable[[], datetime] | None = None) -> SqlFeedbackStore:
    """Open (create and migrate if needed) the feedback store at `url`; None means the default SQLite file.

    `clock` (default: the system clock in UTC) decides when replay-cache entries and SMART sessions have expired.
    Raises `StoreError` for a bad URL, an unreachable database or a schema newer than this software.
    """
    store_url = resolve_store_url(url)
    engine = create_store_engine(store_url)
    try:
        with store_errors("open and migrate the feedback store", store_url):
            upgrade_to_head(engine)
    except CommandError as exc:
        engine.dispose()
        message = f"cannot migrate the feedback store schema (is it from a newer version?): {exc}"
        raise StoreError(message, where=safe_url(store_url)) from exc
    except BaseException:
        engine.dispose()
        raise
    return SqlFeedbackStore(engine, clock=clock or _utc_now, replay_engine=create_replay_engine(store_url))
