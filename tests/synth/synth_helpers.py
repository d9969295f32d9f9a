"""Shared helpers for the synthetic-data tests."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson

CLINICAL_TYPES = {"Condition", "Observation", "MedicationRequest", "Procedure", "Encounter"}


def read_lines(path: Path) -> list[bytes]:
    """The non-empty lines of an NDJSON file, gzip or plain."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert data.endswith(b"\n")
    return [line for line in data.split(b"\n") if line]


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """Parse every line of an NDJSON file (each line must be a JSON object)."""
    rows = [orjson.loads(line) for line in read_lines(path)]
    assert all(isinstance(row, dict) for row in rows)
    return rows
