"""Prefetch: templates derived from the facts the rules read, token rendering, and sorting what a client sent.

A prefetch value is one of: absent (the service fetches the query itself), ``null`` (no data), an
OperationOutcome (the client failed: an error, never "no data"), a resource, or a searchset Bundle whose
``next`` links must be followed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spasticity_cds.cds_hooks.models import PrefetchResource
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.fhir.model import Resource

PATIENT_TOKEN = "{{context.patientId}}"
TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
CONTEXT_TOKENS = ("userId", "patientId", "encounterId")
SEARCH_PAGE_SIZE = 100
#: Observation categories (HL7 observation-category) searched for observations that carry only text: labs, vital
#: signs, scores and questionnaires, examination and therapist findings, procedure results such as spirometry.
TEXT_OBSERVATION_CATEGORIES = ("laboratory", "vital-signs", "survey", "exam", "therapy", "procedure")


@dataclass(frozen=True)
class Template:
    """One prefetch key: a relative FHIR read or search, and whether the hook cannot run without it."""

    key: str
    query: str
    required: bool
    what: str
    follow_next: bool = True


@dataclass
class PrefetchPlan:
    """What the client sent, sorted: resources in hand (typed, or plain JSON when the body did not fit the typed
    view), queries still to run, and inputs that failed."""

    resources: list[dict[str, Any] | Resource] = field(default_factory=list)
    to_fetch: dict[str, str] = field(default_factory=dict)
    next_pages: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    absent_data: list[str] = field(default_factory=list)


def _fact_families(names: Iterable[str], engine: Engine) -> set[str]:
    """Resource families needed for a set of fact names (``def.`` names expand to their definitions)."""
    families: set[str] = set()
    pending, seen = list(names), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        prefix = name.split(".", 1)[0]
        if prefix == "def":
            definition = engine.definitions.get(name[4:])
            pending.extend(definition.facts_used() if definition is not None else ())
        elif prefix in ("med", "medclass", "antispastic"):
            families.add("medications")
            if name.rsplit(".", 1)[-1].startswith("for_"):
                families.add("conditions")  # a stated reason can be a Condition its reasonReference names
        elif prefix == "dose":
            families.update(("medications", "observations"))
        elif prefix in ("obs", "condition", "procedure"):
            families.add({"obs": "observations", "condition": "conditions", "procedure": "procedures"}[prefix])
    return families


def facts_of_rules(engine: Engine, *, order_checks: bool) -> list[str]:
    """Fact names read by the rules a service runs (order services: rules about an agent)."""
    names: list[str] = []
    for compiled in engine.rules:
        if order_checks and not compiled.rule.agents:
            continue
        names.extend(compiled.tree.facts_used())
    for step in engine.ladder:
        names.extend((*step.current_when, *step.proposed_when, *step.outside_when))
    return names


def observation_codes(engine: Engine) -> list[str]:
    """``system|code`` tokens of every observation concept in the knowledge base's value sets."""
    codes = [
        f"{coding.system}|{coding.code}"
        for concept in engine.vocabulary.concepts.values()
        if concept.kind == "observation"
        for coding in concept.codings
    ]
    return list(dict.fromkeys(codes))


def templates_for(engine: Engine, *, order_checks: bool) -> list[Template]:
    """The prefetch templates of a service, within the CDS Hooks 2.0 query restrictions."""
    families = _fact_families(facts_of_rules(engine, order_checks=order_checks), engine)
    patient = f"patient={PATIENT_TOKEN}"
    out = [Template("patient", f"Patient/{PATIENT_TOKEN}", True, "the patient (age, sex)")]
    if "conditions" in families:
        out.append(Template("conditions", f"Condition?{patient}", True, "conditions"))
    if "medications" in families:
        out.append(Template("medications", f"MedicationRequest?{patient}", True, "medication orders"))
        out.append(Template("statements", f"MedicationStatement?{patient}", False, "medication statements"))
    if "observations" in families:
        codes = ",".join(observation_codes(engine))
        query = f"Observation?{patient}&code={codes}&_sort=-date&_count={SEARCH_PAGE_SIZE}"
        out.append(Template("observations", query, False, "laboratory results, vital signs and scores"))
        out.append(_text_observations_template())
    if "procedures" in families:
        out.append(Template("procedures", f"Procedure?{patient}", False, "procedures"))
        out.append(Template("devices", f"Device?{patient}", False, "devices (feeding tube, ventilation)"))
    return out


