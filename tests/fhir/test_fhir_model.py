"""The typed FHIR views: fast decode of valid shapes, field-by-field pruning of odd ones, JSON round trip."""

from __future__ import annotations

import orjson
import pytest

from spasticity_cds.api import read_patient
from spasticity_cds.errors import InputError
from spasticity_cds.fhir.model import (
    RESOURCE_DECODER,
    CodeableConcept,
    Coding,
    Quantity,
    Resource,
    as_json,
    concept_of,
    from_json,
    quantity_of,
)
from spasticity_cds.fhir.parse import parse_bytes

PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01", "gender": "female"}


def test_fields_of_different_shapes_across_resource_types_decode() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
        "entry": [
            {"resource": PATIENT},
            {"resource": {"resourceType": "Organization", "id": "o1", "name": "Clinic"}},
            {"resource": {"resourceType": "Device", "id": "d1", "type": {"text": "pump"}}},
            {"resource": {"resourceType": "Procedure", "id": "pr1", "bodySite": [{"text": "spine"}]}},
            {"resource": {"resourceType": "MedicationAdministration", "id": "ma1", "dosage": {"text": "5 mg"}}},
        ],
    }
    decoded = RESOURCE_DECODER.decode(orjson.dumps(bundle))
    assert [entry.resource.resource_type for entry in decoded.entry or () if entry.resource] == [
        "Patient",
        "Organization",
        "Device",
        "Procedure",
        "MedicationAdministration",
    ]


def test_a_field_of_the_wrong_shape_is_dropped_alone() -> None:
    odd = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": 7, "code": "x"}, "not a coding", {"system": "http://loinc.org", "code": "1"}]},
        "valueQuantity": {"value": "about 40", "unit": "%"},
        "component": "not a list",
    }
    resource = from_json(odd, Resource)
    assert resource is not None
    assert resource.id == "o1" and resource.status == "final"
    assert concept_of(resource.code) == CodeableConcept(
        coding=(Coding(code="x"), Coding(system="http://loinc.org", code="1"))
    )
    quantity = quantity_of(resource.value_quantity)
    assert quantity is not None and quantity.value is None
    assert quantity.unit == "%"
    assert resource.component is None


def test_bytes_with_odd_shapes_fall_back_and_still_read_the_rest() -> None:
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "ALS"},
        "onsetDateTime": 2019,
        "clinicalStatus": "active",
    }
    bundle = {"resourceType": "Bundle", "entry": [{"resource": PATIENT}, {"resource": condition}]}
    record = read_patient(orjson.dumps(bundle))
    [read] = record.of_type("Condition")
    assert concept_of(read.code) == CodeableConcept(text="ALS") and read.clinical_status is None


def test_the_patient_reads_back_as_json_with_only_the_fields_decoded() -> None:
    patient = {**PATIENT, "name": [{"given": ["Ada"], "family": "Lovelace"}], "telecom": [{"value": "555"}]}
    record = read_patient([patient])
    assert record.patient == {**PATIENT, "name": [{"given": ["Ada"], "family": "Lovelace"}]}
    assert as_json(record.patient_resource) == record.patient


def test_ndjson_bytes_take_the_line_by_line_path() -> None:
    lines = orjson.dumps(PATIENT) + b"\n" + orjson.dumps({"resourceType": "Condition", "id": "c1"})
    parsed = parse_bytes(lines)
    assert sorted(parsed.resources) == ["Condition/c1", "Patient/p1"]


def test_json_nested_too_deeply_is_an_input_error_not_a_crash() -> None:
    deep = b'{"resourceType":"Patient","id":"p","code":' + b'{"coding":[' * 3000 + b"]}" * 3000 + b"}"
    with pytest.raises(InputError, match="not valid JSON"):
        parse_bytes(deep)


def test_code_and_value_quantity_are_kept_as_json_text_and_decoded_on_demand() -> None:
    def code_of(text: bytes) -> CodeableConcept | None:
        return concept_of(RESOURCE_DECODER.decode(b'{"resourceType":"Observation"' + text + b"}").code)

    kept = RESOURCE_DECODER.decode(b'{"resourceType":"Observation","code":{"text":"FVC"}}')
    assert bytes(kept.code) == b'{"text":"FVC"}'
    assert code_of(b',"code":{"text":"FVC"}') == CodeableConcept(text="FVC")
    assert code_of(b',"code":{"coding":[7,{"code":"1"}]}') == CodeableConcept(coding=(Coding(code="1"),))
    assert code_of(b',"code":"FVC"') is None
    assert code_of(b',"code":null') is None
    assert code_of(b"") is None
    assert quantity_of(RESOURCE_DECODER.decode(b'{"valueQuantity":{"value":"x","unit":"%"}}').value_quantity) == (
        Quantity(unit="%")
    )
    assert quantity_of(RESOURCE_DECODER.decode(b'{"valueQuantity":[1]}').value_quantity) is None
    # A number beyond a double passes the resource's decode unchecked (the field is kept as text); read, it is no
    # value at all rather than an error that would stop the whole evaluation.
    assert quantity_of(RESOURCE_DECODER.decode(b'{"valueQuantity":{"value":1e999,"unit":"%"}}').value_quantity) is None
