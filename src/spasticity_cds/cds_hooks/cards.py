"""Cards from the evaluator's findings: one card per decision, KB text with its citations, data used and missing."""

from __future__ import annotations

import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from spasticity_cds.cds_hooks.orders import (
    UNIT_DOSE_UNITS,
    UNNAMED_DRAFT,
    DraftOrder,
    adjusted_order,
    mg_per_unit,
    structured_dose,
    unit_text,
)
from spasticity_cds.engine.display import BoundariesOf
from spasticity_cds.engine.dosing import steps_text
from spasticity_cds.engine.evaluator import RULED_OUT, Engine
from spasticity_cds.engine.facts import number_text

SUMMARY_LIMIT = 140
RULE_SYSTEM = "http://spasticity-cds.org/fhir/CodeSystem/rule"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("action-completed", "Recommended action was already completed"),
    ("action-performed-no-adverse-effect", "Intended action was performed previously without adverse effect"),
    (
        "need-more-info",
        "Could not address recommended action due to need for more information/pending results/pending consult",
    ),
    ("risk-benefit-ratio", "Recipient assessment of risk/benefit ratio"),
    ("does-not-align-latest-evidence", "Recommended action does not align with the latest evidence"),
    ("prefers-alternative", "Patient prefers an alternative approach or treatment"),
    ("patient-refuses", "Patient refuses/declines (no context given)*"),
)
#: The CodeSystem marks some displays with a footnote asterisk ("... (no context given)*"): a clinician choosing a
#: reason sees the display, and the mark means nothing there.
OVERRIDE_CODINGS = tuple(
    {"system": NON_ADHERENCE, "code": code, "display": text.rstrip("*")} for code, text in OVERRIDE_REASONS
)
LIVER_PANEL = {
    "coding": [
        {"system": "http://loinc.org", "code": "24325-3", "display": "Hepatic function 2000 panel - Serum or Plasma"}
    ],
    "text": "Liver tests (ALT, AST, alkaline phosphatase, bilirubin)",
}
#: A userId that can be an order's requester: a Practitioner or PractitionerRole reference with an id
#: ("Practitioner/" alone names no one).
PRACTITIONER = re.compile(r"(?:Practitioner|PractitionerRole)/[^/\s]+")
PATIENT_VIEW_KINDS = frozenset({"contraindication", "warning", "dose", "monitoring"})
ORDER_KINDS = frozenset({"contraindication", "warning", "dose", "monitoring", "info"})
DOSE_STEP = {"mg": 0.5, "g": 0.0005}
HALF = 0.5
UNNAMED = f"MedicationRequest/{UNNAMED_DRAFT}"
#: How a card names a draft order sent without an id.
UNNAMED_TEXT = "the draft order (sent without an id)"


@dataclass(frozen=True)
class CardContext:
    """Everything about the call that a card needs beyond the finding."""

    service_id: str
    hook: str
    hook_instance: str
    patient_id: str
    user_id: str | None
    base_url: str
    #: The SMART launch a card links to; None when the app would refuse the launch (then no smart link).
    smart_launch_url: str | None
    now: datetime
    unavailable: Mapping[str, str] = field(default_factory=dict)
    orders: tuple[DraftOrder, ...] = ()


@dataclass(frozen=True)
class IssuedCardInfo:
    """What the store must remember about a card so that feedback joins back to its rule."""

    card_uuid: str
    rule_id: str
    rule_version: int
    #: The uuids of the card's suggestions: feedback may accept only these.
    suggestion_uuids: tuple[str, ...] = ()


def compact(value: Any) -> Any:
    """The value without null or empty strings, arrays and objects anywhere (CDS Hooks JSON rules)."""
    if isinstance(value, dict):
        pairs = ((key, _compacted(inner)) for key, inner in value.items())
        return {key: inner for key, inner in pairs if inner is not _DROP}
    if isinstance(value, list):
        return [inner for inner in map(_compacted, value) if inner is not _DROP]
    return value


#: What ``_compacted`` returns for a value to leave out.
_DROP = object()


def _compacted(value: Any) -> Any:
    if isinstance(value, dict | list):
        value = compact(value)
        return value if value else _DROP
    return _DROP if value is None or value == "" else value


