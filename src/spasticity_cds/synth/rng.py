"""Stable per-patient random streams, independent of PYTHONHASHSEED, the clock and the global RNG."""

from __future__ import annotations

import hashlib
import random


def patient_rng(seed: int, index: int, profile: str) -> random.Random:
    """Return a ``random.Random`` seeded only from (seed, index, profile)."""
    digest = hashlib.sha256(f"{seed}:{index}:{profile}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def chance(rng: random.Random, p: float) -> bool:
    """True with probability ``p``."""
    return rng.random() < p


def clamp(value: float, low: float, high: float) -> float:
    """Limit ``value`` to the closed range [low, high]."""
    return max(low, min(high, value))
