"""The batch on a third-party export (Synthea, via the SMART sample datasets) equals the evaluator patient by
patient, with the export's practitioners, organisations, locations and client log counted, not reported."""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds import api
from spasticity_cds.batch import is_actionable
from spasticity_cds.batch.tasks import build_task

from .batch_helpers import NOW, read_ndjson, run
from .synthea_export import CONTEXT_FILES


def _resources_by_patient(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every patient's resources, grouped here without any batch code."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(folder.glob("*.ndjson*")):
        if path.name == "log.ndjson" or path.name.startswith(CONTEXT_FILES):
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            for line in handle:
                resource = orjson.loads(line)
                if resource["resourceType"] == "Patient":
                    grouped[f"Patient/{resource['id']}"].append(resource)
                    continue
                link = resource.get("subject") or resource.get("patient")
                grouped[link["reference"]].append(resource)
    return grouped


def _expected_tasks(folder: Path) -> dict[str, dict[str, Any]]:
    engine = api.load_knowledge_base()
    manifest = engine.kb.manifest
    knowledge_base = {"name": manifest.name, "version": manifest.version, "digest": engine.kb.digest}
    tasks: dict[str, dict[str, Any]] = {}
    for resources in _resources_by_patient(folder).values():
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        if "deceasedDateTime" in patient:
            continue
        result = api.evaluate(resources, now=NOW, engine=engine)
        for finding in result["findings"]:
            if is_actionable(finding):
                task = build_task(
                    finding,
                    patient_ref=result["patient"],
                    patient=patient,
                    knowledge_base=knowledge_base,
                    authored_on=NOW.isoformat(),
                )
                tasks[task["id"]] = task
    return tasks


@pytest.mark.parametrize("workers", [1, 2])
def test_a_synthea_export_gives_the_evaluators_tasks_patient_by_patient(
    synthea_export: Path, tmp_path: Path, workers: int
) -> None:
    summary = run(synthea_export, tmp_path / "run", workers=workers)
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "run" / "Task.ndjson")}
    expected = _expected_tasks(synthea_export)
    assert expected, "the added orders should meet Synthea's own data in some actionable finding"
    assert tasks == expected
    counts = summary.counts
    assert counts["patients"] == 13
    assert counts["patientsDeceased"] == 3, "Synthea's deceased patients get no Tasks"
    assert counts["patientsEvaluated"] == counts["patientsInScope"] == 10
    assert counts["problems"] == {}
    assert (tmp_path / "run" / "OperationOutcome.ndjson").read_bytes() == b""


def test_practitioners_organisations_locations_are_context_and_the_client_log_is_skipped(
    synthea_export: Path, tmp_path: Path
) -> None:
    summary = run(synthea_export, tmp_path / "run")
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    by_file = {entry["url"]: entry for entry in manifest["input"]["files"]}
    for name in CONTEXT_FILES:
        entry = by_file[f"{name}.000.ndjson.gz"]
        assert entry["context"] == entry["lines"] > 0
        assert (entry["resources"], entry["problems"]) == (0, {})
    assert summary.counts["context"] == sum(by_file[f"{name}.000.ndjson.gz"]["lines"] for name in CONTEXT_FILES)
    assert "log.ndjson" not in by_file
    assert manifest["input"]["skipped"] == [{"url": "log.ndjson", "reason": "the Bulk Data client's export log"}]