def rule_url(base_url: str, rule_id: str) -> str:
    """The absolute URL of a rule's knowledge-base page under the public base URL."""
    return f"{base_url.rstrip('/')}/kb/rules/{rule_id}"


def short_summary(text: str) -> str:
    """One sentence under 140 characters, cut at a word boundary when longer."""
    text = " ".join(text.split())
    if len(text) < SUMMARY_LIMIT:
        return text
    cut = text[: SUMMARY_LIMIT - 2].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return f"{cut}…"


class _UuidSource:
    """Random (version 4) uuids cut from ``os.urandom`` read 4 KiB at a time: one system call per 256 uuids, where
    ``uuid.uuid4`` makes one per uuid (measured at about 20 microseconds each here, several per hook call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        if hasattr(os, "register_at_fork"):  # POSIX: a forked worker must never repeat its parent's uuids
            os.register_at_fork(after_in_child=self._forget)

    def __call__(self) -> str:
        with self._lock:
            if self._at + 16 > len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            raw = self._pool[self._at : self._at + 16]
            self._at += 16
        return str(uuid.UUID(bytes=raw, version=4))

    def _forget(self) -> None:
        self._pool, self._at = b"", 0


#: The uuid of every card and suggestion.
random_uuid = _UuidSource()


class CardBuilder:
    """Turns one evaluation result into cards for one hook call."""

    def __init__(self, engine: Engine, new_uuid: Callable[[], str] | None = None) -> None:
        self.engine = engine
        self.new_uuid = new_uuid or random_uuid

    def build(self, result: Mapping[str, Any], ctx: CardContext) -> tuple[list[dict[str, Any]], list[IssuedCardInfo]]:
        """The cards (compact JSON objects) and, for each, the rule it came from."""
        if not result.get("in_scope", False):
            return [], []
        findings = self._relevant(result, ctx)
        cards: list[dict[str, Any]] = []
        issued: list[IssuedCardInfo] = []
        for group in _groups(findings):
            if not ctx.orders and not self._decision_on_view(group, result):
                continue
            card = self._card(group, result, ctx)
            if card is not None:
                cards.append(card)
                suggestions = tuple(suggestion["uuid"] for suggestion in card.get("suggestions", ()))
                issued.append(IssuedCardInfo(card["uuid"], group[0]["rule_id"], group[0]["rule_version"], suggestions))
        return cards, issued

    # -- which findings ------------------------------------------------------------------------------

    def _relevant(self, result: Mapping[str, Any], ctx: CardContext) -> list[Mapping[str, Any]]:
        findings: Iterable[Mapping[str, Any]] = result["findings"]
        if not ctx.orders:
            # The regimen: what the patient takes, and what the chart already holds as a draft order (a finding
            # about it, critical or not, must not be hidden while another one naming it is shown), whatever for: a
            # drug taken outside the spasticity ladder keeps its warnings (a palliative benzodiazepine with an opioid).
            regimen = {
                o["agent"]
                for o in result["options"]
                if o.get("current") or o.get("proposed") or o.get("outside_ladder")
            }
            return [f for f in findings if _about_the_regimen(f, regimen)]
        agents = {order.agent for order in ctx.orders if order.agent}
        references = {order.reference for order in ctx.orders}
        out = []
        for finding in findings:
            about_order = bool(agents & set(finding["agents"])) or bool(references & set(finding["evidence"]))
            if not about_order:
                continue
            if finding["kind"] == "data-gap" and (finding["severity"] == "info" or _dose_not_entered_yet(finding, ctx)):
                continue
            if finding["kind"] != "data-gap" and finding["kind"] not in ORDER_KINDS:
                continue
            if finding["severity"] == "info" and not finding.get("action"):
                continue
            out.append(finding)
        return out

    # -- one card --------------------------------------------------------------------------------------

    def _card(
        self, group: list[Mapping[str, Any]], result: Mapping[str, Any], ctx: CardContext
    ) -> dict[str, Any] | None:
        lead = group[0]
        if lead.get("action") == "renal-dose" and ctx.orders and self._order_fits(lead, result, ctx):
            return None
        suggestions, behaviour = self._suggestions(group, result, ctx)
        card_uuid = self.new_uuid()
        summary = lead["summary"] if lead["kind"] != "data-gap" or len(group) == 1 else _gap_summary(group)
        card: dict[str, Any] = {
            "uuid": card_uuid,
            "summary": short_summary(summary),
            "indicator": _indicator(group),
            "detail": self._detail(group, summary, result, ctx),
            "source": compact(self._source(lead, result, ctx)),
            "overrideReasons": list(OVERRIDE_CODINGS),
            "links": compact(self._links(lead, card_uuid, ctx)),
            "extension": {
                "org.spasticity-cds.rule": {"id": lead["rule_id"], "version": lead["rule_version"]},
                "org.spasticity-cds.kbVersion": result["knowledge_base"]["version"],
                "org.spasticity-cds.findings": [f["id"] for f in group],
            },
        }
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = behaviour
        return card

    def _source(self, finding: Mapping[str, Any], result: Mapping[str, Any], ctx: CardContext) -> dict[str, Any]:
        kb = result["knowledge_base"]
        return {
            "label": f"ALS spasticity CDS, knowledge base {kb['version']}",
            "url": rule_url(ctx.base_url, finding["rule_id"]),
            "topic": {
                "system": RULE_SYSTEM,
                "code": finding["rule_id"],
                "display": f"Rule {finding['rule_id']} v{finding['rule_version']}",
            },
        }

    def _links(self, finding: Mapping[str, Any], card_uuid: str, ctx: CardContext) -> list[dict[str, Any]]:
        evidence = {
            "label": f"Evidence for rule {finding['rule_id']}",
            "url": rule_url(ctx.base_url, finding["rule_id"]),
            "type": "absolute",
        }
        if ctx.smart_launch_url is None:
            return [evidence]
        app_context = orjson.dumps(
            {
                "ruleId": finding["rule_id"],
                "ruleVersion": finding["rule_version"],
                "cardUuid": card_uuid,
                "hookInstance": ctx.hook_instance,
                "patientId": ctx.patient_id,
            },
        ).decode()
        return [
            {
                "label": "Open the spasticity plan",
                "url": ctx.smart_launch_url,
                "type": "smart",
                "appContext": app_context,
            },
            evidence,
        ]

    # -- detail (FDA criterion 4: the basis, the data used and what was missing) -------------------------

    def _detail(self, group: list[Mapping[str, Any]], summary: str, result: Mapping[str, Any], ctx: CardContext) -> str:
        """The card's Markdown: every text from the knowledge base or the record is escaped (``literal``), so a
        dosage text or an order id shows as written and can never become a link, an image or HTML."""
        parts = [literal(summary) if len(summary) >= SUMMARY_LIMIT and len(group) == 1 else ""]  # else in bold below
        for finding in group:
            if len(group) > 1:
                parts.append(f"**{literal(finding['summary'])}**")
            parts.append(literal(finding["detail"]))
        plans = [_plan_block(option) for option in _dosed_options(group, result)]
        parts.extend(block for block, _ in plans)
        boundaries_of = self.engine.fact_boundaries(result.get("settings"))
        used = [line for finding in group for line in self._fact_lines(finding, boundaries_of)]
        parts.append("**Patient data used:**\n" + ("\n".join(dict.fromkeys(used)) if used else "- none"))
        missing = self._missing_lines(group, ctx)
        parts.append(
            "**Missing or out of date:**\n"
            + ("\n".join(dict.fromkeys(missing)) if missing else "- nothing the rule needs")
        )
        cited = [c for f in group for c in f["citations"]] + [c for _, refs in plans for c in refs]
        parts.append("**Sources:**\n" + "\n".join(dict.fromkeys(_citation_line(c) for c in cited)))
        rules = ", ".join(dict.fromkeys(f"{f['rule_id']} v{f['rule_version']}" for f in group))
        kb = result["knowledge_base"]
        parts.append(
            literal(f"Rule {rules}; knowledge base {kb['version']}.")
            + " Decision support for a clinician: review the basis above."
        )
        return "\n\n".join(part for part in parts if part)

    def _fact_lines(self, finding: Mapping[str, Any], boundaries_of: BoundariesOf) -> list[str]:
        lines = []
        for fact in finding["facts"]:
            if fact.get("value") is None or fact.get("stale"):
                continue
            value = _fact_value(fact, boundaries_of)
            sources = ", ".join(ref if _named(ref) else UNNAMED_TEXT for ref in fact.get("sources", ()))
            note = f"; {fact['note']}" if fact.get("note") else ""
            line = f"{self.engine.fact_label(fact['name'])}: {value}{note}" + (f" ({sources})" if sources else "")
            lines.append(f"- {literal(line)}")
        return lines

    def _missing_lines(self, group: list[Mapping[str, Any]], ctx: CardContext) -> list[str]:
        lines = []
        for finding in group:
            for fact in finding["facts"]:
                if fact.get("value") is None or fact.get("stale"):
                    why = fact.get("note") or ("too old to use" if fact.get("stale") else "not in the record")
                    lines.append(f"{self.engine.fact_label(fact['name'])}: {why}")
            lines.extend(f"{self.engine.fact_label(name)}: not in the record" for name in finding.get("missing", ()))
        lines.extend(f"{what}: {why}" for what, why in ctx.unavailable.items())
        return [f"- {literal(line)}" for line in lines]

    # -- suggestions -----------------------------------------------------------------------------------

    def _suggestions(
        self, group: list[Mapping[str, Any]], result: Mapping[str, Any], ctx: CardContext
    ) -> tuple[list[dict[str, Any]], str]:
        """The card's suggestions: removing a draft the findings rule out comes first, the other actions follow.

        Removing the draft and changing its dose exclude each other (``at-most-one``; the dose change is then an
        unrecommended alternative). Liver tests go with anything (``any``); beside a removal they no longer name
        the removed draft as their reason.
        """
        withdrawals = self._withdrawal_suggestions(group, ctx)
        renal = self._renal_suggestions(group, result, ctx)
        liver_finding = next((f for f in group if f.get("action") == "liver-test"), None)
        liver = [self._liver_suggestion(liver_finding, ctx, cite_drafts=not withdrawals)] if liver_finding else []
        if not withdrawals:
            return (liver, "any") if liver else (renal, "at-most-one")
        if renal:
            for alternative in renal:
                alternative.pop("isRecommended", None)
            return [*withdrawals, *renal], "at-most-one"
        return [*withdrawals, *liver], ("any" if liver else "at-most-one")

    def _withdrawal_suggestions(self, group: list[Mapping[str, Any]], ctx: CardContext) -> list[dict[str, Any]]:
        """A ``delete`` of the named drafts of every agent the findings set to avoid or contraindicated."""
        ruled_out = {agent for finding in group for agent in _ruled_out(finding)}
        named = {o.reference: o for o in ctx.orders if o.agent in ruled_out and _named(o.reference)}
        drafts = list(named.values())  # one delete per draft, even when the client sent one id twice
        if not drafts:
            return []
        names = " and ".join(dict.fromkeys(_order_name(order) for order in drafts))
        actions = [
            {
                "type": "delete",
                "description": f"Remove the draft order {order.reference}",
                "resourceId": order.reference,
            }
            for order in drafts
        ]
        label = f"Remove the {names} order" + ("s" if len(drafts) > 1 else "")
        return [{"label": label, "uuid": self.new_uuid(), "isRecommended": True, "actions": actions}]

    @staticmethod
    def _ceiling(agent: str, result: Mapping[str, Any]) -> float | None:
        """The agent's kidney-adjusted daily ceiling, as the findings about it read it (an option ruled out has no
        dose plan to take it from)."""
        name = f"dose.{agent}.ceiling"
        ceiling: Mapping[str, Any] = next(
            (f for finding in result["findings"] for f in finding["facts"] if f["name"] == name), {}
        )
        value = ceiling.get("value")
        return float(value) if isinstance(value, int | float) and not ceiling.get("stale") else None

    def _decision_on_view(self, group: list[Mapping[str, Any]], result: Mapping[str, Any]) -> bool:
        """Whether a group is worth a card on patient-view: something needs attention (``_needs_attention``), and
        a kidney-dose group only while a current daily dose is above its ceiling, as an order within it is silent."""
        if not any(_needs_attention(finding) for finding in group):
            return False  # a standing reminder: it would be the same card at every chart open
        lead = group[0]
        return lead.get("action") != "renal-dose" or not self._regimen_fits(lead, result)

    def _regimen_fits(self, finding: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
        """Whether the current daily dose of every agent of a kidney-dose finding is known and within its ceiling."""
        doses = {option["agent"]: option.get("daily_dose") or {} for option in result.get("options", ())}
        for agent in finding["agents"]:
            daily, ceiling = doses.get(agent, {}).get("value"), self._ceiling(agent, result)
            if not isinstance(daily, int | float) or ceiling is None or daily > ceiling + 1e-9:
                return False
        return bool(finding["agents"])

    def _order_fits(self, finding: Mapping[str, Any], result: Mapping[str, Any], ctx: CardContext) -> bool:
        """A kidney-dose finding is silent on an order whose daily dose is already within the ceiling."""
        matched = False
        for order in ctx.orders:
            if order.agent is None or order.agent not in finding["agents"]:
                continue
            matched = True
            dose, ceiling = structured_dose(order.resource), self._ceiling(order.agent, result)
            per_unit = mg_per_unit(dose, order.strength_mg) if dose else None
            if ceiling is None:
                return False
            if dose is None or per_unit is None:
                # No coded dose: the evaluator may still have read it (from the dosage text) and placed it.
                if not _placed_within(order.agent, result):
                    return False
            elif dose.value * per_unit * dose.per_day > ceiling + 1e-9:
                return False
        return matched

    def _renal_suggestions(
        self, group: list[Mapping[str, Any]], result: Mapping[str, Any], ctx: CardContext
    ) -> list[dict[str, Any]]:
        agents = {agent for finding in group if finding.get("action") == "renal-dose" for agent in finding["agents"]}
        out = []
        for order in ctx.orders:
            if order.agent is None or order.agent not in agents:
                continue
            ceiling, dose = self._ceiling(order.agent, result), structured_dose(order.resource)
            per_unit = mg_per_unit(dose, order.strength_mg) if dose else None
            if ceiling is None or dose is None or per_unit is None or not _named(order.reference):
                continue
            first_step = _first_step_down(order.agent, result)  # taken now: the first step down, never all at once
            goal = ceiling if first_step is None else first_step
            step = _dose_step(dose.unit, per_unit, order.strength_mg)
            new_value = _within(goal / dose.per_day / per_unit, step)
            if first_step is not None and new_value * dose.per_day * per_unit < first_step - 1e-9:
                # A step down must not overshoot the plan's step (the product cannot give it exactly): the next dose
                # it can give, if that is still a reduction.
                new_value = round(new_value + step, 9)
            if new_value <= 0 or new_value >= dose.value:
                continue
            # The order's maxDosePerPeriod must not allow more than the daily dose aimed at now (the ceiling, or the
            # first step down to it), nor forbid that dose.
            aimed = max(goal, new_value * dose.per_day * per_unit)
            updated = _answerable(adjusted_order(order.sent, new_value, dose.per_day, aimed / per_unit))
            if updated is None:
                continue
            stepped = first_step is not None
            label = _reduce_label(new_value, dose.unit, per_unit, dose.per_day, ceiling, order.strength_mg, stepped)
            out.append(
                {
                    "label": label,
                    "uuid": self.new_uuid(),
                    "isRecommended": True,
                    "actions": [
                        {
                            "type": "update",
                            "description": f"Update {order.reference} to the kidney-adjusted dose",
                            "resource": updated,
                        }
                    ],
                }
            )
        return out[:1]

    def _liver_suggestion(self, finding: Mapping[str, Any], ctx: CardContext, *, cite_drafts: bool) -> dict[str, Any]:
        requester = ctx.user_id if ctx.user_id and PRACTITIONER.fullmatch(ctx.user_id) else None
        drafts = ctx.orders if cite_drafts else ()
        reasons = [{"reference": o.reference} for o in drafts if o.agent in finding["agents"] and _named(o.reference)]
        resource = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "category": [
                {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}
                    ]
                }
            ],
            "code": LIVER_PANEL,
            "subject": {"reference": f"Patient/{ctx.patient_id}"},
            "authoredOn": ctx.now.isoformat(timespec="seconds"),
            "requester": {"reference": requester} if requester else None,
            "reasonReference": reasons,
            "note": [
                {"text": f"Suggested by rule {finding['rule_id']} v{finding['rule_version']}: {finding['summary']}"}
            ],
        }
        return {
            "label": "Order liver tests (ALT, AST, alkaline phosphatase, bilirubin)",
            "uuid": self.new_uuid(),
            "isRecommended": True,
            "actions": [{"type": "create", "description": "Create a liver-test order", "resource": compact(resource)}],
        }


def _dosed_options(group: list[Mapping[str, Any]], result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The options, taken or being ordered, of the agents the group's dose findings speak of, and of those its
    findings rule out (only an agent taken has a dose plan then: the way off it)."""
    agents = {agent for f in group if f["kind"] == "dose" or f.get("action") == "renal-dose" for agent in f["agents"]}
    agents |= {agent for f in group for agent in _ruled_out(f)}
    return [o for o in result["options"] if o["agent"] in agents and (o.get("dose_plan") or {}).get("placement")]


