"""Shared constants and the frozen clock for the store tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

# A frozen instant in a non-UTC zone, so that any code that drops the offset shows up as a failure.
FROZEN_NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone(timedelta(hours=-5)))


class FrozenClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
