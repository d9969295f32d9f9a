"""Small builders of FHIR resources for unit tests: one call per clinical fact, realistic codes."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta
from typing import Any

from spasticity_cds.api import read_patient
from spasticity_cds.fhir.record import PatientRecord

Resource = dict[str, Any]
NOW = datetime.fromisoformat("2026-11-24T09:30:00-05:00")
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXN = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOCAL = "http://spasticity-cds.org/fhir/CodeSystem/local"
SUBJECT = {"reference": "Patient/p1"}
_ids = itertools.count(1)

RXNORM = {
    "baclofen": "1292",
    "tizanidine": "57258",
    "clonidine": "2599",
    "dantrolene": "3105",
    "diazepam": "3322",
    "clonazepam": "2598",
    "gabapentin": "25480",
    "riluzole": "35623",
    "morphine": "7052",
    "lorazepam": "6470",
    "fluvoxamine": "42355",
    "ciprofloxacin": "2551",
    "verapamil": "11170",
    "ethinyl estradiol": "4124",
    "amlodipine": "17767",
    "amiodarone": "703",
    "intrathecal baclofen": "1300890",
}


def days_ago(days: int) -> str:
    """The calendar date ``days`` before the test instant."""
    return (NOW.date() - timedelta(days=days)).isoformat()


RECENT = days_ago(14)


def _next(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def patient(birth: str = "1964-05-17", gender: str = "male") -> Resource:
    return {"resourceType": "Patient", "id": "p1", "birthDate": birth, "gender": gender}


def coded(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def condition(system: str, code: str, *, status: str = "active") -> Resource:
    return {
        "resourceType": "Condition",
        "id": _next("c"),
        "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/condition-clinical", status),
        "code": coded(system, code),
        "subject": SUBJECT,
    }


def als() -> Resource:
    return condition(SCT, "86044005")


def procedure(text: str) -> Resource:
    return {
        "resourceType": "Procedure",
        "id": _next("pr"),
        "status": "completed",
        "code": {"text": text},
        "subject": SUBJECT,
    }


def med(
    name: str,
    *,
    status: str = "active",
    dose: float | None = None,
    unit: str = "mg",
    per_day: int | None = None,
    start: str | None = None,
    reason: str | None = None,
    route: str | None = None,
    text_only: bool = False,
    resource_type: str = "MedicationRequest",
    indication: str | None = None,
    indication_ref: str | None = None,
) -> Resource:
    """A medication order; ``name`` is an RxNorm ingredient in :data:`RXNORM` or free text; ``indication`` is its
    reasonCode text, ``indication_ref`` a reasonReference."""
    code = RXNORM.get(name)
    concept = {"text": name} if text_only or code is None else coded(RXN, code, name)
    resource: Resource = {"resourceType": resource_type, "id": _next("m"), "status": status, "subject": SUBJECT}
    if resource_type == "MedicationRequest":
        resource["intent"] = "order"
    resource["medicationCodeableConcept"] = concept
    dosage: dict[str, Any] = {}
    if dose is not None and per_day is not None:
        dosage["timing"] = {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}}
        dosage["doseAndRate"] = [{"doseQuantity": {"value": dose, "unit": unit}}]
    if route:
        dosage["route"] = {"text": route}
    if dosage:
        resource["dosageInstruction" if resource_type == "MedicationRequest" else "dosage"] = [dosage]
    if start:
        resource["authoredOn" if resource_type == "MedicationRequest" else "effectiveDateTime"] = start
    if reason:
        resource["statusReason"] = {"text": reason}
    if indication:
        resource["reasonCode"] = [{"text": indication}]
    if indication_ref:
        resource["reasonReference"] = [{"reference": indication_ref}]
    return resource


def obs(
    system: str,
    code: str,
    value: Any,
    *,
    unit: str | None = None,
    when: str = RECENT,
    high: float | None = None,
    site: str | None = None,
    kind: str = "quantity",
) -> Resource:
    resource: Resource = {
        "resourceType": "Observation",
        "id": _next("o"),
        "status": "final",
        "code": coded(system, code),
        "subject": SUBJECT,
        "effectiveDateTime": when,
    }
    if kind == "quantity":
        quantity: dict[str, Any] = {"value": value}
        if unit:
            quantity["unit"] = unit
        resource["valueQuantity"] = quantity
    elif kind == "string":
        resource["valueString"] = value
    elif kind == "bool":
        resource["valueBoolean"] = value
    elif kind == "integer":
        resource["valueInteger"] = value
    if high is not None:
        resource["referenceRange"] = [{"high": {"value": high, "unit": unit}}]
    if site:
        resource["bodySite"] = {"text": site}
    return resource


def egfr(value: float, when: str = RECENT) -> Resource:
    return obs(LOINC, "98979-8", value, unit="mL/min/{1.73_m2}", when=when)


def creatinine(value: float, unit: str = "mg/dL", when: str = RECENT) -> Resource:
    return obs(LOINC, "2160-0", value, unit=unit, when=when)


def alt(value: float, high: float | None = 40, when: str = RECENT) -> Resource:
    return obs(LOINC, "1742-6", value, unit="U/L", high=high, when=when)


def ast(value: float, high: float | None = 40, when: str = RECENT) -> Resource:
    return obs(LOINC, "1920-8", value, unit="U/L", high=high, when=when)


def bilirubin(value: float, high: float | None = 1.2, unit: str = "mg/dL") -> Resource:
    return obs(LOINC, "1975-2", value, unit=unit, high=high)


def fvc(value: float, when: str = RECENT) -> Resource:
    return obs(LOINC, "19872-1", value, unit="%", when=when)


def normal_breathing() -> list[Resource]:
    """Every measurement the respiratory definitions read, all normal."""
    return [
        fvc(90),
        obs(LOCAL, "snip", 80, unit="cm[H2O]"),
        obs(LOCAL, "mip", 80, unit="cm[H2O]"),
        obs(LOINC, "2019-8", 40, unit="mm[Hg]"),
        obs(LOINC, "59408-5", 97, unit="%"),
    ]


def reduced_breathing() -> list[Resource]:
    return [
        fvc(65),
        obs(LOCAL, "snip", 60, unit="cm[H2O]"),
        obs(LOCAL, "mip", 70, unit="cm[H2O]"),
        obs(LOINC, "2019-8", 40, unit="mm[Hg]"),
    ]


def orthostatic(lying: float, standing: float, diastolic: tuple[float, float] = (80, 78)) -> list[Resource]:
    return [
        obs(LOINC, "8461-6", lying, unit="mm[Hg]"),
        obs(LOINC, "8460-8", standing, unit="mm[Hg]"),
        obs(LOINC, "8455-8", diastolic[0], unit="mm[Hg]"),
        obs(LOINC, "8454-1", diastolic[1], unit="mm[Hg]"),
    ]


def systolic(value: float, when: str = RECENT) -> Resource:
    return obs(LOINC, "8480-6", value, unit="mm[Hg]", when=when)


def mas(grade: str, site: str, when: str = RECENT) -> Resource:
    return obs(SCT, "765771006", grade, kind="string", site=site, when=when)


def relies_on_tone(value: bool, when: str = RECENT) -> Resource:
    return obs(LOCAL, "relies-on-tone", value, kind="bool", when=when)


def swallowing(score: int) -> Resource:
    return obs(LOCAL, "alsfrs-r-swallowing", score, kind="integer")


def record(
    *resources: Resource | list[Resource], with_als: bool = True, person: Resource | None = None
) -> PatientRecord:
    """A patient record of the given resources (ALS on the problem list unless told otherwise)."""
    flat: list[Resource] = [person or patient()]
    if with_als:
        flat.append(als())
    for item in resources:
        flat.extend(item if isinstance(item, list) else [item])
    return read_patient(flat)


def as_date(text: str) -> date:
    return date.fromisoformat(text)