def _dose_plan_of(agent: str, result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The dose plan of the agent's option in the result; empty when it has none."""
    option: Mapping[str, Any] = next((o for o in result["options"] if o["agent"] == agent), {})
    plan: Mapping[str, Any] = option.get("dose_plan") or {}
    return plan


def _placed_within(agent: str, result: Mapping[str, Any]) -> bool:
    """Whether the evaluator placed the agent's ordered dose within its limit (read from the order, its text too)."""
    placement = _dose_plan_of(agent, result).get("placement") or {}
    return placement.get("state") == "ordered" and placement.get("fit") in ("steps-remain", "no-step-remains", "held")


def _first_step_down(agent: str, result: Mapping[str, Any]) -> float | None:
    """The daily dose of the first step of the agent's reduction to its ceiling, when the patient takes it (not of
    a withdrawal, which ends in stopping)."""
    reduction = _dose_plan_of(agent, result).get("reduction") or {}
    steps = [] if "stop" in reduction else reduction.get("steps") or []
    return float(steps[0]["daily"]) if steps else None


def _plan_block(option: Mapping[str, Any]) -> tuple[str, list[Mapping[str, Any]]]:
    """An option's dose plan as Markdown (where the patient stands, the reduction or remaining steps, the kidney
    adjustment of the steps) and the citations it rests on."""
    plan = option["dose_plan"]
    lines = [plan["placement"]["text"]]
    cited: list[Mapping[str, Any]] = []
    reduction = plan.get("reduction")
    if reduction:
        withdrawal = "stop" in reduction
        lines.append(reduction["text"])
        lines.extend(alternative["text"] for alternative in reduction.get("alternatives") or ())
        if reduction["steps"]:
            lines.append(f"{'Withdrawal' if withdrawal else 'Reduction'} steps: {steps_text(reduction['steps'])}")
        if withdrawal and reduction["stop"].get("date"):
            lines.append(f"Stop on {reduction['stop']['date']}.")
        for key in ("stop_at_once", "pace", "taper"):
            statement = reduction.get(key)
            if statement:
                lines.append(statement["text"])
                cited += statement["citations"]
        because = reduction.get("because") or []
        if because:
            lines.append("Ruled out by " + ", ".join(f"{r['rule_id']} v{r['rule_version']}" for r in because) + ".")
            cited += [c for reason in because for c in reason["citations"]]
    elif plan.get("steps"):
        # Steps above the current dose, or a new start's (an order not taken yet, or a dose that cannot be placed).
        label = "Remaining steps" if plan["placement"]["fit"] == "steps-remain" else "Steps from the start"
        lines.append(f"{label}: {steps_text(plan['steps'])}")
    renal = plan.get("renal_adjustment")
    if renal and renal.get("steps_note"):
        lines.append(f"{renal['text']} {renal['steps_note']}")
        cited += renal["citations"]
    body = "\n".join(f"- {literal(line)}" for line in lines)
    return f"**Dose plan for {literal(option['name'])}:**\n{body}", cited


def _about_the_regimen(finding: Mapping[str, Any], current: set[str]) -> bool:
    """Whether patient-view may show a finding: one about a drug only when the patient is taking it or the chart
    holds a draft order for it (the knowledge base's checks of drugs not taken, "avoid oral baclofen" at eGFR 20 for
    a patient on none, belong to the order hooks, when the drug is ordered); one about no drug (breathing, a liver
    signal) and a referral beyond the current regimen always."""
    agents = set(finding["agents"])
    if finding["kind"] == "recommendation":
        return bool(finding.get("action"))  # a next step (pump referral), not the ladder's standing advice
    if finding["kind"] != "data-gap" and finding["kind"] not in PATIENT_VIEW_KINDS:
        return False
    return not agents or bool(agents & current)


def _needs_attention(finding: Mapping[str, Any]) -> bool:
    """Whether a finding is worth a card on patient-view: a data gap, anything above info, or monitoring that is due
    (it asks for a test, or its rule looked at elapsed time: days on the drug, days since the last test). Other
    info findings ("never stop baclofen abruptly", "watch for sedation", the kidney band of a dose within it) hold
    for as long as the regimen does: as cards they would greet every chart open, so they stay on the clinician
    page and on the order hooks."""
    if finding["kind"] == "data-gap" or finding["severity"] != "info":
        return True
    due = bool(finding.get("action")) or any(fact.get("unit") == "days" for fact in finding["facts"])
    return finding["kind"] == "monitoring" and due


def _named(reference: str) -> bool:
    """Whether a reference names a resource the client knows (a draft sent without an id has only our stand-in)."""
    return not reference.startswith(UNNAMED)


def _dose_not_entered_yet(finding: Mapping[str, Any], ctx: CardContext) -> bool:
    """On order-select the dose is often still being typed: a gap only in the order's own dose is not news."""
    missing = finding.get("missing") or ()
    return ctx.hook == "order-select" and bool(missing) and all(m.startswith(("med.", "dose.")) for m in missing)


def _groups(findings: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """One group per decision: data gaps together; others by action (or kind) and agents, in finding order.

    A kidney-dose group joins the group of a finding that rules the same agents out: whether to give the drug at
    all and at what dose is one decision, so it is one card led by the ruling-out finding, on an order and on
    patient-view alike (two critical cards, "avoid oral baclofen" and "above the kidney-adjusted ceiling", would
    contradict each other).
    """
    groups: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]] = {}
    for finding in findings:
        if finding["kind"] == "data-gap":
            key: tuple[str, tuple[str, ...]] = ("data-gap", ())
        elif finding.get("action"):
            key = (str(finding["action"]), tuple(sorted(finding["agents"])))
        else:
            key = (f"rule:{finding['rule_id']}", ())
        groups.setdefault(key, []).append(finding)
    _merge_dose_groups(groups)
    return list(groups.values())


