"""The hand-entry form: validate a few typed values and build a FHIR Bundle with the knowledge base's own codes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from spasticity_cds.knowledge.loader import KnowledgeBase
from spasticity_cds.knowledge.schema import Coding, Concept

MED_ROWS = 4
MAS_ROWS = 4
MAS_GRADES = ("0", "1", "1+", "2", "3", "4")
SEXES = ("female", "male", "other", "unknown")
PATIENT_ID = "manual-entry"
LOINC = "http://loinc.org"


@dataclass(frozen=True)
class NumberField:
    """One numeric input: its form name, label, unit, plausible range and the concept it records."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    concept: str | None


NUMBER_FIELDS = (
    NumberField("weight", "Weight", "kg", 20, 300, None),
    NumberField("creatinine", "Serum creatinine", "mg/dL", 0.1, 20, "creatinine"),
    NumberField("egfr", "eGFR", "mL/min/1.73m2", 1, 200, "egfr"),
    NumberField("alt", "ALT", "U/L", 1, 5000, "alt"),
    NumberField("ast", "AST", "U/L", 1, 5000, "ast"),
    NumberField("bilirubin", "Total bilirubin", "mg/dL", 0.05, 50, "bilirubin"),
    NumberField("fvc", "FVC % predicted", "%", 5, 200, "fvc-percent"),
    NumberField("sbp_lying", "Systolic BP lying", "mmHg", 40, 300, "systolic-supine"),
    NumberField("dbp_lying", "Diastolic BP lying", "mmHg", 20, 200, "diastolic-supine"),
    NumberField("sbp_standing", "Systolic BP standing", "mmHg", 40, 300, "systolic-standing"),
    NumberField("dbp_standing", "Diastolic BP standing", "mmHg", 20, 200, "diastolic-standing"),
)
WEIGHT_CODING = {"system": LOINC, "code": "29463-7", "display": "Body weight"}
LYING_AS_PLAIN = {"sbp_lying": "systolic-bp", "dbp_lying": "diastolic-bp"}


