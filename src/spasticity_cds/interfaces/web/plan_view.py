"""Turn one evaluation result into what the patient-plan page shows: groups, traces, calendar, labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from spasticity_cds import api
from spasticity_cds.cds_hooks.models import MAX_ID_CHARS
from spasticity_cds.engine.display import BoundariesOf
from spasticity_cds.engine.evaluator import PLACEHOLDER, Engine
from spasticity_cds.engine.facts import Value, number_text
from spasticity_cds.fhir.record import PatientRecord
from spasticity_cds.interfaces.option_groups import OptionGroup, not_to_start, option_groups
from spasticity_cds.interfaces.web.charts import Chart, build_charts

SEVERITIES = (("critical", "Critical"), ("warning", "Warning"), ("info", "For information"))
STATUS_WORDS = {
    "current": "Current treatment",
    "recommended": "Recommended",
    "consider": "Consider",
    "caution": "Use with caution",
    "avoid": "Avoid",
    "contraindicated": "Contraindicated",
}


@dataclass
class Trace:
    """One rule's explanation: outcome, deciding nodes and the whole tree."""

    rule_id: str
    rule_version: int
    outcome: str
    deciding: list[dict[str, Any]]
    tree: dict[str, Any]
    summary: str


@dataclass
class MonitoringDate:
    """One test due on one date for one agent, with the sources that ask for it."""

    when: date
    agent: str
    test: str
    what: str
    citations: list[dict[str, Any]]
    #: The date it was due, when that has passed (it is shown on today).
    overdue_since: date | None = None


@dataclass
class PlanView:
    """The patient plan page's content."""

    result: dict[str, Any]
    patient: dict[str, str]
    findings_by_severity: list[tuple[str, str, list[dict[str, Any]]]]
    gaps: list[dict[str, Any]]
    why: dict[str, list[Trace]]
    why_not: dict[str, list[Trace]]
    finding_traces: dict[str, Trace]
    calendar: list[tuple[str, list[MonitoringDate]]]
    charts: list[Chart]
    #: The options as the page lists them (``result["options"]`` itself stays in the engine's ranked order).
    option_groups: list[OptionGroup] = field(default_factory=list)
    #: Per agent, the sources of the patient's dose ceiling (labelled maximum and the kidney band in force).
    ceiling_citations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Each fact's name to the numbers its shown value must not be rounded across, under this plan's settings.
    fact_boundaries: BoundariesOf | None = None
    highlight_rule: str | None = None
    card_uuid: str | None = None
    source_label: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


#: How the why-trees' comparison and group labels read.
OPERATOR_WORDS = {"lt": "<", "le": "≤", "gt": ">", "ge": "≥", "eq": "=", "ne": "≠", "in": "is one of", "is": "is"}
GROUP_WORDS = {"all": "All of these", "any": "Any of these", "not": "Not this"}
#: The qualifiers the compiler appends to a check's label, and how they read on the page.
QUALIFIERS = {
    " (not measured counts as not met)": "counts as not met when not measured",
    " (an out-of-date value counts when it meets this)": "an out-of-date value counts when it meets this",
}


def check_text(label: str, engine: Engine) -> str:
    """A why-tree node's label as a clinician reads it: ``obs.egfr lt 30.0`` becomes ``eGFR < 30``."""
    if label in GROUP_WORDS:
        return GROUP_WORDS[label]
    qualifiers: list[str] = []
    for suffix, words in QUALIFIERS.items():
        if suffix in label:
            label = label.replace(suffix, "")
            qualifiers.append(words)
    name, _, rest = label.partition(" ")
    operator, _, threshold = rest.partition(" ")
    subject = engine.fact_label(name).removesuffix(".")
    qualified = f" ({'; '.join(qualifiers)})" if qualifiers else ""
    if operator == "is" and threshold in ("True", "False"):
        return f"{subject}: {'yes' if threshold == 'True' else 'no'}{qualified}"
    if threshold.startswith("setting."):
        threshold = f"the setting {threshold[8:]}"
    elif threshold.endswith(".0") and threshold[:-2].lstrip("-").isdigit():
        threshold = threshold[:-2]
    return f"{subject} {OPERATOR_WORDS.get(operator, operator)} {threshold}".strip() + qualified


