"""Dated monitoring: the next due date of each monograph item from the drug's start and the last result."""

from __future__ import annotations

from datetime import date

from spasticity_cds import load_knowledge_base
from spasticity_cds.engine.facts import Fact, missing
from spasticity_cds.engine.monitoring import schedule
from spasticity_cds.knowledge.schema import MonitoringItem

from .records import NOW, alt, days_ago, egfr, med, record

ENGINE = load_knowledge_base()
TODAY = date(2026, 11, 24)


def _item(test: str = "liver", **days: int | None) -> MonitoringItem:
    return MonitoringItem(test=test, what="what", citations=[], **days)  # type: ignore[arg-type]


def _liver_done(when: str | None) -> dict[str, Fact]:
    name = "obs.liver_days_since"
    return {name: Fact(name, 1, "days", when) if when else missing(name)}


def test_an_item_without_numbers_has_no_dates() -> None:
    assert schedule(_item(), date(2026, 11, 1), TODAY, {}) is None


def test_a_start_not_on_record_is_said_not_guessed() -> None:
    assert schedule(_item(first_due_days=0), None, TODAY, {}) == {
        "note": "the start date is not on record, so no date can be set"
    }


def test_a_baseline_never_done_is_due_from_the_start_and_overdue_once_past() -> None:
    item = _item(first_due_days=0, interval_days=14, until_days=42)
    due = schedule(item, date(2026, 11, 10), TODAY, _liver_done(None))
    assert due == {
        "from": "2026-11-10",
        "next_due": "2026-11-10",
        "overdue": True,
        "then": ["2026-12-08", "2026-12-22"],
    }


def test_the_next_test_is_one_interval_after_the_last_within_the_window() -> None:
    item = _item(first_due_days=0, interval_days=14, until_days=42)
    due = schedule(item, date(2026, 11, 17), TODAY, _liver_done("2026-11-16"))
    assert due == {
        "from": "2026-11-17",
        "last_done": "2026-11-16",
        "next_due": "2026-11-30",
        "overdue": False,
        "then": ["2026-12-14", "2026-12-28"],
    }


def test_past_the_dated_window_the_text_takes_over() -> None:
    item = _item(first_due_days=0, interval_days=14, until_days=42)
    due = schedule(item, date(2026, 9, 1), TODAY, _liver_done("2026-11-20"))
    assert due == {
        "from": "2026-09-01",
        "last_done": "2026-11-20",
        "note": "the dated schedule ends 2026-10-13; then as described",
    }


def test_a_baseline_only_item_done_shows_when() -> None:
    due = schedule(_item(first_due_days=0), date(2026, 6, 1), TODAY, _liver_done("2026-05-30"))
    assert due == {"from": "2026-06-01", "last_done": "2026-05-30"}


def test_a_review_is_shown_while_it_lies_ahead() -> None:
    review = _item("benefit", until_days=45)
    assert schedule(review, date(2026, 11, 17), TODAY, {}) == {"from": "2026-11-17", "review_by": "2027-01-01"}
    assert schedule(review, date(2026, 1, 5), TODAY, {}) is None


def test_a_test_the_record_cannot_show_is_dated_on_its_schedule_from_today() -> None:
    item = _item("blood-pressure", first_due_days=0, interval_days=7, until_days=28)
    due = schedule(item, date(2026, 11, 20), TODAY, {})
    assert due == {
        "from": "2026-11-20",
        "next_due": "2026-11-27",
        "overdue": False,
        "then": ["2026-12-04", "2026-12-11", "2026-12-18"],
    }


def _monitoring(result: dict[str, object], agent: str) -> list[dict[str, object]]:
    option = next(o for o in result["options"] if o["agent"] == agent)  # type: ignore[attr-defined]
    return option["monitoring"]  # type: ignore[no-any-return]


def test_the_evaluator_dates_the_monitoring_of_agents_taken_or_ordered_only() -> None:
    result = ENGINE.evaluate(
        record(
            med("dantrolene", dose=25, per_day=1, start=days_ago(7)),
            alt(30, when=days_ago(8)),
            egfr(90),
        ),
        NOW,
    )
    liver = next(m for m in _monitoring(result, "dantrolene") if m["test"] == "liver")
    assert liver["schedule"] == {
        "from": days_ago(7),
        "last_done": days_ago(8),
        "next_due": days_ago(-6),
        "overdue": False,
        "then": [days_ago(-20), days_ago(-34)],
    }
    assert all("schedule" not in m for m in _monitoring(result, "tizanidine"))


def test_once_the_dated_window_has_passed_its_interval_gives_no_date() -> None:
    """Day 45 of dantrolene, last liver tests 25 days ago: the two-weekly interval ended with week 6, so no overdue
    date (DANT-LFT-DUE, which then reads the six-weekly schedule, is silent too)."""
    item = _item(first_due_days=0, interval_days=14, until_days=42)
    due = schedule(item, date(2026, 10, 10), TODAY, _liver_done("2026-10-30"))
    assert due == {
        "from": "2026-10-10",
        "last_done": "2026-10-30",
        "note": "the dated schedule ends 2026-11-21; then as described",
    }


def test_a_later_phase_of_a_schedule_starts_when_the_earlier_one_ends() -> None:
    """Dantrolene's six-weekly liver tests (days 42 to 182): not before day 42, then six weeks after the last."""
    later = _item(first_due_days=42, interval_days=42, until_days=182)
    early = schedule(later, date(2026, 11, 17), TODAY, _liver_done("2026-11-16"))
    assert early is not None and early["next_due"] == "2026-12-29" and early["overdue"] is False
    running = schedule(later, date(2026, 9, 25), TODAY, _liver_done("2026-11-14"))
    assert running is not None and running["next_due"] == "2026-12-26"
    assert running["then"] == ["2027-02-06", "2027-03-20"]


def test_an_item_of_one_jurisdictions_practice_is_shown_only_under_its_reading() -> None:
    """Baclofen's 6-week benefit review is UK practice: listed and dated under ``uk``, not said under ``us``, whether
    the drug is taken or only an option."""
    taken = record(med("baclofen", dose=10, per_day=3, start=days_ago(14)), egfr(90))
    uk = ENGINE.evaluate(taken, NOW, {"jurisdiction": "uk"})
    us = ENGINE.evaluate(taken, NOW, {"jurisdiction": "us"})
    benefit = next(m for m in _monitoring(uk, "baclofen") if m["test"] == "benefit")
    assert benefit["schedule"] == {"from": days_ago(14), "review_by": days_ago(-28)}
    assert [m["test"] for m in _monitoring(us, "baclofen")] == ["sedation", "renal"]
    untreated = record(egfr(90))
    assert [m["test"] for m in _monitoring(ENGINE.evaluate(untreated, NOW), "baclofen")] == ["sedation", "renal"]
    uk_option = _monitoring(ENGINE.evaluate(untreated, NOW, {"jurisdiction": "uk"}), "baclofen")
    assert [m["test"] for m in uk_option] == ["sedation", "renal", "benefit"]