def _merge_dose_groups(groups: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]]) -> None:
    """Move each ``renal-dose`` group into the first group whose findings rule out all of its agents."""
    for key in [k for k in groups if k[0] == "renal-dose"]:
        target = next(
            (
                group
                for other, group in groups.items()
                if other[0] != "renal-dose" and any(set(key[1]) <= set(_ruled_out(f)) for f in group)
            ),
            None,
        )
        if target is not None:
            target.extend(groups.pop(key))


def _ruled_out(finding: Mapping[str, Any]) -> list[str]:
    """The agents a finding sets to ``avoid`` or ``contraindicated`` (the knowledge base's effects)."""
    effects = finding.get("effects") or {}
    return [agent for agent, status in effects.items() if status in RULED_OUT]


def _order_name(order: DraftOrder) -> str:
    concept = order.resource.get("medicationCodeableConcept") or {}
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) and text.strip() else str(order.agent)


def _indicator(group: list[Mapping[str, Any]]) -> str:
    severities = {f["severity"] for f in group}
    return next(level for level in ("critical", "warning", "info") if level in severities or level == "info")


def _gap_summary(group: list[Mapping[str, Any]]) -> str:
    return f"{len(group)} checks could not be made for lack of data - see the list of missing data."


def _fact_value(fact: Mapping[str, Any], boundaries_of: BoundariesOf) -> str:
    value = fact["value"]
    text = (
        ("yes" if value else "no")
        if isinstance(value, bool)
        else number_text(value, boundaries_of(str(fact["name"])))
        if isinstance(value, float)
        else str(value)
    )
    if fact.get("unit"):
        text = f"{text} {fact['unit']}"
    if fact.get("date"):
        text = f"{text} on {fact['date']}"
    return text


