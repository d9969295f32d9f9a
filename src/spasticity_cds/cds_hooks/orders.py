"""Draft orders in a hook context: which ones to check, which agent each orders, and its structured dose."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.engine.extract import times_per_day

MASS_UNITS = {"mg": 1.0, "g": 1000.0}
#: The id given to a draft sent without a usable one: a space, which no nameable id holds, keeps a client's own id
#: (even ``unnamed-draft-1``) from ever being taken for one.
UNNAMED_DRAFT = "unnamed draft "
#: An id a draft can be named by in a reference (``MedicationRequest/{id}``) and in the client's selections: any
#: text without a space or slash (sandboxes send ids such as ``draft_baclofen``, which FHIR's id type forbids).
NAMEABLE_ID = re.compile(r"[^\s/]{1,256}")
UNIT_DOSE_UNITS = frozenset({"{pill}", "{tbl}", "{tablet}", "tablet", "tablets", "tab", "{capsule}", "capsule", "1"})
#: The elements FHIR R4 requires of a MedicationRequest (1..1) that a draft may lack (the cds-hooks sandbox sends
#: no intent until its order form is complete), and what an update gives them: a CDS Hooks draft order is an order
#: being written, as in the specification's own examples.
REQUIRED_DRAFT_CODES = (("status", "draft"), ("intent", "order"))
#: The values that are no value in FHIR JSON (null and the empty ones): an update's compaction leaves them out.
NO_VALUE: tuple[object, ...] = (None, "", [], {})


@dataclass(frozen=True)
class DraftOrder:
    """A draft MedicationRequest being ordered, and what it orders."""

    reference: str
    resource: dict[str, Any]
    agent: str | None
    strength_mg: float | None
    #: The draft as the client sent it (its own subject form): what an update suggestion sends back, changed.
    sent: dict[str, Any]


@dataclass(frozen=True)
class StructuredDose:
    """A single structured dosage instruction: amount per dose, its unit, and doses per day."""

    value: float
    unit: str
    per_day: float


def draft_resources(context: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The draft order resources of this patient as (copy to check, draft as sent); the copy of one without a usable
    id gets ``unnamed draft <n>``, of one without a subject (or naming the patient in another form) the patient's
    plain reference. A draft whose subject names another patient is left out: checking it against this patient's
    record would be wrong."""
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict):
        return []
    patient_id = context["patientId"]
    out = []
    for index, entry in enumerate(bundle.get("entry") or (), start=1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        copied = dict(resource)  # only top-level keys are set below; nested parts stay shared, never changed
        draft_id = copied.get("id")  # without a usable id a draft cannot be named in a suggestion or citation
        if not isinstance(draft_id, str) or not NAMEABLE_ID.fullmatch(draft_id):
            copied["id"] = f"{UNNAMED_DRAFT}{index}"
        subject = copied.get("subject")
        reference = subject.get("reference") if isinstance(subject, dict) else None
        named = patient_of(reference) if isinstance(reference, str) else None
        if named is not None and named != patient_id:
            continue
        if named is not None or (not reference and copied["resourceType"] != "NutritionOrder"):
            copied["subject"] = {"reference": f"Patient/{patient_id}"}  # versioned or absolute: read as this patient's
        out.append((copied, resource))
    return out


def patient_of(reference: str) -> str | None:
    """The patient id a reference names (``Patient/1``, ``Patient/1/_history/2``, ``https://ehr/fhir/Patient/1``);
    None when it names no Patient."""
    _, found, rest = reference.rpartition("Patient/")
    return rest.split("/", 1)[0] or None if found else None


def checked_orders(
    engine: Engine, context: dict[str, Any], drafts: list[tuple[dict[str, Any], dict[str, Any]]], hook: str
) -> list[DraftOrder]:
    """The MedicationRequests to check: the selections on order-select, every medication draft on order-sign."""
    selections = set(context.get("selections") or ()) if hook == "order-select" else None
    orders = []
    for resource, sent in drafts:
        if resource.get("resourceType") != "MedicationRequest":
            continue
        reference = f"MedicationRequest/{resource['id']}"
        if selections is not None and reference not in selections:
            continue
        agent, strength = _ordered_agent(engine, resource)
        orders.append(DraftOrder(reference, resource, agent, strength, sent))
    return orders


def _ordered_agent(engine: Engine, resource: dict[str, Any]) -> tuple[str | None, float | None]:
    found = engine.vocabulary.match(_codeable(resource), "medication")
    if found is None:
        return None, None
    concept = found.concept.id
    agent = next(
        (
            step.agent
            for step in engine.ladder
            if f"med.{concept}.proposed" in step.proposed_when or f"med.{concept}.current" in step.current_when
        ),
        concept,
    )
    strength = found.coding.strength_mg if found.coding is not None else None
    return agent, strength


def _codeable(resource: dict[str, Any]) -> Any:
    if "medicationCodeableConcept" in resource:
        return resource["medicationCodeableConcept"]
    reference = resource.get("medicationReference")
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if isinstance(target, str) and target.startswith("#"):
        for contained in resource.get("contained") or ():
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("code")
    display = reference.get("display")
    return {"text": display} if isinstance(display, str) else None


def structured_dose(resource: dict[str, Any]) -> StructuredDose | None:
    """The one structured dose of an order (a single instruction with quantity and frequency), if any; None for
    anything of another shape."""
    dosage = _only_object(resource.get("dosageInstruction"))
    rate = _only_object(dosage.get("doseAndRate")) if dosage is not None else None
    quantity = rate.get("doseQuantity") if rate is not None else None
    if dosage is None or not isinstance(quantity, dict) or not _positive(quantity.get("value")):
        return None
    timing = dosage.get("timing")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    if not isinstance(repeat, dict):
        return None
    per_day = times_per_day(repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit"))
    unit = quantity.get("code") or quantity.get("unit")
    if per_day is None or not isinstance(unit, str):
        return None
    return StructuredDose(float(quantity["value"]), unit, per_day)


def _only_object(value: object) -> dict[str, Any] | None:
    """The single object of a one-item array."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0]
    return None


def _positive(value: object) -> bool:
    """A usable amount: a finite number above zero (a zero or negative dose is not a dose)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def mg_per_unit(dose: StructuredDose, strength_mg: float | None) -> float | None:
    """Milligrams in one unit of the dose quantity (1 for mg, the product strength for tablets)."""
    unit = dose.unit.strip().lower()
    if unit in MASS_UNITS:
        return MASS_UNITS[unit]
    if unit in UNIT_DOSE_UNITS:
        return strength_mg
    return None


def unit_text(value: float, unit: str) -> str:
    """A dose unit as a clinician reads it: a unit dose ({pill}, {tbl}, a UCUM annotation) is a tablet."""
    if unit.strip().lower() in UNIT_DOSE_UNITS:
        return "tablet" if value <= 1 else "tablets"
    return unit


#: A period of maxDosePerPeriod in days, by its UCUM code (or unit).
PERIOD_DAYS = {"d": 1.0, "day": 1.0, "days": 1.0, "h": 1 / 24, "hour": 1 / 24, "hours": 1 / 24, "wk": 7.0}


def adjusted_order(
    resource: dict[str, Any], new_value: float, per_day: float, ceiling_per_day: float | None = None
) -> dict[str, Any]:
    """The whole draft with its single dose quantity replaced (and its now-stale dosage text rewritten), and with
    the status and intent FHIR requires where it has none: without them the update is not a valid resource.

    ``ceiling_per_day`` (in the dose's own unit) bounds the draft's maxDosePerPeriod: a limit above it is lowered
    to it, and one that cannot be compared (another unit, an odd period) is dropped, since an order that allows
    80 mg/day against a 40 mg/day ceiling contradicts its own kidney-adjusted dose.

    Only the objects on the path to the dose quantity are copied; the rest is shared with the draft, which
    nothing changes (a deep copy of the whole order cost more than the rest of the suggestion).
    """
    updated = dict(resource)
    for name, code in REQUIRED_DRAFT_CODES:
        if updated.get(name) in NO_VALUE:
            updated[name] = code
    dosage = dict(updated["dosageInstruction"][0])
    updated["dosageInstruction"] = [dosage, *updated["dosageInstruction"][1:]]
    rate = dict(dosage["doseAndRate"][0])
    dosage["doseAndRate"] = [rate, *dosage["doseAndRate"][1:]]
    quantity = rate["doseQuantity"] = dict(rate["doseQuantity"])
    quantity["value"] = _number(new_value)
    unit = quantity.get("code") or quantity.get("unit")
    if "text" in dosage:
        shown = unit_text(new_value, unit) if isinstance(unit, str) else unit
        dosage["text"] = f"{new_value:g} {shown} {per_day:g} times a day (kidney-adjusted dose)"
    if ceiling_per_day is not None and "maxDosePerPeriod" in dosage:
        limit = _limit_within(dosage["maxDosePerPeriod"], ceiling_per_day, unit)
        if limit is None:
            del dosage["maxDosePerPeriod"]
        else:
            dosage["maxDosePerPeriod"] = limit
    return updated


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 9)


def _limit_within(limit: object, ceiling_per_day: float, dose_unit: object) -> dict[str, Any] | None:
    """A maxDosePerPeriod (a Ratio of an amount to a period) no higher than ``ceiling_per_day`` in the dose's unit;
    None when it cannot be read as one (then the update leaves it out)."""
    if not isinstance(limit, dict) or not isinstance(dose_unit, str):
        return None
    numerator, denominator = limit.get("numerator"), limit.get("denominator")
    if not isinstance(numerator, dict) or not isinstance(denominator, dict):
        return None
    amount: Any = numerator.get("value")
    period: Any = denominator.get("value")
    period_unit = denominator.get("code") or denominator.get("unit")
    days = PERIOD_DAYS.get(period_unit.strip().lower()) if isinstance(period_unit, str) else None
    factor = _unit_factor(numerator.get("code") or numerator.get("unit"), dose_unit)
    if days is None or factor is None or not _positive(amount) or not _positive(period):
        return None
    allowed = ceiling_per_day * days * float(period) / factor  # in the numerator's own unit
    if float(amount) <= allowed + 1e-9:
        return limit
    return limit | {"numerator": numerator | {"value": _number(allowed)}}


def _unit_factor(amount_unit: object, dose_unit: str) -> float | None:
    """How many of the dose's unit one of ``amount_unit`` is (mg and g convert; a unit dose only to itself)."""
    if not isinstance(amount_unit, str):
        return None
    amount, dose = amount_unit.strip().lower(), dose_unit.strip().lower()
    if amount in MASS_UNITS and dose in MASS_UNITS:
        return MASS_UNITS[amount] / MASS_UNITS[dose]
    return 1.0 if amount == dose or (amount in UNIT_DOSE_UNITS and dose in UNIT_DOSE_UNITS) else None
