"""Facts: typed values computed once per patient from the indexed record, each with its sources and date."""

from __future__ import annotations

import math
from collections.abc import Iterable
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

    def display(self, boundaries: Iterable[float] | None = None) -> str:
        """The value with its unit and date, as a clinician reads it; a number rounded no further than
        ``boundaries`` allow (``number_text``)."""
        if self.value is None:
            return "missing"
        if isinstance(self.value, bool):
            text = "yes" if self.value else "no"
        elif self.unit == "MAS" and self.value == 1.5:
            text = "1+"
        elif isinstance(self.value, float):
            text = number_text(self.value, boundaries)
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


#: Significant figures a measured number is shown to when the numbers it is compared with are known.
SIGNIFICANT_FIGURES = 3
#: Past this many decimals a number is shown as Python writes it.
MOST_DECIMALS = 12


def number_text(value: float, boundaries: Iterable[float] | None = None) -> str:
    """A measured number as a clinician reads it; the value itself is never changed.

    With ``boundaries`` (every number the knowledge base compares it with; none is fine): to three significant
    figures (a PaCO2 of 51.0042 mmHg converted from kPa reads 51), with as many more decimals as it takes for the
    shown number to stand on the same side of each boundary as the value, or on it only when the value is (49.96
    beside "above 50" reads 49.96, not 50). Without them (None: not known): to two decimals, unless that rounds it
    onto a round number it is not (an eGFR of 29.999 must not read as 30): then to six significant digits.
    """
    if boundaries is None:
        text = _fixed(value, 2)
        if float(text) != value and float(text) == round(value, 1):
            return f"{value:.6g}"
        return text
    limits = tuple(boundaries)
    magnitude = math.floor(math.log10(abs(value))) if value else 0
    decimals = max(0, SIGNIFICANT_FIGURES - 1 - magnitude)
    while decimals <= MOST_DECIMALS:
        text = _fixed(value, decimals)
        shown = float(text)
        if all((shown > limit) - (shown < limit) == (value > limit) - (value < limit) for limit in limits):
            return text
        decimals += 1
    return repr(value)


def _fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
