"""Facts: typed values computed once per patient from the indexed record, each with its sources and date."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec

Value = float | int | str | bool


class Fact(msgspec.Struct, gc=False):
    """One named value about the patient; ``value is None`` means missing, ``stale`` means too old to use.

    Read-only by contract: facts of absent concepts are shared between patients. Not declared frozen only so that
    ``to_dict`` can memoise; a msgspec struct because a patient's evaluation builds dozens of them.
    """

    name: str
    value: Value | None
    unit: str | None = None
    date: str | None = None
    stale: bool = False
    sources: tuple[str, ...] = ()
    note: str | None = None
    dict_memo: dict[str, Any] | None = None

    @property
    def usable(self) -> bool:
        return self.value is not None and not self.stale

    def display(self) -> str:
        """The value with its unit and date, as a clinician reads it."""
        if self.value is None:
            return "missing"
        if isinstance(self.value, bool):
            text = "yes" if self.value else "no"
        elif self.unit == "MAS" and self.value == 1.5:
            text = "1+"
        elif isinstance(self.value, float):
            text = number_text(self.value)
        else:
            text = str(self.value)
        if self.unit and self.unit != "MAS":  # a Modified Ashworth grade reads as the grade alone
            text = f"{text} {self.unit}"
        if self.date:
            text = f"{text} ({self.date}{', stale' if self.stale else ''})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The fact as it appears in the result contract (built once per fact; results are read-only)."""
        if self.dict_memo is None:
            self.dict_memo = self._build_dict()
        return self.dict_memo

    def _build_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value}
        if self.unit:
            out["unit"] = self.unit
        if self.date:
            out["date"] = self.date
        if self.stale:
            out["stale"] = True
        if self.sources:
            out["sources"] = list(self.sources)
        if self.note:
            out["note"] = self.note
        return out


def missing(name: str, note: str | None = None) -> Fact:
    """A fact with no value: rules that need it cannot decide and say so."""
    return Fact(name, None, note=note)


def parse_date(value: Any) -> date | None:
    """The calendar date of a FHIR date, dateTime or instant, or None when unreadable."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return date(int(value), 7, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 15)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def days_between(earlier: date, now: datetime) -> int:
    """Whole days from ``earlier`` to the evaluation instant (its local calendar date)."""
    return (now.date() - earlier).days


def number_text(value: float) -> str:
    """A measured number to two decimals, unless that rounds it onto a round number it is not (an eGFR of 29.999
    must not read as 30 beside a rule about "below 30"): then to six significant digits."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    if float(text) != value and float(text) == round(value, 1):
        return f"{value:.6g}"
    return text
