"""Builders for the FHIR R4 resources (plain dicts) of one synthetic patient, with stable ids."""

from __future__ import annotations

import random
from datetime import date, datetime, time
from typing import Any

import orjson

from spasticity_cds.synth import codes
from spasticity_cds.synth.codes import Coding, coding
from spasticity_cds.synth.rng import chance

Resource = dict[str, Any]

ID_PREFIX = {
    "Patient": "p",
    "Condition": "cond",
    "Observation": "obs",
    "MedicationRequest": "mr",
    "Procedure": "proc",
    "Encounter": "enc",
}
DUPLICATE_RATE = 0.01


def instant(day: date, at: time = time(9, 0)) -> str:
    """FHIR dateTime in UTC for ``day`` at ``at``."""
    return datetime.combine(day, at).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    """A UCUM Quantity (``code`` defaults to ``unit``)."""
    return {"value": value, "unit": unit, "system": codes.UCUM, "code": code or unit}


def concept(*codings: Coding, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept from codings and optional text."""
    result: dict[str, Any] = {}
    if codings:
        result["coding"] = [coding(c) for c in codings]
    if text:
        result["text"] = text
    return result


class Factory:
    """Mints one patient's resources: ids ``<prefix>-<seed>-<index>-<k>``, subject references, duplicates."""

    def __init__(self, rng: random.Random, seed: int, index: int) -> None:
        self.rng = rng
        self.seed = seed
        self.index = index
        self.patient_id = f"p-{seed}-{index}"
        self.subject_ref = f"Patient/{self.patient_id}"
        self.resources: list[Resource] = []
        self._counters: dict[str, int] = {}

    def new_id(self, resource_type: str) -> str:
        """Next stable id for ``resource_type``."""
        k = self._counters.get(resource_type, 0)
        self._counters[resource_type] = k + 1
        return f"{ID_PREFIX[resource_type]}-{self.seed}-{self.index}-{k}"

    def emit(self, resource: Resource, *, may_duplicate: bool = True) -> Resource:
        """Add ``resource`` to the output; about 1 % of clinical resources are written twice (as a copy)."""
        self.resources.append(resource)
        if may_duplicate and chance(self.rng, DUPLICATE_RATE):
            self.resources.append(orjson.loads(orjson.dumps(resource)))
        return resource

    def clinical(self, resource_type: str, **fields: Any) -> Resource:
        """Emit a resource of ``resource_type`` with a fresh id and a subject reference."""
        resource: Resource = {"resourceType": resource_type, "id": self.new_id(resource_type)}
        resource.update(fields)
        resource["subject"] = {"reference": self.subject_ref}
        return self.emit(resource)

    def encounter(self, start: str, end: str, kind: str, class_code: str = "AMB") -> Resource:
        """A finished Encounter."""
        display = {"AMB": "ambulatory", "IMP": "inpatient encounter"}[class_code]
        return self.clinical(
            "Encounter",
            status="finished",
            **{"class": {"system": codes.ACT_CODE, "code": class_code, "display": display}},
            type=[{"text": kind}],
            period={"start": start, "end": end},
        )

    def observation(
        self,
        code: dict[str, Any],
        category: str,
        when: str,
        value: dict[str, Any],
        encounter: Resource | None = None,
        **extra: Any,
    ) -> Resource:
        """A final Observation; ``value`` holds one ``value[x]`` or ``component`` entry."""
        fields: dict[str, Any] = {
            "status": "final",
            "category": [{"coding": [{"system": codes.OBS_CATEGORY, "code": category}]}],
            "code": code,
            "effectiveDateTime": when,
        }
        if encounter is not None:
            fields["encounter"] = {"reference": f"Encounter/{encounter['id']}"}
        fields.update(value)
        fields.update(extra)
        return self.clinical("Observation", **fields)

    def condition(self, code: dict[str, Any], onset: date, *, category: str = "problem-list-item") -> Resource:
        """An active, confirmed Condition."""
        return self.clinical(
            "Condition",
            clinicalStatus=concept((codes.COND_CLINICAL, "active", "Active")),
            verificationStatus=concept((codes.COND_VERIFICATION, "confirmed", "Confirmed")),
            category=[concept((codes.COND_CATEGORY, category, category.replace("-", " ").title()))],
            code=code,
            onsetDateTime=onset.isoformat(),
            recordedDate=onset.isoformat(),
        )

    def procedure(self, code: dict[str, Any], status: str, **fields: Any) -> Resource:
        """A Procedure with ``performedDateTime`` or ``performedPeriod`` given in ``fields``."""
        return self.clinical("Procedure", status=status, code=code, **fields)
