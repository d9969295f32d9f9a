"""Cohort size profiles: how long a synthetic course is and how densely it is observed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Profile:
    """Knobs that set the number of resources generated per patient."""

    name: str
    target_resources: int
    min_visits: int
    max_visits: int
    visit_interval_days: int
    lab_every: int
    vitals_every: int
    """Weight, heart rate, SpO2 and pain score every k-th visit; 0 means never."""


PROFILES: Final[dict[str, Profile]] = {
    "lean": Profile("lean", 70, 4, 6, 91, 2, 0),
    "typical": Profile("typical", 165, 9, 15, 84, 2, 4),
    "heavy": Profile("heavy", 1000, 44, 64, 30, 1, 1),
}


def get_profile(name: str) -> Profile:
    """Return the named profile or raise ``ValueError`` listing the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r}; choose one of: {valid}") from None
