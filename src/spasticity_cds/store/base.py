"""The feedback store's interface; `sql_store.SqlFeedbackStore` is its one implementation."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from spasticity_cds.store.records import (
    HookFeedback,
    IssuedCard,
    PageFeedback,
    RuleFeedbackStats,
    SealedSmartSession,
    StoreCounts,
)


class FeedbackStore(Protocol):
    """Durable, idempotent storage for issued cards, feedback, seen JWT ids and SMART launch sessions.

    Every write commits in its own transaction before it returns; failures raise `StoreError`.
    """

    def record_issued_cards(self, cards: Iterable[IssuedCard]) -> int:
        """Store cards a hook call returned (idempotent on card_uuid); return how many were new."""
        ...

    def record_hook_feedback(self, items: Iterable[HookFeedback]) -> int:
        """Store CDS Hooks feedback (idempotent on card, outcome, timestamp); return how many were new."""
        ...

    def record_page_feedback(self, item: PageFeedback) -> bool:
        """Store one page feedback answer (idempotent on its id); return whether it was new."""
        ...

    def remember_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record a JWT id until `expires_at`; return False if (issuer, jti) was already recorded."""
        ...

    def remember_jti_at_once(self, issuer: str, jti: str, expires_at: datetime) -> bool | None:
        """`remember_jti` if it can be done without waiting (no lock to wait for, no server round trip), else None."""
        ...

    def add_smart_session(self, session: SealedSmartSession, *, max_pending: int) -> None:
        """Keep a new SMART session; pending launches beyond the ``max_pending`` newest are removed, oldest first."""
        ...

    def take_pending_smart_session(self, key_hash: str) -> SealedSmartSession | None:
        """Remove and return the unexpired pending launch under ``key_hash``: exactly one of racing callers gets it."""
        ...

    def find_active_smart_session(self, key_hash: str) -> SealedSmartSession | None:
        """The unexpired logged-in session under ``key_hash``, or None."""
        ...

    def find_issued_card(self, card_uuid: str) -> IssuedCard | None:
        """Return the issued card with this uuid, if the store has it."""
        ...

    def list_hook_feedback(self, limit: int = 100) -> list[HookFeedback]:
        """Return the newest hook feedback first (by received_at)."""
        ...

    def list_page_feedback(self, limit: int = 100) -> list[PageFeedback]:
        """Return the newest page feedback first (by created_at)."""
        ...

    def feedback_report(self) -> list[RuleFeedbackStats]:
        """Return feedback totals per rule id and version, ordered by rule id then version."""
        ...

    def counts(self) -> StoreCounts:
        """Return the number of rows in each table."""
        ...

    def close(self) -> None:
        """Release the store's connections; the store must not be used afterwards."""
        ...