def _text_observations_template() -> Template:
    """The most recent observations by category, whatever their code: the only way to reach text-only entries.

    A code search never returns an Observation that has ``code.text`` but no coding, so this bounded search
    (one page of ``SEARCH_PAGE_SIZE``, newest first, ``next`` never followed) runs beside it; the reader
    collapses the overlap by id and matches the text against the value sets' text patterns.
    """
    categories = ",".join(TEXT_OBSERVATION_CATEGORIES)
    query = f"Observation?patient={PATIENT_TOKEN}&category={categories}&_sort=-date&_count={SEARCH_PAGE_SIZE}"
    what = f"the {SEARCH_PAGE_SIZE} most recent observations by category (for those recorded as text only)"
    return Template("recentObservations", query, False, what, follow_next=False)


def render(query: str, context: Mapping[str, Any]) -> str | None:
    """The query with its prefetch tokens filled from the context; None when a token has no value."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        if name.startswith("context.") and name[8:] in CONTEXT_TOKENS:
            found = context.get(name[8:])
        elif name in USER_TOKENS:
            found = _user_id(context.get("userId"), USER_TOKENS[name])
        else:
            found = None
        if not isinstance(found, str) or not found:
            missing = True
            return ""
        return found

    rendered = TOKEN.sub(value, query)
    return None if missing else rendered


def _user_id(user: object, resource_type: str) -> str | None:
    if isinstance(user, str) and user.startswith(f"{resource_type}/"):
        return user.split("/", 1)[1]
    return None


def plan_prefetch(
    templates: list[Template], prefetch: Mapping[str, Any] | None, context: Mapping[str, Any]
) -> PrefetchPlan:
    """Sort each template's prefetch value into resources, queries to run, pages to follow and failures."""
    plan = PrefetchPlan()
    given = prefetch or {}
    for template in templates:
        query = render(template.query, context)
        if query is None:
            continue
        if template.key not in given:
            plan.to_fetch[template.key] = query
            continue
        _sort_value(template, query, given[template.key], plan)
    return plan


def _sort_value(template: Template, query: str, value: Any, plan: PrefetchPlan) -> None:
    key = template.key
    if value is None:
        plan.absent_data.append(key)
        return
    resource_type = _resource_type(value)
    if resource_type is None:
        plan.failed[key] = "the prefetched value is not a FHIR resource"
        return
    if resource_type == "OperationOutcome":
        plan.to_fetch[key] = query
        plan.failed[key] = "the client reported an error (OperationOutcome) for this prefetch"
        return
    if isinstance(value, dict) and "entry" in value and not isinstance(value["entry"], list):
        # Read as empty, a Bundle of another shape would hide the patient's data (no ALS: no cards at all).
        plan.to_fetch[key] = query
        plan.failed[key] = "the prefetched Bundle's entry is not an array"
        return
    plan.resources.append(value)
    following = next_link(value) if template.follow_next else None
    if following is not None:
        plan.next_pages[key] = following


def _resource_type(value: object) -> str | None:
    """The resourceType of a typed or plain-JSON prefetch value; None when it is not a FHIR resource."""
    if isinstance(value, Resource):
        return value.resource_type
    found = value.get("resourceType") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def next_link(resource: Mapping[str, Any] | Resource) -> str | None:
    """The ``next`` page URL of a searchset Bundle, if any."""
    if isinstance(resource, Resource):
        return _typed_next_link(resource)
    if resource.get("resourceType") != "Bundle":
        return None
    for link in resource.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            url: str = link["url"]
            return url
    return None


def _typed_next_link(resource: Resource) -> str | None:
    if resource.resource_type != "Bundle" or not isinstance(resource, PrefetchResource):
        return None
    return next((link.url for link in resource.link or () if link.relation == "next" and link.url), None)


def bundle_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The resources of a searchset page, leaving out OperationOutcome entries (search warnings)."""
    out = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
            out.append(resource)
    return out
