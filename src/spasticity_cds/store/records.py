"""Typed, immutable records the feedback store writes and reads."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FeedbackOutcome(StrEnum):
    """What the clinician did with a CDS Hooks card (CDS Hooks 2.0 feedback `outcome`)."""

    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


class PageContext(StrEnum):
    """Where on our own web page a feedback form was answered."""

    ANSWER_PAGE = "answer-page"
    PATIENT_PLAN = "patient-plan"
    FINDING = "finding"


class SmartSessionStage(StrEnum):
    """Where a SMART launch stands: waiting for the EHR's OAuth callback, or logged in (its plan can be opened)."""

    PENDING = "pending"
    ACTIVE = "active"


def hash_patient_ref(patient_ref: str) -> str:
    """Return the sha256 hex digest of a patient reference (``Patient/123``); never store the raw ref."""
    return hashlib.sha256(patient_ref.encode("utf-8")).hexdigest()


def hash_session_id(session_id: str) -> str:
    """Return the sha256 hex digest of a SMART session id (an OAuth state or a plan's URL); never store the raw id.

    The ids are 256-bit random values, so a plain hash cannot be reversed by guessing, and a read of the store
    gives no URL that opens a plan.
    """
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """A card our CDS service returned, kept so that feedback (which names only the card) finds its rule."""

    card_uuid: str
    service_id: str
    hook_instance: str
    rule_id: str
    rule_version: int
    kb_version: str
    patient_ref_hash: str
    issued_at: datetime
    #: The uuids of the card's suggestions (empty: it had none); None for a card stored before revision 0003,
    #: when they were not kept. Feedback that accepts another uuid is flagged (`HookFeedback.unknown_suggestions`).
    suggestion_uuids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _require_aware("issued_at", self.issued_at)
        if self.suggestion_uuids is not None:
            object.__setattr__(self, "suggestion_uuids", tuple(self.suggestion_uuids))
        if not _SHA256_HEX.fullmatch(self.patient_ref_hash):
            raise ValueError("patient_ref_hash must be a lowercase sha256 hex digest (see hash_patient_ref)")


@dataclass(frozen=True, slots=True)
class HookFeedback:
    """One CDS Hooks feedback item; unique by (card_uuid, report_digest): a report sent again is one row, a report
    of the same outcome that adds a reason or a comment is another.

    Rule fields and hook_instance come from the matching `IssuedCard` and are None when the card is unknown.
    """

    service_id: str
    card_uuid: str
    outcome: FeedbackOutcome
    outcome_timestamp: datetime
    received_at: datetime
    hook_instance: str | None = None
    rule_id: str | None = None
    rule_version: int | None = None
    kb_version: str | None = None
    accepted_suggestions: tuple[str, ...] = ()
    override_reason_code: str | None = None
    override_reason_system: str | None = None
    override_reason_display: str | None = None
    user_comment: str | None = None
    #: The accepted suggestion uuids the issued card did not carry (the spec names only the card's own); empty when
    #: all were its own, None when that could not be checked (the card is unknown, or stored before revision 0003).
    #: The report is stored as sent either way: a flag, never a refusal, so no record is lost.
    unknown_suggestions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", FeedbackOutcome(self.outcome))
        object.__setattr__(self, "accepted_suggestions", tuple(self.accepted_suggestions))
        if self.unknown_suggestions is not None:
            object.__setattr__(self, "unknown_suggestions", tuple(self.unknown_suggestions))
        _require_aware("outcome_timestamp", self.outcome_timestamp)
        _require_aware("received_at", self.received_at)

    @property
    def report_digest(self) -> str:
        """What tells two reports about a card apart: a digest of everything the client said in it."""
        return report_digest(
            self.outcome.value,
            self.outcome_timestamp,
            self.accepted_suggestions,
            (self.override_reason_code, self.override_reason_system, self.override_reason_display, self.user_comment),
        )


def report_digest(
    outcome: str, outcome_timestamp: datetime, accepted: Iterable[str], reason: tuple[str | None, ...]
) -> str:
    """SHA-256 (hex) of a feedback report's content, the instant in UTC; migration 0002 fills old rows with it."""
    content = [outcome, outcome_timestamp.astimezone(UTC).isoformat(), sorted(accepted), list(reason)]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PageFeedback:
    """An answer to "Did this answer your question?" or a per-finding rating; unique by its client-made id."""

    id: uuid.UUID
    context: PageContext
    created_at: datetime
    answered: bool | None = None
    useful: bool | None = None
    rule_id: str | None = None
    rule_version: int | None = None
    kb_version: str | None = None
    card_uuid: str | None = None
    override_reason_code: str | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", PageContext(self.context))
        _require_aware("created_at", self.created_at)


@dataclass(frozen=True, slots=True)
class SealedSmartSession:
    """A SMART launch as the store keeps it: found by the hash of its id, its content sealed by the web app.

    The store never sees the content in clear (the access token, the PKCE verifier, the patient, the browser it
    is bound to): ``sealed`` is opaque bytes. ``expires_at`` is when the session ends; an expired session is
    neither found nor taken, and is purged.
    """

    key_hash: str
    stage: SmartSessionStage
    sealed: bytes
    created_at: datetime
    expires_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", SmartSessionStage(self.stage))
        _require_aware("created_at", self.created_at)
        _require_aware("expires_at", self.expires_at)
        if not _SHA256_HEX.fullmatch(self.key_hash):
            raise ValueError("key_hash must be a lowercase sha256 hex digest (see hash_session_id)")
        if not isinstance(self.sealed, bytes) or not self.sealed:
            raise ValueError("sealed must be non-empty bytes")


@dataclass(frozen=True, slots=True)
class RuleFeedbackStats:
    """Feedback totals for one rule version; rates are over cards issued and None when none were issued.

    A card reported several times counts once, with its latest outcome. An acceptance naming suggestions the card
    never carried (`HookFeedback.unknown_suggestions`: a client's mistake, or feedback meant for another card) is
    counted apart, in ``accepted_unverified``, and not in ``accepted`` or the acceptance rate.
    """

    rule_id: str
    rule_version: int
    cards_issued: int = 0
    accepted: int = 0
    overridden: int = 0
    page_useful_yes: int = 0
    page_useful_no: int = 0
    accepted_unverified: int = 0
    acceptance_rate: float | None = field(init=False)
    override_rate: float | None = field(init=False)

    def __post_init__(self) -> None:
        issued = self.cards_issued
        object.__setattr__(self, "acceptance_rate", self.accepted / issued if issued else None)
        object.__setattr__(self, "override_rate", self.overridden / issued if issued else None)


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """How many rows each table holds; for tests and health pages."""

    issued_cards: int
    hook_feedback: int
    page_feedback: int
    replay_entries: int
    smart_sessions: int
