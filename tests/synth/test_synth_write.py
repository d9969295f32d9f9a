"""Tests for write_cohort: both layouts, gzip, shards, manifests and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds.errors import InputError
from spasticity_cds.synth import CohortSummary, generate_patient, write_cohort

from .synth_helpers import CLINICAL_TYPES, read_lines, read_ndjson

FHIR_BASE = "https://synth.spasticity-cds.org/fhir/"


def bulk_resources(out: Path) -> dict[str, list[dict[str, Any]]]:
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    return {item["type"]: read_ndjson(out / item["url"]) for item in manifest["output"]}


def check_references(resources: list[dict[str, Any]]) -> None:
    patients = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    assert patients
    for r in resources:
        assert r["resourceType"] and r["id"]
        if r["resourceType"] in CLINICAL_TYPES:
            assert r["subject"]["reference"].removeprefix("Patient/") in patients


@pytest.mark.parametrize("gz", [False, True])
def test_bundles_layout(tmp_path: Path, gz: bool) -> None:
    summary = write_cohort(tmp_path, n=6, profile="lean", seed=3, fmt="bundles", gzip=gz)
    path = tmp_path / ("bundles.ndjson.gz" if gz else "bundles.ndjson")
    assert summary.files == [path]
    bundles = read_ndjson(path)
    assert len(bundles) == summary.patients == 6
    counted: dict[str, int] = {}
    for index, bundle in enumerate(bundles):
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        assert bundle["id"] == f"b-3-{index}"
        resources = [entry["resource"] for entry in bundle["entry"]]
        assert resources[0] == {**resources[0], "resourceType": "Patient", "id": f"p-3-{index}"}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"{FHIR_BASE}{resource['resourceType']}/{resource['id']}"
            counted[resource["resourceType"]] = counted.get(resource["resourceType"], 0) + 1
        check_references(resources)
    assert counted == summary.resource_counts


@pytest.mark.parametrize("gz", [False, True])
def test_bulk_layout_and_manifest(tmp_path: Path, gz: bool) -> None:
    summary = write_cohort(tmp_path, n=8, profile="typical", seed=4, fmt="bulk", gzip=gz)
    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    assert set(manifest) >= {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert manifest["request"].startswith(FHIR_BASE + "$export")
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    suffix = ".ndjson.gz" if gz else ".ndjson"
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "manifest.json")
    assert written == sorted(item["url"] for item in manifest["output"])
    for item in manifest["output"]:
        assert item["url"] == item["type"] + suffix
        rows = read_ndjson(tmp_path / item["url"])
        assert len(rows) == item["count"] == summary.resource_counts[item["type"]]
        assert {r["resourceType"] for r in rows} == {item["type"]}
    assert {"Patient", "Condition", "Observation", "MedicationRequest", "Encounter"} <= set(summary.resource_counts)
    check_references([r for rows in bulk_resources(tmp_path).values() for r in rows])


def test_patient_alone_equals_patient_in_a_run(tmp_path: Path) -> None:
    write_cohort(tmp_path / "all", n=6, profile="lean", seed=8, fmt="bundles")
    write_cohort(tmp_path / "one", n=1, start=4, profile="lean", seed=8, fmt="bundles")
    full = read_lines(tmp_path / "all" / "bundles.ndjson")
    alone = read_lines(tmp_path / "one" / "bundles.ndjson")
    assert alone == [full[4]]
    entries = [e["resource"] for e in orjson.loads(alone[0])["entry"]]
    assert entries == generate_patient(8, 4, "lean")


def test_bulk_shards_concatenate_to_the_full_run(tmp_path: Path) -> None:
    write_cohort(tmp_path / "all", n=10, profile="lean", seed=2, fmt="bulk")
    write_cohort(tmp_path / "a", n=4, profile="lean", seed=2, fmt="bulk")
    write_cohort(tmp_path / "b", n=6, start=4, profile="lean", seed=2, fmt="bulk")
    for path in (tmp_path / "all").glob("*.ndjson"):
        shards = [tmp_path / shard / path.name for shard in ("a", "b")]
        joined = b"".join(p.read_bytes() for p in shards if p.exists())
        assert joined == path.read_bytes(), path.name


def test_ids_unique_across_shards(tmp_path: Path) -> None:
    write_cohort(tmp_path / "a", n=5, profile="lean", seed=2, fmt="bulk")
    write_cohort(tmp_path / "b", n=5, start=5, profile="lean", seed=2, fmt="bulk")
    ids = [{(r["resourceType"], r["id"]) for rows in bulk_resources(tmp_path / s).values() for r in rows} for s in "ab"]
    assert ids[0] and ids[1] and not ids[0] & ids[1]


def test_output_is_reproducible_byte_for_byte(tmp_path: Path) -> None:
    for name in ("x", "y"):
        write_cohort(tmp_path / name, n=3, profile="lean", seed=1, fmt="bulk", gzip=True)
    for path in (tmp_path / "x").iterdir():
        assert path.read_bytes() == (tmp_path / "y" / path.name).read_bytes()


def test_progress_reports_patients_written(tmp_path: Path) -> None:
    seen: list[int] = []
    write_cohort(tmp_path, n=4, profile="lean", seed=1, fmt="bundles", progress=seen.append)
    assert seen == [1, 2, 3, 4]


def test_zero_patients(tmp_path: Path) -> None:
    summary = write_cohort(tmp_path, n=0, profile="lean", seed=1, fmt="bulk")
    assert summary.patients == 0 and summary.total_resources == 0
    assert orjson.loads((tmp_path / "manifest.json").read_bytes())["output"] == []


def test_summary_totals(tmp_path: Path) -> None:
    summary = write_cohort(tmp_path, n=3, profile="lean", seed=1, fmt="bundles")
    assert isinstance(summary, CohortSummary)
    expected = sum(len(generate_patient(1, i, "lean")) for i in range(3))
    assert summary.total_resources == expected
    assert summary.resource_counts["Patient"] == 3


def test_out_dir_that_is_a_file_is_an_input_error(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        write_cohort(target, n=1, profile="lean", seed=1, fmt="bulk")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "giant"}, "unknown profile"),
        ({"fmt": "csv"}, "unknown format"),
        ({"n": -1}, "negative"),
        ({"start": -3}, "negative"),
    ],
)
def test_bad_arguments_are_input_errors(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"n": 1, "profile": "lean", "seed": 1, "fmt": "bulk", **kwargs}
    with pytest.raises(InputError, match=message):
        write_cohort(tmp_path, **args)


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er"
    write_cohort(out, n=1, profile="lean", seed=1, fmt="bulk")
    assert (out / "manifest.json").is_file()


def test_rerun_replaces_the_manifest(tmp_path: Path) -> None:
    write_cohort(tmp_path, n=3, profile="lean", seed=1, fmt="bulk")
    write_cohort(tmp_path, n=2, profile="lean", seed=1, fmt="bulk")
    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    patients = next(item for item in manifest["output"] if item["type"] == "Patient")
    assert patients["count"] == 2 == len(read_lines(tmp_path / "Patient.ndjson"))
