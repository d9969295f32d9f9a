"""Shared fixtures for the batch tests: small synthetic Bulk cohorts, clean and with bad lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from spasticity_cds.synth import write_cohort

from .batch_helpers import BAD_OBSERVATION_LINES, SEED, N
from .synthea_export import write_synthea_bundles, write_synthea_export


@pytest.fixture(scope="session")
def clean_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 lean synthetic patients as a Bulk Data export (one NDJSON per type plus manifest.json)."""
    out = tmp_path_factory.mktemp("clean") / "export"
    write_cohort(out, n=N, profile="lean", seed=SEED, fmt="bulk")
    return out


@pytest.fixture(scope="session")
def bad_cohort(clean_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean cohort plus malformed lines, unknown types, orphans, a patient-less group and shared Medications."""
    out = tmp_path_factory.mktemp("bad") / "export"
    shutil.copytree(clean_cohort, out)
    with (out / "Observation.ndjson").open("ab") as handle:
        handle.write(b"\n".join(BAD_OBSERVATION_LINES) + b"\n")
    patients = out / "Patient.ndjson"  # a byte-order mark, which some exporters write, is dropped by both engines
    patients.write_bytes(b"\xef\xbb\xbf" + patients.read_bytes())
    medications = [
        {
            "resourceType": "Medication",
            "id": "shared-baclofen",
            "code": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1292"}],
                "text": "Baclofen",
            },
        },
        {"resourceType": "Medication", "id": "unused-med", "code": {"text": "Unused"}},
    ]
    (out / "Medication.ndjson").write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in medications))
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr-shared-1",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/shared-baclofen"},
        "subject": {"reference": "https://ehr.example/fhir/Patient/p-3-2"},
        "authoredOn": "2026-09-01",
    }
    with (out / "MedicationRequest.ndjson").open("ab") as handle:
        handle.write(orjson.dumps(request) + b"\n")
    procedures = out / "Procedure.ndjson"  # Windows line ends, and a lone CR inside a line (JSON whitespace)
    lines = procedures.read_bytes().splitlines()
    lines[0] = lines[0].replace(b'","', b'",\r"', 1)
    procedures.write_bytes(b"".join(line + b"\r\n" for line in lines))
    (out / "manifest.json").unlink()
    return out


@pytest.fixture(scope="session")
def synthea_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vendored Synthea export of 13 patients, each given ALS and two in three an antispastic order."""
    return write_synthea_export(tmp_path_factory.mktemp("synthea") / "export")


@pytest.fixture(scope="session")
def bundle_folder(synthea_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same patients as Synthea's default exporter writes them: one transaction Bundle per patient."""
    return write_synthea_bundles(synthea_export, tmp_path_factory.mktemp("bundles") / "in")


@pytest.fixture
def invalid_utf8_export(tmp_path: Path) -> Path:
    """Lines with invalid UTF-8: more than the report lists one by one in Observation.ndjson (with one valid line
    among them), a Latin-1 name in Patient.ndjson, and in a line that holds a whole Bundle."""
    out = tmp_path / "utf8"
    out.mkdir()
    (out / "Patient.ndjson").write_bytes(
        b'{"resourceType": "Patient", "id": "p1", "gender": "male", "name": [{"text": "Jos\xe9"}]}\n'
        b'{"resourceType": "Patient", "id": "p2"}\n'
    )
    observation = b'{"resourceType": "Observation", "id": "o-%d", "status": "final", "subject": {"reference": '
    bad = [observation % number + b'"Patient/p1"}, "note": [{"text": "\xff\xfe"}]}' for number in range(102)]
    good = observation % 999 + b'"Patient/p1"}}'
    (out / "Observation.ndjson").write_bytes(b"\n".join([good, *bad]) + b"\n")
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p3", "name": [{"text": "BAD"}]}},
            {"resource": {"resourceType": "Observation", "id": "o-p3", "subject": {"reference": "Patient/p3"}}},
        ],
    }
    (out / "Bundles.ndjson").write_bytes(orjson.dumps(bundle).replace(b"BAD", b"\xc3(") + b"\n")
    return out


@pytest.fixture
def odd_links_export(tmp_path: Path) -> Path:
    """Patient d1 twice (the second copy with another birthDate), its Condition again in a second file, one linked
    by urn:uuid, one by a conditional reference that finds it, one by one that finds no one, and a Patient without
    an id."""
    folder = tmp_path / "odd-links"
    folder.mkdir()
    patient = {
        "resourceType": "Patient",
        "id": "d1",
        "birthDate": "1960-01-01",
        "identifier": [{"system": "urn:mrn", "value": "1"}],
    }
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/d1"}}
    by_urn = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "urn:uuid:d1"}}
    by_search = {"resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient?identifier=urn:mrn|1"}}
    lost = {"resourceType": "Condition", "id": "c4", "subject": {"reference": "Patient?identifier=urn:mrn|404"}}
    (folder / "Patient.ndjson").write_bytes(
        orjson.dumps(patient)
        + b"\n"
        + orjson.dumps({**patient, "birthDate": "1950-05-05"})
        + b"\n"
        + orjson.dumps({"resourceType": "Patient", "name": [{"family": "NoId"}]})
        + b"\n"
    )
    (folder / "Condition.ndjson").write_bytes(
        b"".join(orjson.dumps(c) + b"\n" for c in (condition, by_urn, by_search, lost))
    )
    (folder / "More.ndjson").write_bytes(orjson.dumps(condition) + b"\n")
    return folder