@dataclass
class ManualEntry:
    """The form's values after validation, plus one message per field that was not acceptable."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def medication_choices(kb: KnowledgeBase) -> list[tuple[str, str]]:
    """(concept id, display) for every medication concept, antispastics first, in a stable order."""
    ladder = [step.agent for step in sorted(kb.ladder.steps, key=lambda s: s.position)]
    meds = {c.id: c.display for c in kb.valuesets.concepts if c.kind == "medication"}
    first = [(agent, meds[agent]) for agent in ladder if agent in meds]
    rest = sorted(((cid, name) for cid, name in meds.items() if cid not in ladder), key=lambda p: p[1].lower())
    return first + rest


def dose_units(kb: KnowledgeBase) -> dict[str, str]:
    """The unit the form records a dose in, per medication concept: only drugs whose monograph gives a daily maximum
    (an oral dose per day, in the monograph's ``max_unit``). Others (a pump in micrograms a day, injections in
    units, sprays) take no dose here: a number in the wrong unit would be read a thousandfold off."""
    return {m.concept: m.max_unit for m in kb.monographs.values() if m.max_daily}


def read_form(form: Mapping[str, str], kb: KnowledgeBase, today: date) -> ManualEntry:
    """Check each submitted value; keep the text so the form can be shown again with the messages."""
    entry = ManualEntry(values={key: value.strip() for key, value in form.items() if isinstance(value, str)})
    values, errors = entry.values, entry.errors
    age = values.get("age", "")
    if not age:
        errors["age"] = "Enter the age in years."
    elif not (age.isascii() and age.isdigit()) or not 1 <= int(age) <= 120:
        errors["age"] = "Age must be a whole number of years between 1 and 120."
    if values.get("sex", "") not in SEXES:
        errors["sex"] = "Choose a sex."
    for spec in NUMBER_FIELDS:
        text = values.get(spec.name, "")
        if text and _number(text, spec.low, spec.high) is None:
            errors[spec.name] = f"{spec.label} must be a number from {spec.low:g} to {spec.high:g} {spec.unit}."
    if values.get("creatinine_unit", "mg/dL") not in ("mg/dL", "umol/L"):
        errors["creatinine"] = "Choose mg/dL or umol/L for creatinine."
    elif values.get("creatinine_unit") == "umol/L" and values.get("creatinine"):
        number = _number(values["creatinine"], 5, 2000)
        errors.pop("creatinine", None)
        if number is None:
            errors["creatinine"] = "Serum creatinine must be a number from 5 to 2000 umol/L."
    _check_measured_on(values, errors, today)
    medications = dict(medication_choices(kb))
    units = dose_units(kb)
    for row in range(MED_ROWS):
        drug, dose, times = (values.get(f"med{row}_{part}", "") for part in ("drug", "dose", "times"))
        if not drug:
            if dose or times:  # never dropped in silence: the clinician meant a medication
                errors[f"med{row}_drug"] = "Choose the medication this dose is for, or clear the dose."
            continue
        if drug not in medications:
            errors[f"med{row}_drug"] = "Choose a medication from the list."
        elif (dose or times) and drug not in units:
            errors[f"med{row}_dose"] = (
                f"{medications[drug]} is recorded without a dose here (the form takes doses by mouth per day only): "
                "leave the dose and times a day empty."
            )
            continue
        unit = units.get(drug, "")
        if dose and _number(dose, 0.001, 5000) is None:
            errors[f"med{row}_dose"] = f"The dose must be a number of {unit} from 0.001 to 5000."
        if times and (not (times.isascii() and times.isdigit()) or not 1 <= int(times) <= 12):
            errors[f"med{row}_times"] = "Times per day must be a whole number from 1 to 12."
    for row in range(MAS_ROWS):
        grade = values.get(f"mas{row}_grade", "")
        if grade and grade not in MAS_GRADES:
            errors[f"mas{row}_grade"] = "Choose a Modified Ashworth grade."
    if values.get("relies_on_tone", "") not in ("", "yes", "no"):
        errors["relies_on_tone"] = "Choose yes, no or not known."
    return entry


def _check_measured_on(values: Mapping[str, str], errors: dict[str, str], today: date) -> None:
    """The measurement date: a date, not in the future, and not before the birth the age gives."""
    measured = values.get("measured_on", "")
    try:
        when = date.fromisoformat(measured) if measured else today
    except ValueError:
        errors["measured_on"] = "Enter the date as YYYY-MM-DD."
        return
    if when > today:
        errors["measured_on"] = "The measurement date cannot be in the future."
    elif "age" not in errors and when.isoformat() < _birth_date(int(values["age"]), today):
        errors["measured_on"] = "The measurement date is before the patient was born (by the age given)."


def build_bundle(entry: ManualEntry, kb: KnowledgeBase, today: date) -> dict[str, Any]:
    """A FHIR R4 collection Bundle for one patient, coded with the value sets the evaluator reads."""
    values = entry.values
    concepts = {c.id: c for c in kb.valuesets.concepts}
    when = date.fromisoformat(values["measured_on"]) if values.get("measured_on") else today
    stamp = when.isoformat()
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "gender": values["sex"],
            "birthDate": _birth_date(int(values["age"]), today),
        }
    ]
    counter = iter(range(1, 1000))

    def add(resource_type: str, body: dict[str, Any]) -> None:
        resources.append({"resourceType": resource_type, "id": f"m{next(counter)}", **body})

    if values.get("als") == "yes":
        add("Condition", _condition(concepts["als"], subject, stamp))
    if values.get("dysphagia") == "yes":
        add("Condition", _condition(concepts["dysphagia"], subject, stamp))
    for flag, concept_id in (("niv", "niv"), ("gastrostomy", "gastrostomy")):
        if values.get(flag) == "yes":
            add(
                "Procedure",
                {
                    "status": "completed",
                    "subject": subject,
                    "code": _codeable(concepts[concept_id]),
                    "performedDateTime": stamp,
                },
            )
    for spec in NUMBER_FIELDS:
        text = values.get(spec.name, "")
        if not text:
            continue
        number = float(text.replace(",", "."))
        unit = values.get("creatinine_unit", "mg/dL") if spec.name == "creatinine" else spec.unit
        code = _codeable(concepts[spec.concept]) if spec.concept else {"coding": [WEIGHT_CODING]}
        add("Observation", _observation(code, subject, stamp, {"value": number, "unit": unit, "code": unit}))
        if spec.name in LYING_AS_PLAIN:
            plain = _codeable(concepts[LYING_AS_PLAIN[spec.name]])
            add("Observation", _observation(plain, subject, stamp, {"value": number, "unit": unit, "code": unit}))
    for row in range(MAS_ROWS):
        grade = values.get(f"mas{row}_grade", "")
        if grade:
            body = _observation(_codeable(concepts["modified-ashworth"]), subject, stamp, None)
            body["valueString"] = grade
            muscle = values.get(f"mas{row}_muscle", "")
            if muscle:
                body["bodySite"] = {"text": muscle[:80]}
            add("Observation", body)
    if values.get("relies_on_tone") in ("yes", "no"):
        body = _observation(_codeable(concepts["relies-on-tone"]), subject, stamp, None)
        body["valueBoolean"] = values["relies_on_tone"] == "yes"
        add("Observation", body)
    units = dose_units(kb)
    for row in range(MED_ROWS):
        drug = values.get(f"med{row}_drug", "")
        if drug:
            add("MedicationRequest", _medication(concepts[drug], units.get(drug), values, row, subject, stamp))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


#: A number as a clinician types it: ASCII digits with one optional decimal point or comma.
DECIMAL = re.compile(r"[0-9]+(?:[.,][0-9]+)?")


def _number(text: str, low: float, high: float) -> float | None:
    if not DECIMAL.fullmatch(text):  # float() also takes "1_0", "1e3" and other scripts' digits
        return None
    number = float(text.replace(",", "."))
    return number if low <= number <= high else None


def _birth_date(age: int, today: date) -> str:
    """A birth date (1 January) that makes the patient exactly ``age`` years old today."""
    return date(today.year - age, 1, 1).isoformat()


def _best_coding(concept: Concept) -> Coding | None:
    ranked = sorted(concept.codings, key=lambda c: (c.level not in ("ingredient", "concept"), c.status != "C-primary"))
    return ranked[0] if ranked else None


def _codeable(concept: Concept) -> dict[str, Any]:
    coding = _best_coding(concept)
    codeable: dict[str, Any] = {"text": concept.display}
    if coding is not None:
        codeable["coding"] = [
            {"system": coding.system, "code": coding.code, "display": coding.display or concept.display}
        ]
    return codeable


def _condition(concept: Concept, subject: dict[str, str], stamp: str) -> dict[str, Any]:
    return {
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "code": _codeable(concept),
        "subject": subject,
        "recordedDate": stamp,
    }


def _observation(
    code: dict[str, Any], subject: dict[str, str], stamp: str, quantity: dict[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "final", "code": code, "subject": subject, "effectiveDateTime": stamp}
    if quantity is not None:
        body["valueQuantity"] = quantity | {"system": "http://unitsofmeasure.org"}
    return body


def _medication(
    concept: Concept, unit: str | None, values: Mapping[str, str], row: int, subject: dict[str, str], stamp: str
) -> dict[str, Any]:
    """A MedicationRequest; its dose in ``unit`` (the monograph's), none for a drug the form takes no dose for."""
    dosage: dict[str, Any] = {}
    dose, times = values.get(f"med{row}_dose", ""), values.get(f"med{row}_times", "")
    if dose and unit:
        dosage["doseAndRate"] = [
            {
                "doseQuantity": {
                    "value": float(dose.replace(",", ".")),
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                }
            }
        ]
    if times:
        dosage["timing"] = {"repeat": {"frequency": int(times), "period": 1, "periodUnit": "d"}}
    body: dict[str, Any] = {
        "status": "active",
        "intent": "order",
        "subject": subject,
        "authoredOn": stamp,
        "medicationCodeableConcept": _codeable(concept),
    }
    if dosage:
        body["dosageInstruction"] = [dosage]
    return body