def _citation_line(citation: Mapping[str, Any]) -> str:
    identifiers = citation.get("identifiers") or {}
    link = identifiers.get("url") or (f"https://doi.org/{identifiers['doi']}" if identifiers.get("doi") else None)
    return _cited(citation["title"], citation.get("year"), link, citation["locator"], citation["status"])


@lru_cache(maxsize=1024)
def _cited(title: str, year: object, link: str | None, locator: str, status: str) -> str:
    """One Sources line. Only the knowledge base's citations are memoised (a few dozen, on every card); texts that
    hold patient data are never kept beyond the call."""
    shown = f"[{literal(title)}]({link})" if link else literal(title)
    rest = f"{f' ({year})' if year else ''}, {locator} (evidence: {status})"
    return f"- {shown}{literal(rest)}"


#: The characters that make Markdown or HTML of plain text: code, emphasis, links and images, tags, tables, strike,
#: headings, and the backslash that escapes them; each is written after a backslash (one C pass, not a regex).
_ESCAPED = str.maketrans({character: "\\" + character for character in "\\`*_[]<>!|~#{}"})


def literal(text: str) -> str:
    """Text that shows as written in GitHub-flavoured Markdown: one line, its markup characters escaped."""
    return " ".join(str(text).splitlines()).translate(_ESCAPED)


