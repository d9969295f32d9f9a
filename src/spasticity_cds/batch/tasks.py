"""Findings to FHIR R4 Tasks with stable ids, worklist rows, and the closing of Tasks that no longer fire."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from spasticity_cds.batch import policy
from spasticity_cds.engine.display import BoundariesOf
from spasticity_cds.engine.facts import Fact, Value

#: At most this many characters of a patient's name or record number in a Task and a worklist row (no name is
#: that long; an export that carries megabytes there must not make a line too long to read back).
LABEL_LIMIT = 200

INT32_MAX = 2**31 - 1


def task_key(patient: str, finding: Mapping[str, Any], settings: Mapping[str, Value] | None = None) -> str:
    """Stable id of a worklist item: a hash of (patient, rule id + version, the inputs the rule used). What changes
    with the calendar alone is keyed by what it derives from, so an item keeps its id from day to day while
    nothing about the patient changed: a count of days since a date (days on a drug, since the last liver test) by
    that date, and a result by its value and date whether or not it has aged past its validity (an aged result the
    rule needs changes the finding itself). Sources and evidence enter as sets, so the order of the input does not
    matter. Setting overrides (``settings``, those that change a value) enter too: an item found under other
    settings is another item, while runs on the defaults keep their keys."""
    facts = [_key_form(fact) for fact in finding.get("facts", [])]
    inputs = {"facts": facts, "evidence": sorted(finding.get("evidence", []))}
    material: list[Any] = [patient, finding["rule_id"], finding["rule_version"], inputs]
    if settings:
        material.append(dict(settings))
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _key_form(fact: Mapping[str, Any]) -> Mapping[str, Any]:
    """The fact as the key reads it: without what changes with the calendar alone, and its sources as a set (their
    order is the order the resources came in, which a re-export may change)."""
    dated_count = fact.get("unit") == "days" and fact.get("date")
    form = {name: value for name, value in fact.items() if name != "stale" and not (dated_count and name == "value")}
    if form.get("sources"):
        form["sources"] = sorted(form["sources"])
    return form


def patient_label(patient: Mapping[str, Any]) -> tuple[str, dict[str, str] | None]:
    """(display name cut to ``LABEL_LIMIT`` characters, or ""; the medical record number identifier, or None).

    Only an identifier typed ``MR`` is shown: another one may be a national id number, which has no place on a
    worklist. It keeps its system, and one that cannot be shown whole (too long, or holding a NUL) is left out,
    not cut: a cut identifier names someone else.
    """
    return _cut(_name(patient)), _record_number(patient)


def _cut(text: str) -> str:
    text = text.replace("\x00", "")  # a NUL would reach the CSV and HTML worklists raw
    return text if len(text) <= LABEL_LIMIT else f"{text[: LABEL_LIMIT - 1]}…"


def _name(patient: Mapping[str, Any]) -> str:
    for entry in patient.get("name") or ():
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("text"), str):
            name: str = entry["text"]
        else:
            given = [g for g in entry.get("given") or () if isinstance(g, str)]
            family = entry.get("family")
            name = " ".join([*given, family if isinstance(family, str) else ""]).strip()
        if name:
            return name
    return ""


def _record_number(patient: Mapping[str, Any]) -> dict[str, str] | None:
    for identifier in patient.get("identifier") or ():
        if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
            continue
        codes = [c.get("code") for c in (identifier.get("type") or {}).get("coding") or () if isinstance(c, dict)]
        if "MR" not in codes:
            continue
        value, system = identifier["value"], identifier.get("system")
        if not value or len(value) > LABEL_LIMIT or "\x00" in value:
            return None
        shown = {"value": value}
        if isinstance(system, str) and system and len(system) <= LABEL_LIMIT and "\x00" not in system:
            shown = {"system": system, **shown}
        return shown
    return None


def _fact(data: Mapping[str, Any]) -> Fact:
    return Fact(
        name=str(data.get("name")),
        value=data.get("value"),
        unit=data.get("unit"),
        date=data.get("date"),
        stale=bool(data.get("stale", False)),
        sources=tuple(data.get("sources") or ()),
        note=data.get("note"),
    )


def _fact_input(data: Mapping[str, Any]) -> dict[str, Any]:
    name = str(data.get("name"))
    item: dict[str, Any] = {"type": {"coding": [{"system": policy.FACT_SYSTEM, "code": name}], "text": name}}
    value = data.get("value")
    unit = data.get("unit")
    if value is None:
        item["valueString"] = "missing"
    elif isinstance(value, bool):
        item["valueBoolean"] = value
    elif isinstance(value, int | float) and unit:
        item["valueQuantity"] = {"value": value, "unit": unit}
    elif isinstance(value, int) and abs(value) <= INT32_MAX:
        item["valueInteger"] = value
    elif isinstance(value, int | float):
        item["valueDecimal"] = value
    else:
        item["valueString"] = str(value)
    extension: list[dict[str, Any]] = []
    if data.get("date"):
        extension.append({"url": f"{policy.BASE}/StructureDefinition/fact-date", "valueString": str(data["date"])})
    if data.get("stale"):
        extension.append({"url": f"{policy.BASE}/StructureDefinition/fact-stale", "valueBoolean": True})
    if extension:
        item["extension"] = extension
    return item


def _code_input(code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": policy.TASK_INPUT_SYSTEM, "code": code}]}, "valueCode": value}


def build_task(
    finding: Mapping[str, Any],
    *,
    patient_ref: str,
    patient: Mapping[str, Any],
    knowledge_base: Mapping[str, Any],
    authored_on: str,
    settings: Mapping[str, Value] | None = None,
) -> dict[str, Any]:
    """One FHIR R4 Task (status requested, intent proposal) for an actionable finding under ``settings``."""
    key = task_key(patient_ref, finding, settings)
    code = policy.action_code(finding)
    evidence = [str(ref) for ref in finding.get("evidence", [])]
    focus = next((ref for ref in evidence if ref.startswith("MedicationRequest/")), None)
    name, record_number = patient_label(patient)
    for_ref: dict[str, Any] = {"reference": patient_ref}
    if name:
        for_ref["display"] = name
    if record_number:
        for_ref["identifier"] = record_number
    inputs = [_code_input("finding-kind", str(finding["kind"])), _code_input("severity", str(finding["severity"]))]
    inputs += [
        {
            "type": {"coding": [{"system": policy.TASK_INPUT_SYSTEM, "code": "evidence"}]},
            "valueReference": {"reference": ref},
        }
        for ref in evidence
    ]
    inputs += [_fact_input(fact) for fact in finding.get("facts", [])]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": key,
        "meta": {
            "tag": [
                {
                    "system": policy.KB_VERSION_SYSTEM,
                    "code": str(knowledge_base.get("version")),
                    "display": str(knowledge_base.get("name")),
                },
                {"system": policy.KB_DIGEST_SYSTEM, "code": str(knowledge_base.get("digest"))},
            ]
        },
        "identifier": [{"system": policy.TASK_KEY_SYSTEM, "value": key}],
        "status": "requested",
        "intent": "proposal",
        "priority": policy.PRIORITY.get(str(finding["severity"]), "routine"),
        "code": {
            "coding": [{"system": policy.ACTION_SYSTEM, "code": code, "display": policy.ACTION_DISPLAY[code]}],
            "text": policy.ACTION_DISPLAY[code],
        },
        "description": str(finding.get("summary", "")),
    }
    if focus is not None:
        task["focus"] = {"reference": focus}
    task["for"] = for_ref
    task["authoredOn"] = authored_on
    task["reasonCode"] = {
        "coding": [{"system": policy.RULE_SYSTEM, "code": finding["rule_id"], "version": str(finding["rule_version"])}],
        "text": f"{finding['rule_id']} v{finding['rule_version']}",
    }
    task["input"] = inputs
    return task


def worklist_row(
    task: Mapping[str, Any], finding: Mapping[str, Any], boundaries_of: BoundariesOf | None = None
) -> dict[str, Any]:
    """The flat view of one Task that the CSV and HTML worklists show; a number rounded no further than the numbers
    it is compared with allow (``boundaries_of``, the engine's ``fact_boundaries`` for the run's settings; an item
    carried over from the previous run has none, and its numbers keep the guarded default)."""
    facts = [_fact(data) for data in finding.get("facts", [])]
    shown = boundaries_of or (lambda name: None)
    for_ref = task["for"]
    return {
        "severity": finding["severity"],
        "priority": task["priority"],
        "patient": str(for_ref["reference"]).removeprefix("Patient/"),
        "name": for_ref.get("display", ""),
        "mrn": (for_ref.get("identifier") or {}).get("value", ""),
        "rule": finding["rule_id"],
        "version": finding["rule_version"],
        "kind": finding["kind"],
        "action": task["code"]["coding"][0]["code"],
        "summary": task["description"],
        "values": "; ".join(
            f"{fact.name} = {fact.display(shown(fact.name))}" for fact in facts if fact.value is not None
        ),
        "missing": "; ".join(fact.name for fact in facts if fact.value is None),
        "focus": (task.get("focus") or {}).get("reference", ""),
        "task": task["id"],
    }


def finding_of_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """What a worklist row needs of a finding, read back from the Task built for it (an item carried over from the
    previous run has only its Task)."""
    codes: dict[str, str] = {}
    facts: list[dict[str, Any]] = []
    for item in task.get("input") or ():
        coding = item["type"]["coding"][0]
        if coding["system"] == policy.TASK_INPUT_SYSTEM and "valueCode" in item:  # evidence holds references
            codes[coding["code"]] = item["valueCode"]
        elif coding["system"] == policy.FACT_SYSTEM:
            facts.append(_fact_of_input(coding["code"], item))
    reason = task["reasonCode"]["coding"][0]
    return {
        "severity": codes.get("severity", "info"),
        "kind": codes.get("finding-kind", ""),
        "rule_id": reason["code"],
        "rule_version": int(reason["version"]),
        "facts": facts,
    }


def _fact_of_input(name: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``_fact_input``."""
    fact: dict[str, Any] = {"name": name, "value": None}
    if "valueQuantity" in item:
        fact["value"], fact["unit"] = item["valueQuantity"]["value"], item["valueQuantity"]["unit"]
    elif item.get("valueString") != "missing":
        kind = next(key for key in item if key.startswith("value"))
        fact["value"] = item[kind]
    for extension in item.get("extension") or ():
        if extension["url"].endswith("/fact-date"):
            fact["date"] = extension["valueString"]
        elif extension["url"].endswith("/fact-stale"):
            fact["stale"] = True
    return fact


def close_task(task: Mapping[str, Any], *, status: str, reason: str, when: str) -> dict[str, Any]:
    """A previous run's Task marked ``completed`` or ``cancelled`` because its finding no longer fires."""
    closed = dict(task)
    closed["status"] = status
    closed["statusReason"] = {"text": reason}
    closed["lastModified"] = when
    return closed
