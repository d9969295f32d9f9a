"""The batch on third-party Bulk exports (Synthea's, via the SMART sample datasets; the ONC (g)(10) test kit's)
equals the evaluator patient by patient, with practitioners, organisations, locations and the client log counted,
not reported."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from .batch_helpers import evaluator_tasks, read_ndjson, run
from .synthea_export import CONTEXT_FILES, als_with, by_patient, resources_of, vendored


@pytest.mark.parametrize("workers", [1, 2])
def test_a_synthea_export_gives_the_evaluators_tasks_patient_by_patient(
    synthea_export: Path, tmp_path: Path, workers: int
) -> None:
    summary = run(synthea_export, tmp_path / "run", workers=workers)
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "run" / "Task.ndjson")}
    expected = evaluator_tasks(by_patient(synthea_export)[0].values())
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
    skipped = {entry["url"]: entry["reason"] for entry in manifest["input"]["skipped"]}
    assert skipped["log.ndjson"] == "the Bulk Data client's export log"
    assert set(skipped) == {"log.ndjson", "LICENSE", "PROVENANCE.md"}  # the vendored copy's notes, not FHIR


def test_the_onc_g10_bulk_fixtures_give_the_evaluators_tasks(tmp_path: Path) -> None:
    export = vendored("onc-g10-bulk", tmp_path / "export")
    living = next(
        resource["id"]
        for resource in resources_of(export)
        if resource["resourceType"] == "Patient" and "deceasedDateTime" not in resource
    )
    added = als_with(living, "onc", order=1)
    (export / "Added.ndjson").write_bytes(b"".join(orjson.dumps(resource) + b"\n" for resource in added))
    summary = run(export, tmp_path / "run")
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "run" / "Task.ndjson")}
    expected = evaluator_tasks(by_patient(export)[0].values())
    assert expected, "tizanidine without liver tests should put the living patient on the worklist"
    assert tasks == expected
    counts = summary.counts
    assert (counts["patients"], counts["patientsDeceased"], counts["patientsInScope"]) == (2, 1, 1)
    assert counts["context"] == 5, "the Locations"
    assert counts["problems"] == {"no-patient": 1}, "the one Medication no order references"
