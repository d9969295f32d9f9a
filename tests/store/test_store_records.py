"""The store's records validate what they hold and compute their rates."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from spasticity_cds.store import (
    FeedbackOutcome,
    HookFeedback,
    IssuedCard,
    PageContext,
    PageFeedback,
    RuleFeedbackStats,
    hash_patient_ref,
)

NOW = datetime(2026, 3, 14, 14, 26, 53, tzinfo=UTC)


def test_patient_ref_hash_is_sha256_hex_of_the_reference() -> None:
    assert hash_patient_ref("Patient/123") == hashlib.sha256(b"Patient/123").hexdigest()


def test_issued_card_refuses_a_raw_patient_reference() -> None:
    with pytest.raises(ValueError, match="sha256"):
        IssuedCard("card-1", "svc", "hook-1", "R1", 1, "1.0.0", "Patient/123", NOW)


def test_records_refuse_naive_datetimes() -> None:
    naive = datetime(2026, 3, 14, 9, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        HookFeedback(
            service_id="svc",
            card_uuid="card-1",
            outcome=FeedbackOutcome.ACCEPTED,
            outcome_timestamp=naive,
            received_at=NOW,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        PageFeedback(id=uuid.uuid4(), context=PageContext.FINDING, created_at=naive)


def test_outcome_and_context_strings_become_enums() -> None:
    feedback = HookFeedback(
        service_id="svc",
        card_uuid="card-1",
        outcome="overridden",  # type: ignore[arg-type]
        outcome_timestamp=NOW,
        received_at=NOW,
        accepted_suggestions=["s-1"],  # type: ignore[arg-type]
    )
    page = PageFeedback(id=uuid.uuid4(), context="answer-page", created_at=NOW)  # type: ignore[arg-type]

    assert feedback.outcome is FeedbackOutcome.OVERRIDDEN
    assert feedback.accepted_suggestions == ("s-1",)
    assert page.context is PageContext.ANSWER_PAGE


def test_unknown_outcome_is_rejected() -> None:
    with pytest.raises(ValueError, match="ignored"):
        HookFeedback(
            service_id="svc",
            card_uuid="card-1",
            outcome="ignored",  # type: ignore[arg-type]
            outcome_timestamp=NOW,
            received_at=NOW,
        )


def test_rates_are_over_cards_issued() -> None:
    stats = RuleFeedbackStats("R1", 2, cards_issued=8, accepted=2, overridden=6)

    assert stats.acceptance_rate == 0.25
    assert stats.override_rate == 0.75


def test_rates_are_none_without_issued_cards() -> None:
    stats = RuleFeedbackStats("R1", 2, accepted=1)

    assert stats.acceptance_rate is None
    assert stats.override_rate is None
