"""The scan's fast path agrees with ``problems.classify`` (the Spark engine's function) on every line it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds.batch import problems
from spasticity_cds.batch.scan import fast_key

from .batch_helpers import BAD_OBSERVATION_LINES

ODD_LINES = [
    *BAD_OBSERVATION_LINES,
    b'{"resourceType": "Observation", "subject": {"reference": "https://ehr.example/fhir/Patient/p1"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/p1/_history/2"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/p1\\t"}}',
    b'{"resourceType": "Patient", "id": "p1\\t"}',
    b'{"resourceType": "Observation", "subject": {"reference": ""}, "patient": {"reference": "Patient/p2"}}',
    b'{"resourceType": "Observation", "subject": {"display": "x"}, "patient": {"reference": "Patient/p2"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Group/g1"}}',
    b'{"resourceType": "Observation", "subject": "Patient/p1"}',
    b'{"resourceType": "Observation", "subject": {"reference": 5}}',
    b'{"resourceType": "Observation", "subject": null, "beneficiary": {"reference": "Patient/p3"}}',
    b'{"resourceType": "Coverage", "beneficiary": {"reference": "Patient/p3"}}',
    b'{"resourceType": "Patient", "id": "p1"}',
    b'{"resourceType": "Patient", "id": ""}',
    b'{"resourceType": "Patient", "id": 7}',
    b'{"resourceType": "Patient"}',
    b'{"resourceType": "MedicationRequest", "subject": {"reference": "Patient/p1"}, '
    b'"medicationReference": {"reference": "Medication/m1"}}',
    b'{"resourceType": "Medication", "id": "m1"}',
    b'{"resourceType": "Observation", "resourceType": "Foo", "subject": {"reference": "Patient/p1"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/\xc3\xa9"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/\\u00e9"}}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}, "note": "\xff"}',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}} trailing',
    b'  {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}  ',
    b'{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 1e999}}',
    b'\xef\xbb\xbf{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}',
    b"\t",
    b"",
]


def _agrees(raw: bytes) -> None:
    key = fast_key(raw)
    if key is None:
        return  # the scan asks problems.classify itself
    expected = problems.classify(raw)
    assert expected.status == problems.OK, raw
    assert expected.medication_ref is None, raw
    if expected.resource_type == "Patient":
        assert key == f"{expected.key}\t", raw  # a Patient's key carries the mark the scan counts them by
    else:
        assert key == expected.key, raw


@pytest.mark.parametrize("raw", ODD_LINES)
def test_fast_path_agrees_on_odd_lines(raw: bytes) -> None:
    _agrees(raw)


def test_fast_path_agrees_on_a_whole_cohort_and_takes_most_lines(clean_cohort: Path) -> None:
    lines = [line for path in sorted(clean_cohort.glob("*.ndjson")) for line in path.read_bytes().splitlines()]
    for raw in lines:
        _agrees(raw)
    assert sum(fast_key(raw) is not None for raw in lines) > 0.9 * len(lines)


def test_keys_ending_in_a_tab_keep_their_resources_together(tmp_path: Path) -> None:
    from spasticity_cds.batch.inputs import discover
    from spasticity_cds.batch.local import grouped

    source = tmp_path / "export"
    source.mkdir()
    (source / "Observation.ndjson").write_bytes(
        b'{"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1\\t"}}\n'
        b'{"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p2"}}\n'
    )
    (source / "Patient.ndjson").write_bytes(
        b'{"resourceType": "Patient", "id": "p1\\t"}\n{"resourceType": "Patient", "id": "p2"}\n'
    )
    (tmp_path / "work").mkdir()
    groups = {key: len(lines) for key, lines in grouped(discover(source).files, tmp_path / "work")}
    assert groups == {"Patient/p1\t": 2, "Patient/p2": 2}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"resourceType": "Practitioner", "id": "dr-1"}', problems.CONTEXT),
        (
            b'{"resourceType": "Location", "id": "l-1", "managingOrganization": {"reference": "Organization/o"}}',
            "context",
        ),
        (b'{"resourceType": "Observation", "id": "o-1"}', problems.NO_PATIENT),
        (b'{"resourceType": "Group", "id": "g-1"}', problems.NO_PATIENT),
        (b'{"resourceType": "Medication", "id": "m-1"}', problems.OK),
    ],
)
def test_resources_no_patient_owns_are_context_only_for_the_who_and_where_types(raw: bytes, status: str) -> None:
    classified = problems.classify(raw)
    assert (classified.status, classified.key) == (status, None)
    assert fast_key(raw) is None


@pytest.mark.parametrize(
    ("targets", "key"),
    [
        ([{"reference": "Encounter/e1"}, {"reference": "Patient/p1"}], "Patient/p1"),
        ([{"reference": "Patient/p1/_history/3"}], "Patient/p1"),
        ([{"reference": "https://ehr.example/fhir/Patient/p1/_history/3"}], "Patient/p1"),
        (["Patient/p1", {"display": "no reference"}, {"reference": "Patient/p2"}], "Patient/p2"),
        ([{"reference": "Group/g1"}], None),
        ({"reference": "Patient/p1"}, None),
    ],
)
def test_a_provenance_belongs_to_the_first_patient_among_its_targets(targets: Any, key: str | None) -> None:
    raw = orjson.dumps({"resourceType": "Provenance", "id": "pv", "target": targets})
    classified = problems.classify(raw)
    assert (classified.status, classified.key) == (problems.NO_PATIENT if key is None else problems.OK, key)
    assert fast_key(raw) is None


def test_version_specific_patient_and_medication_references_are_read_as_their_resources() -> None:
    raw = orjson.dumps(
        {
            "resourceType": "MedicationRequest",
            "id": "mr",
            "subject": {"reference": "Patient/p1/_history/2"},
            "medicationReference": {"reference": "https://ehr.example/fhir/Medication/cipro/_history/4"},
        }
    )
    classified = problems.classify(raw)
    assert (classified.status, classified.key, classified.medication_ref) == (
        problems.OK,
        "Patient/p1",
        "Medication/cipro",
    )
    assert fast_key(raw) is None


def test_a_patient_without_an_id_is_reported_as_such_not_as_unlinked() -> None:
    classified = problems.classify(b'{"resourceType": "Patient", "name": [{"family": "NoId"}]}')
    assert (classified.status, classified.resource_type) == (problems.NO_PATIENT, "Patient")
    message = problems.describe(classified.status, classified.resource_type, b"")
    assert message.startswith("Patient has no id")
    assert "not linked" not in message


def test_a_urn_uuid_patient_link_keys_the_patient_of_that_id() -> None:
    raw = b'{"resourceType": "Condition", "id": "c", "subject": {"reference": "urn:uuid:9f1c-0a"}}'
    classified = problems.classify(raw)
    assert (classified.status, classified.key) == (problems.OK, "Patient/9f1c-0a")
    assert fast_key(raw) is None


@pytest.mark.parametrize(
    ("reference", "identifier"),
    [
        ("Patient?identifier=urn:m|1", "urn:m|1"),
        ("https://ehr.example/fhir/Patient?identifier=http://h.org%7Cm-1", "http://h.org|m-1"),
    ],
)
def test_a_conditional_patient_link_waits_for_the_patient_its_identifier_finds(reference: str, identifier: str) -> None:
    raw = orjson.dumps({"resourceType": "Condition", "id": "c", "subject": {"reference": reference}})
    classified = problems.classify(raw)
    assert (classified.status, classified.key, classified.identifier) == (problems.OK, None, identifier)
    assert fast_key(raw) is None
