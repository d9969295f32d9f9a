"""Reading FHIR inputs: Bundle shapes, prefetch maps, NDJSON, bad input, patients, references, duplicates."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from spasticity_cds.api import read_patient
from spasticity_cds.errors import InputError
from spasticity_cds.fhir.model import Resource, concept_of, from_json
from spasticity_cds.fhir.parse import parse_bytes
from spasticity_cds.fhir.record import PatientRecord

PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01", "gender": "female"}


def condition(cid: str, subject: str = "Patient/p1") -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": subject}, "code": {"text": "ALS"}}


def bundle(*resources: dict[str, Any], kind: str | None = "collection", urn: bool = False) -> dict[str, Any]:
    entries = [
        {
            "fullUrl": f"urn:uuid:{r['id']}" if urn else f"https://fhir.example.org/{r['resourceType']}/{r['id']}",
            "resource": r,
        }
        for r in resources
    ]
    out: dict[str, Any] = {"resourceType": "Bundle", "entry": entries}
    if kind:
        out["type"] = kind
    return out


def read(document: Any) -> PatientRecord:
    return read_patient(orjson.dumps(document), source="test.json")


@pytest.mark.parametrize("kind", ["collection", "searchset", "transaction", "batch-response", None])
def test_bundles_with_and_without_a_type(kind: str | None) -> None:
    rec = read(bundle(PATIENT, condition("c1"), kind=kind))
    assert rec.patient_reference == "Patient/p1"
    assert [r.id for r in rec.of_type("Condition")] == ["c1"]


def test_a_searchset_page_holding_a_nested_bundle() -> None:
    inner = bundle(condition("c2"), condition("c3"), kind="searchset")
    outer = bundle(PATIENT, condition("c1"), kind="searchset")
    outer["entry"].append({"resource": inner})
    rec = read(outer)
    assert sorted(r.id for r in rec.of_type("Condition")) == ["c1", "c2", "c3"]


def test_a_prefetch_map_with_null_and_operation_outcome() -> None:
    prefetch = {
        "patient": PATIENT,
        "conditions": bundle(condition("c1"), kind="searchset"),
        "medications": None,
        "observations": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]},
    }
    rec = read(prefetch)
    assert [r.id for r in rec.of_type("Condition")] == ["c1"]
    assert rec.of_type("OperationOutcome") == []
    hook_request = {"hook": "patient-view", "hookInstance": "x", "context": {}, "prefetch": prefetch}
    assert [r.id for r in read(hook_request).of_type("Condition")] == ["c1"]


def test_a_prefetch_key_that_is_not_fhir_is_an_input_error() -> None:
    with pytest.raises(InputError, match="prefetch key 'labs' does not hold a FHIR resource"):
        read({"patient": PATIENT, "labs": {"rows": 3}})


def test_ndjson_lines_and_blank_lines() -> None:
    lines = b"\n".join(orjson.dumps(r) for r in (PATIENT, condition("c1"))) + b"\n\n" + orjson.dumps(condition("c2"))
    rec = read_patient(lines, source="bulk.ndjson")
    assert len(rec.of_type("Condition")) == 2


def test_ndjson_lines_end_at_lf_only_and_a_windows_line_end_is_read_too() -> None:
    inner_cr = orjson.dumps(condition("c1")).replace(b'","', b'",\r"', 1)  # a lone CR is JSON whitespace
    data = orjson.dumps(PATIENT) + b"\r\n" + inner_cr + b"\r\n" + orjson.dumps(condition("c2")) + b"\n"
    rec = read_patient(data, source="bulk.ndjson")
    assert [r.id for r in rec.of_type("Condition")] == ["c1", "c2"]


def test_ndjson_with_a_broken_line_names_the_line() -> None:
    data = orjson.dumps(PATIENT) + b"\n{not json\n"
    with pytest.raises(InputError, match="line 2 is not valid JSON") as raised:
        parse_bytes(data, source="bulk.ndjson")
    assert raised.value.where == "bulk.ndjson"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the input is empty"),
        (b"   \n ", "the input is empty"),
        (b'{"resourceType": ', "not valid JSON"),
        (b"42", "expected a FHIR resource"),
        (b'{"name": "x", "age": 3}', "not FHIR"),
    ],
)
def test_unreadable_input(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        read_patient(data, source="upload.json")
    assert raised.value.where == "upload.json"
    assert raised.value.exit_code == 2 and raised.value.http_status == 400


def test_no_patient_and_two_patients() -> None:
    with pytest.raises(InputError, match="no Patient resource"):
        read(bundle(condition("c1")))
    other = {**PATIENT, "id": "p2"}
    with pytest.raises(InputError, match="2 Patient resources in one input") as raised:
        read(bundle(PATIENT, other))
    assert "batch" in str(raised.value)


def test_urn_uuid_references_link_resources_to_the_patient() -> None:
    pid = "6d1e2b7a-0000-4000-8000-000000000001"
    patient = {**PATIENT, "id": pid}
    medication = {"resourceType": "Medication", "id": "m-uuid", "code": {"text": "Baclofen 10 mg tablet"}}
    request = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"urn:uuid:{pid}"},
        "medicationReference": {"reference": "urn:uuid:m-uuid"},
    }
    rec = read(
        bundle(patient, medication, request, condition("c1", subject=f"urn:uuid:{pid}"), kind="transaction", urn=True)
    )
    assert rec.other_patient_resources == 0
    assert [r.id for r in rec.of_type("MedicationRequest")] == ["r1"]
    assert rec.normalise("urn:uuid:m-uuid") == "Medication/m-uuid"
    assert rec.resolve("urn:uuid:m-uuid") == from_json(medication, Resource)
    assert rec.resolve("https://fhir.example.org/r4/Medication/m-uuid") == from_json(medication, Resource)


def test_an_entry_without_resource_id_takes_it_from_the_full_url() -> None:
    document = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:p-123", "resource": {"resourceType": "Patient", "gender": "male"}},
            {
                "fullUrl": "urn:uuid:c-9",
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": "urn:uuid:p-123"},
                    "code": {"text": "ALS"},
                },
            },
        ],
    }
    rec = read(document)
    assert rec.patient_reference == "Patient/p-123"
    assert rec.resolve("urn:uuid:c-9") is not None


def test_absolute_references_to_the_patient() -> None:
    rec = read(bundle(PATIENT, condition("c1", subject="https://fhir.example.org/r4/Patient/p1")))
    assert len(rec.of_type("Condition")) == 1


def test_resources_of_another_patient_are_ignored_and_counted() -> None:
    rec = read(bundle(PATIENT, condition("c1"), condition("c2", subject="Patient/someone-else")))
    assert [r.id for r in rec.of_type("Condition")] == ["c1"]
    assert rec.other_patient_resources == 1


def test_a_named_patient_is_chosen_among_several_and_the_others_records_left_out() -> None:
    other = {**PATIENT, "id": "p2"}
    document = orjson.dumps(bundle(PATIENT, other, condition("c1"), condition("c2", subject="Patient/p2")))
    rec = read_patient(document, source="test.json", patient_id="p1")
    assert rec.patient["id"] == "p1" and [r.id for r in rec.of_type("Patient")] == ["p1"]
    assert [r.id for r in rec.of_type("Condition")] == ["c1"]
    assert rec.other_patient_resources == 2  # the other Patient and its Condition
    with pytest.raises(InputError, match="no Patient resource with id 'p3'"):
        read_patient(document, source="test.json", patient_id="p3")


def test_version_specific_references_find_their_resources() -> None:
    medication = {"resourceType": "Medication", "id": "cipro", "code": {"text": "ciprofloxacin"}}
    order = {
        "resourceType": "MedicationRequest",
        "id": "mr",
        "status": "active",
        "subject": {"reference": "Patient/p1/_history/2"},
        "medicationReference": {"reference": "Medication/cipro/_history/4"},
    }
    rec = read(bundle(PATIENT, medication, order))
    assert rec.other_patient_resources == 0 and [r.id for r in rec.of_type("MedicationRequest")] == ["mr"]
    resolved = rec.resolve("Medication/cipro/_history/4")
    assert resolved is not None and resolved.id == "cipro"


def test_duplicates_keep_the_latest_version() -> None:
    old = {**condition("c1"), "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}, "code": {"text": "old"}}
    new = {**condition("c1"), "meta": {"lastUpdated": "2026-06-01T00:00:00Z"}, "code": {"text": "new"}}
    rec = read(bundle(PATIENT, new, old))
    assert rec.duplicates_dropped == 1
    assert [getattr(concept_of(r.code), "text", None) for r in rec.of_type("Condition")] == ["new"]
    same = read(bundle(PATIENT, condition("c1"), condition("c1"), kind="searchset"))
    assert same.duplicates_dropped == 1 and len(same.of_type("Condition")) == 1
    assert same.duplicated == {"Condition/c1"} and read(bundle(PATIENT, condition("c1"))).duplicated == frozenset()


def test_which_copy_and_which_order_a_record_holds_does_not_depend_on_the_input_order() -> None:
    first = {**condition("c1"), "code": {"text": "first"}}
    second = {**condition("c1"), "code": {"text": "second"}}
    forward = read(bundle(PATIENT, condition("z"), first, second, condition("a")))
    backward = read(bundle(PATIENT, condition("a"), second, first, condition("z")))
    for rec in (forward, backward):
        assert [(r.id, getattr(concept_of(r.code), "text", None)) for r in rec.of_type("Condition")] == [
            ("a", "ALS"),
            ("c1", "second"),
            ("z", "ALS"),
        ]


def test_a_later_copy_takes_the_first_copys_place_however_copies_and_new_resources_interleave() -> None:
    def version(cid: str, month: int) -> dict[str, Any]:
        return {
            **condition(cid),
            "meta": {"lastUpdated": f"2026-{month:02d}-01T00:00:00Z"},
            "code": {"text": f"{month}"},
        }

    rec = read(
        bundle(
            PATIENT,
            version("a", 1),
            version("b", 1),
            version("a", 2),
            version("c", 1),
            version("b", 3),
            version("a", 4),
            version("d", 1),
            version("a", 3),
            version("c", 5),
        )
    )
    kept = [(r.id, getattr(concept_of(r.code), "text", None)) for r in rec.of_type("Condition")]
    assert kept == [("a", "4"), ("b", "3"), ("c", "5"), ("d", "1")]
    assert rec.duplicates_dropped == 5
    assert rec.duplicated == {"Condition/a", "Condition/b", "Condition/c"}


def test_a_parsed_mapping_or_list_is_accepted_without_bytes() -> None:
    assert read_patient(bundle(PATIENT)).patient_reference == "Patient/p1"
    assert read_patient([PATIENT, condition("c1")]).of_type("Condition")
    with pytest.raises(InputError, match="cannot read a patient from int"):
        read_patient(42)  # type: ignore[arg-type]


def test_a_bare_scheme_as_a_patient_link_is_another_patient_not_a_crash() -> None:
    rec = read_patient([PATIENT, condition("c1", subject="https://")])
    assert rec.other_patient_resources == 1
    assert rec.normalise("https://") == "https://"


def test_a_urn_uuid_patient_link_is_the_patient_with_that_id_unless_the_urn_names_another_entry() -> None:
    linked = condition("c1", subject="urn:uuid:p1")
    assert [r.id for r in read([PATIENT, linked]).of_type("Condition")] == ["c1"]
    other = {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Group", "id": "g1"}}
    with_group = bundle(PATIENT, linked)
    with_group["entry"].append(other)
    rec = read(with_group)
    assert rec.of_type("Condition") == [] and rec.other_patient_resources == 1


def test_a_conditional_patient_link_is_the_patient_its_identifier_finds() -> None:
    patient = {**PATIENT, "identifier": [{"system": "urn:mrn", "value": "7"}, {"value": "x"}]}
    links = ["Patient?identifier=urn:mrn|7", "Patient?identifier=7", "Patient?identifier=%7Cx", "Patient?identifier=9"]
    rec = read([patient, *(condition(f"c{number}", subject=link) for number, link in enumerate(links))])
    assert [r.id for r in rec.of_type("Condition")] == ["c0", "c1", "c2"]
    assert rec.other_patient_resources == 1
