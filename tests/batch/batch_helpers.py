"""Helpers for the batch tests: a fixed non-UTC clock, bad lines to inject, NDJSON readers, a batch runner."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from spasticity_cds import api
from spasticity_cds.api import PatientInput
from spasticity_cds.batch import BatchOptions, BatchSummary, is_actionable, run_batch
from spasticity_cds.batch.tasks import build_task
from spasticity_cds.engine.facts import Value

NOW = datetime(2026, 11, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
SEED = 3
N = 30
#: What the clean cohort reports: synth repeats some resources of 11 of its patients, as servers do.
CLEAN_PROBLEMS = {"duplicate": 11}

#: Bad lines appended to Observation.ndjson; the tests look their line numbers up by their marker text.
BAD_OBSERVATION_LINES = [
    b"not json at all",
    b"[1, 2, 3]",
    b"",
    b'{"resourceType": "Foo", "id": "unknown-1", "subject": {"reference": "Patient/p-3-0"}}',
    b'{"resourceType": "Observation", "id": "orphan-1", "status": "final", "code": {"text": "no subject"}}',
    b'{"resourceType": "Observation", "id": "ghost-1", "status": "final", "subject": {"reference": "Patient/ghost"}}',
    b'{"resourceType": "Observation", "id": "bad-utf8", "subject": {"reference": "Patient/p-3-1"}, "note": "\xff"}',
    b'{"id": "no-type"}',
]


def line_of(path: Path, marker: bytes) -> int:
    """1-based number of the first line of ``path`` containing ``marker``."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of an NDJSON file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def reported(out: Path, category: str) -> dict[str, str]:
    """A run's OperationOutcomes of one problem category: diagnostics by location."""
    return {
        outcome["issue"][0]["location"][0]: outcome["issue"][0]["diagnostics"]
        for outcome in read_ndjson(out / "OperationOutcome.ndjson")
        if outcome["issue"][0]["details"]["coding"][0]["code"] == category
    }


def run(source: Path, out: Path, **options: Any) -> BatchSummary:
    """Run the batch with the fixed clock (unless ``now`` is given)."""
    return run_batch(BatchOptions(source=source, out=out, **({"now": NOW} | options)))


def evaluator_tasks(
    patients: Iterable[PatientInput], settings: Mapping[str, Value] | None = None
) -> dict[str, dict[str, Any]]:
    """The Tasks of running the evaluator on each patient's data directly (no batch code path) under ``settings``
    (overrides of the defaults), by id; a patient whose record carries a death is left out, as the batch policy
    says."""
    engine = api.load_knowledge_base()
    manifest = engine.kb.manifest
    knowledge_base = {"name": manifest.name, "version": manifest.version, "digest": engine.kb.digest}
    tasks: dict[str, dict[str, Any]] = {}
    for data in patients:
        record = api.read_patient(data)
        if record.patient.get("deceasedDateTime") or record.patient.get("deceasedBoolean"):
            continue
        result = api.evaluate(record, now=NOW, engine=engine, settings=settings)
        for finding in filter(is_actionable, result["findings"]):
            task = build_task(
                finding,
                patient_ref=result["patient"],
                patient=record.patient,
                knowledge_base=knowledge_base,
                authored_on=NOW.isoformat(),
                settings=settings,
            )
            tasks[task["id"]] = task
    return tasks