def _dose_step(unit: str, per_unit: float, strength_mg: float | None) -> float:
    """The smallest dose step the ordered product can be given in, in the dose's unit: half a tablet; 0.5 mg when
    the product's strength is unknown (an order by ingredient in mg), which the suggestion's label then says.

    The knowledge base records a product's strength, not its score line; half tablets are what the labels' own
    schedule needs (baclofen starts at 5 mg three times a day, and its 10 and 20 mg tablets are bisected)."""
    key = unit.strip().lower()
    if key in UNIT_DOSE_UNITS:
        return HALF
    return strength_mg * HALF / per_unit if strength_mg else DOSE_STEP.get(key, HALF)


def _reduce_label(
    value: float,
    unit: str,
    per_unit: float,
    per_day: float,
    ceiling: float,
    strength_mg: float | None,
    first_step: bool,
) -> str:
    """ "Reduce to 10 mg per dose (1 tablet; 30 mg/day, ceiling 40 mg/day)", or, for a dose taken now, the first step
    of the gradual reduction to the ceiling; a unit dose is named a tablet."""
    per_dose_mg = value * per_unit
    if unit.strip().lower() in UNIT_DOSE_UNITS:
        amount = f"{value:g} {unit_text(value, unit)} per dose ({per_dose_mg:g} mg; "
    elif strength_mg:
        tablets = per_dose_mg / strength_mg
        amount = f"{value:g} {unit} per dose ({tablets:g} {unit_text(tablets, '{tablet}')}; "
    else:
        amount = f"{value:g} {unit} per dose (tablet strength unknown: check it can be given; "
    daily = f"{per_dose_mg * per_day:g} mg/day"
    if first_step:
        return (
            f"Reduce to {amount}{daily}), the first step of the gradual reduction to the ceiling of {ceiling:g} mg/day"
        )
    return f"Reduce to {amount}{daily}, ceiling {ceiling:g} mg/day)"


def _within(amount: float, step: float) -> float:
    """The largest dose not above ``amount`` in whole ``step``s; 0 when ``amount`` is not a finite number (a timing
    of one dose per 1e308 days)."""
    steps = amount / step + 1e-9
    # Rounded, so that 26 steps of 0.0005 g read 0.013, not 0.013000000000000001.
    return round(math.floor(steps) * step, 9) if math.isfinite(steps) else 0.0


def _answerable(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The client's draft, compacted, as it can be sent back; None when its JSON cannot be written again (nested
    deeper than Python recurses, or an integer beyond 64 bits, both valid JSON): then no update is suggested."""
    try:
        compacted: dict[str, Any] = compact(resource)
        orjson.dumps(compacted)
    except (RecursionError, orjson.JSONEncodeError):
        return None
    return compacted