def fact_text(fact: Mapping[str, Any], boundaries_of: BoundariesOf | None = None) -> str:
    """A fact's value with unit, date and staleness, as a clinician reads it; a number rounded no further than the
    numbers the knowledge base compares it with allow (``boundaries_of``, the engine's ``fact_boundaries``)."""
    value = fact.get("value")
    if value is None:
        return "missing" + (f" ({fact['note']})" if fact.get("note") else "")
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = number_text(value, boundaries_of(str(fact.get("name"))) if boundaries_of else None)
    else:
        text = str(value)
    if fact.get("unit"):
        text += f" {fact['unit']}"
    if fact.get("date"):
        text += f" ({fact['date']}{', stale' if fact.get('stale') else ''})"
    return text


def instant_text(value: str) -> str:
    """An ISO 8601 instant to the minute as a clinician reads it (``2026-11-25 06:15 UTC``, ``... UTC-05:00``);
    text that is not one is shown as it is."""
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return value
    offset = instant.utcoffset()
    if offset is None:
        return f"{instant:%Y-%m-%d %H:%M}"
    zone = "" if not offset else instant.replace(second=0, microsecond=0).isoformat()[-6:]
    return f"{instant:%Y-%m-%d %H:%M} UTC{zone}"


def patient_banner(record: PatientRecord, now: datetime) -> dict[str, str]:
    """Name, sex, birth date, age and a recorded death from the Patient resource (strings; the template escapes
    them)."""
    patient = record.patient
    names = patient.get("name") or []
    name = ""
    if names and isinstance(names[0], dict):
        first = names[0]
        name = str(
            first.get("text") or " ".join([*(str(g) for g in first.get("given") or []), str(first.get("family") or "")])
        )
    born = str(patient.get("birthDate") or "")
    age = ""
    try:
        birth = date.fromisoformat(born[:10]) if len(born) >= 10 else None
    except ValueError:
        birth = None
    if birth is not None:
        today = now.date()
        age = str(today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day)))
    return {
        "name": name.strip() or "(no name recorded)",
        "sex": str(patient.get("gender") or "not recorded"),
        "birth_date": born or "not recorded",
        "age": age,
        "reference": record.patient_reference,
        "death": record.death_recorded(now) or "",
    }


def storable_card_id(card_uuid: str) -> bool:
    """Whether the store can keep this card id with feedback: a longer one (from an EHR's appContext) would make
    every feedback form on the page fail, so the page leaves it out and the feedback is kept without it."""
    return len(card_uuid) <= MAX_ID_CHARS and "\x00" not in card_uuid


def build_plan(
    record: PatientRecord,
    engine: Engine,
    now: datetime,
    settings: Mapping[str, Value] | None,
    *,
    highlight_rule: str | None = None,
    card_uuid: str | None = None,
    source_label: str = "",
) -> PlanView:
    """Evaluate once, explain every rule the page mentions, and lay out groups, calendar and charts."""
    result = api.evaluate(record, now=now, engine=engine, settings=settings)
    rendered = {f["rule_id"]: f["summary"] for f in result["findings"] if f["kind"] != "data-gap"}
    cache: dict[str, Trace] = {}

    def trace(rule_id: str) -> Trace:
        if rule_id not in cache:
            raw = api.explain(record, rule_id, now=now, engine=engine, settings=settings)
            summary = rendered.get(rule_id) or PLACEHOLDER.sub("…", engine.kb.rules[rule_id].summary)
            cache[rule_id] = Trace(rule_id, raw["rule_version"], raw["outcome"], raw["deciding"], raw["tree"], summary)
        return cache[rule_id]

    active_ids = {compiled.rule.id for compiled in engine.rules}
    why: dict[str, list[Trace]] = {}
    why_not: dict[str, list[Trace]] = {}
    for option in result["options"]:
        agent = option["agent"]
        why[agent] = [trace(rule_id) for rule_id in option["because"] if rule_id in active_ids]
        fired = set(option["because"])
        naming = [
            rule.id
            for rule in engine.kb.rules.values()
            if agent in rule.agents
            and rule.id in active_ids
            and rule.id not in fired
            and (rule.effects or rule.effects_if_unknown)
        ]
        why_not[agent] = [trace(rule_id) for rule_id in sorted(naming)]
    finding_traces = {f["id"]: trace(f["rule_id"]) for f in result["findings"] if f["rule_id"] in active_ids}
    groups = [
        (key, title, [f for f in result["findings"] if f["severity"] == key and f["kind"] != "data-gap"])
        for key, title in SEVERITIES
    ]
    gaps = [f for f in result["findings"] if f["kind"] == "data-gap"]
    active_settings = engine.settings_for(settings)
    return PlanView(
        result=result,
        patient=patient_banner(record, now),
        findings_by_severity=[group for group in groups if group[2]],
        gaps=gaps,
        why=why,
        why_not=why_not,
        finding_traces=finding_traces,
        calendar=monitoring_calendar(result, now),
        charts=build_charts(record, engine, dict(active_settings)),
        option_groups=option_groups(result["options"]),
        ceiling_citations={option["agent"]: ceiling_citations(option) for option in result["options"]},
        fact_boundaries=engine.fact_boundaries(settings),
        highlight_rule=highlight_rule,
        card_uuid=card_uuid if card_uuid and storable_card_id(card_uuid) else None,
        source_label=source_label,
    )


