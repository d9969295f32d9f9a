"""Dated monitoring: when a monograph's test or review is next due for one patient, from the drug's start and the
last result on record."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any, Final

from spasticity_cds.engine.facts import Fact, parse_date
from spasticity_cds.knowledge.schema import MonitoringItem

#: The fact whose date is when a test of this kind was last done; only tests whose results the record holds.
LAST_DONE_FACTS: Final = {"liver": "obs.liver_days_since"}
#: At most this many dates are listed after the next one.
FURTHER_DATES: Final = 6


def schedule(
    item: MonitoringItem, started: date | None, today: date, facts: Mapping[str, Fact]
) -> dict[str, Any] | None:
    """When ``item`` is next due for an agent started on ``started`` (today for one being ordered; None when it is
    taken but its start is not on record), or None when the item sets no dates.

    The item's own numbers are the schedule: ``first_due_days`` after the start, then every ``interval_days`` from
    the last result, within ``until_days`` of the start (what follows is the item's text). An item with only
    ``until_days`` is a review by that day (``review_by``), shown while it lies ahead.
    """
    if item.first_due_days is None and not item.interval_days and item.until_days is None:
        return None
    if started is None:
        return {"note": "the start date is not on record, so no date can be set"}
    window_end = started + timedelta(days=item.until_days) if item.until_days is not None else None
    if item.first_due_days is None and not item.interval_days:
        assert window_end is not None
        return {"from": started.isoformat(), "review_by": window_end.isoformat()} if window_end >= today else None
    last = _last_done(item, facts)
    out: dict[str, Any] = {"from": started.isoformat()}
    if last is not None:
        out["last_done"] = last.isoformat()
    due = _next_due(item, started, today, last)
    # Past the window its interval no longer applies (the monitoring rules read the text's schedule then).
    if due is None or (window_end is not None and (due > window_end or today > window_end)):
        if window_end is not None:
            out["note"] = f"the dated schedule ends {window_end.isoformat()}; then as described"
        return out if len(out) > 1 else None
    out["next_due"] = due.isoformat()
    out["overdue"] = due < today
    further = _further(item, max(due, today), window_end)
    if further:
        out["then"] = [when.isoformat() for when in further]
    return out


def _last_done(item: MonitoringItem, facts: Mapping[str, Fact]) -> date | None:
    fact = facts.get(LAST_DONE_FACTS.get(item.test, ""))
    return parse_date(fact.date) if fact is not None and fact.value is not None else None


def _next_due(item: MonitoringItem, started: date, today: date, last: date | None) -> date | None:
    """The next date the test is due: the first one after the start until a result is on record, then one interval
    after the last result; for a test the record cannot show as done, the next scheduled day from today."""
    first = started + timedelta(days=item.first_due_days or 0)
    if item.test in LAST_DONE_FACTS:
        if last is None:
            return first
        # Never before the item's own first day: a later phase of a schedule starts when the earlier one ends.
        return max(last + timedelta(days=item.interval_days), first) if item.interval_days else None
    if not item.interval_days or first >= today:
        return first if first >= today else None
    periods = -(-(today - first).days // item.interval_days)  # whole intervals to reach today, rounded up
    return first + timedelta(days=periods * item.interval_days)


def _further(item: MonitoringItem, after: date, window_end: date | None) -> list[date]:
    if not item.interval_days:
        return []
    dates: list[date] = []
    when = after + timedelta(days=item.interval_days)
    while len(dates) < FURTHER_DATES and (window_end is None or when <= window_end):
        dates.append(when)
        when += timedelta(days=item.interval_days)
    return dates