def ceiling_citations(option: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sources of an option's dose ceiling: the labelled maximum's, and the kidney band's when one applies (by
    eGFR, or the lowest band with kidney failure or dialysis on record and no eGFR)."""
    plan = option.get("dose_plan") or {}
    if not plan.get("ceiling"):
        return []
    cited = list(plan["max_basis"]["citations"]) if plan.get("max_basis") else []
    renal = plan.get("renal_adjustment")
    if renal and renal["action"] != "caution":  # a caution band leaves the ceiling at the labelled maximum
        cited += renal["citations"]
    return cited


def monitoring_calendar(result: Mapping[str, Any], now: datetime) -> list[tuple[str, list[MonitoringDate]]]:
    """What is due today (monitoring findings, liver-test actions) and the dates the engine set for each monitoring
    item of the agents the patient takes or is about to start (``schedule``: the next date, overdue ones on it,
    and the further dates of its dated window), by month. A drug ordered or proposed that a rule rules out is not
    to be started (``not_to_start``): nothing is due for it."""
    today = now.date()
    items: list[MonitoringDate] = []
    taking = {
        o["agent"]: o["name"]
        for o in result["options"]
        if (o.get("current") or o.get("proposed") or o.get("outside_ladder")) and not not_to_start(o)
    }
    for finding in result["findings"]:
        if finding["kind"] == "monitoring" or finding.get("action") == "liver-test":
            # Only for agents the patient takes or is about to start: a finding about another agent is no test due.
            agents = [taking[agent] for agent in finding["agents"] if agent in taking]
            if finding["agents"] and not agents:
                continue
            test = "liver" if finding.get("action") == "liver-test" else "review"
            agent_names = ", ".join(agents) or "all agents"
            items.append(MonitoringDate(today, agent_names, test, finding["summary"], finding["citations"]))
    for option in result["options"]:
        if not (option.get("current") or option.get("proposed")) or not_to_start(option):
            continue
        for item in option.get("monitoring") or ():
            dated = item.get("schedule") or {}
            when = [dated["next_due"], *dated.get("then", [])] if "next_due" in dated else []
            when += [dated["review_by"]] if "review_by" in dated else []
            for day in when:
                due = date.fromisoformat(day)
                late = due if due < today else None  # an overdue test is due today, and says since when
                shown = max(due, today)
                items.append(MonitoringDate(shown, option["name"], item["test"], item["what"], item["citations"], late))
    # A test that a finding and the drug's own schedule both put on one day is listed once (the schedule's, which
    # says since when it is overdue).
    unique: dict[tuple[date, str, str], MonitoringDate] = {}
    for entry in items:
        unique[(entry.when, entry.agent, entry.test)] = entry
    months: dict[str, list[MonitoringDate]] = {}
    for entry in sorted(unique.values(), key=lambda m: (m.when, m.agent, m.test)):
        months.setdefault(entry.when.strftime("%B %Y"), []).append(entry)
    return list(months.items())
