"""The pure evaluator: knowledge base compiled once, then facts -> rules -> findings and options per patient."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property, lru_cache
from typing import Any, Literal

from spasticity_cds.engine.display import BoundariesOf, boundaries, thresholds
from spasticity_cds.engine.dosing import (
    Alternative,
    Withdrawal,
    dose_facts,
    dose_plan,
    mark_alternatives,
    withdrawal_plan,
)
from spasticity_cds.engine.extract import FactExtractor
from spasticity_cds.engine.facts import Fact, Value, parse_date
from spasticity_cds.engine.labels import fact_label
from spasticity_cds.engine.logic import CompiledNode, Compiler, Env, Truth
from spasticity_cds.engine.monitoring import schedule
from spasticity_cds.engine.vocabulary import Vocabulary
from spasticity_cds.errors import EvaluationError, InputError, KnowledgeBaseError
from spasticity_cds.fhir.model import Resource
from spasticity_cds.fhir.parse import ParsedInput
from spasticity_cds.fhir.record import PatientRecord, build_record
from spasticity_cds.knowledge.loader import KnowledgeBase, did_you_mean, suggest
from spasticity_cds.knowledge.schema import CitationRef, LadderStep, Monograph, Rule, Setting

RESULT_SCHEMA_VERSION = "1.0"
STATUS_ORDER = {"current": 0, "recommended": 1, "consider": 2, "caution": 3, "avoid": 4, "contraindicated": 5}
# Usable options keep their ladder order whether plain or with caution, so a caution never lifts a later rung
# (a benzodiazepine) above an earlier one (tizanidine); avoided and contraindicated options come last.
RANK_GROUP = {"current": 0, "recommended": 1, "consider": 2, "caution": 2, "avoid": 3, "contraindicated": 4}
SAFETY_STATUSES = frozenset({"caution", "avoid", "contraindicated"})
#: The statuses that rule an option out.
RULED_OUT = frozenset({"avoid", "contraindicated"})
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
KIND_ORDER = {
    "contraindication": 0,
    "warning": 1,
    "dose": 2,
    "monitoring": 3,
    "recommendation": 4,
    "data-gap": 5,
    "info": 6,
}
Effects = dict[str, list[tuple[str, dict[str, Any]]]]
#: Per ladder agent: (taking it now, taking or being ordered it now).
AgentStates = dict[str, tuple[bool, bool]]
PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_\-]*(?:\.[a-z0-9_\-]+)+)\}")


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its compiled tree and every fact it reads: its tree's (definitions expanded), then those its texts
    show (a summary's dose is part of what the clinician is told, so it is part of the finding's basis)."""

    rule: Rule
    tree: CompiledNode
    source_file: str
    facts_read: tuple[str, ...] = ()
    ladder_agents: tuple[str, ...] = ()

    @cached_property
    def facts_read_set(self) -> frozenset[str]:
        """``facts_read`` as a set, to meet a patient's out-of-date facts without a loop per rule."""
        return frozenset(self.facts_read)


class Engine:
    """Everything about the knowledge base that does not depend on the patient, prepared once."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self._citations_cache: dict[int, tuple[list[CitationRef], list[dict[str, Any]]]] = {}
        self._monograph_cache: dict[str, dict[str, Any]] = {}
        self._rule_parts_cache: dict[tuple[str, bool], dict[str, Any]] = {}
        self.defaults: dict[str, Value] = {name: setting.value for name, setting in kb.settings.items()}
        self.choice_settings = sorted(name for name, setting in kb.settings.items() if setting.choices)
        self.vocabulary = Vocabulary(kb.valuesets)
        #: Each concept's display name, by concept id: how facts are labelled for clinicians.
        self.concept_display = {concept.id: concept.display for concept in kb.valuesets.concepts}
        self._default_limits = _numeric(self.defaults)
        self.extractor = self._new_extractor(self._default_limits)
        self.dosed = [m for m in kb.monographs.values() if m.max_daily or m.renal_bands]
        self.fact_names = self._catalogue()
        compiler = Compiler(self.fact_names, self.defaults, set(kb.definitions))
        self.definitions = {
            name: compiler.compile(definition.when, f"definitions.yaml: {name}")
            for name, definition in kb.definitions.items()
        }
        _check_definition_cycles(kb)
        self._check_texts_and_ladder()
        self.ladder = sorted(kb.ladder.steps, key=lambda step: step.position)
        on_ladder = {step.agent for step in self.ladder}
        self.rules = [
            CompiledRule(
                rule,
                tree,
                kb.rule_files[rule.id],
                tuple(self._expand([*tree.facts_used(), *_text_facts(rule)])),
                tuple(agent for agent in rule.agents if agent in on_ladder),
            )
            for rule in kb.rules.values()
            if rule.active
            for tree in [compiler.compile(rule.when, f"{kb.rule_files[rule.id]}: rule {rule.id}.when")]
        ]
        self.rule_by_id = {compiled.rule.id: compiled for compiled in self.rules}
        self.monograph_by_agent: dict[str, Monograph] = dict(kb.monographs)
        #: The sources of the pace of a dose reduction to the ceiling (a named setting).
        self.reduction_pace = kb.settings["dose_reduction_step_days"].citations
        #: The numbers each fact is compared with, which its shown value must not be rounded across.
        self.thresholds = thresholds(kb)
        # Under the default settings (nearly every evaluation) each fact's boundaries are looked up, not rebuilt.
        self._default_boundaries = {name: boundaries(self.thresholds, name, self.defaults) for name in self.thresholds}

    # -- compile-time checks ---------------------------------------------------------------------------

    def _new_extractor(self, limits: Mapping[str, float]) -> FactExtractor:
        kb = self.kb
        return FactExtractor(
            self.vocabulary, kb.valuesets.units, kb.valuesets.egfr_equation, kb.valuesets.stop_reasons, dict(limits)
        )

    def _catalogue(self) -> set[str]:
        """Fact names are exactly those the extractor produces for an empty record (so they cannot drift)."""
        only_patient = ParsedInput()
        only_patient.add_resource(Resource(resource_type="Patient", id="catalogue"))
        facts, _ = self._facts(build_record(only_patient), datetime(2000, 1, 1), self.defaults)
        return set(facts) | {f"setting.{name}" for name in self.defaults}

    def _check_texts_and_ladder(self) -> None:
        """Every placeholder names a fact, a setting or a definition; every ladder condition a fact."""
        known = self.fact_names | {f"def.{name}" for name in self.definitions}
        for rule in self.kb.rules.values():
            for text in (rule.summary, rule.detail, rule.gap_summary or "", rule.stale_summary or ""):
                for name in PLACEHOLDER.findall(text):
                    if name not in known:
                        hint = suggest(name, known)
                        raise KnowledgeBaseError(
                            f"text mentions unknown fact {{{name}}}" + (f"; did you mean {{{hint}}}?" if hint else ""),
                            where=f"{self.kb.rule_files[rule.id]}: rule {rule.id}",
                        )
        for step in self.kb.ladder.steps:
            for name in (*step.current_when, *step.proposed_when, *step.outside_when):
                if name not in self.fact_names:
                    raise KnowledgeBaseError(f"unknown fact {name!r}", where=f"ladder.yaml: {step.agent}")

    def settings_for(self, overrides: Mapping[str, Value] | None) -> Mapping[str, Value]:
        """Defaults with the caller's overrides, each checked (``InputError``, the caller's mistake): a known name,
        one of its declared choices, or a number where the default is one (read-only)."""
        if not overrides:
            return self.defaults
        merged = dict(self.defaults)
        for name, value in overrides.items():
            setting = self.kb.settings.get(name)
            if setting is None:
                raise InputError(f"unknown setting {name!r}" + did_you_mean(name, self.kb.settings))
            merged[name] = _checked_setting(name, setting, value)
        return merged

    def fact_boundaries(self, overrides: Mapping[str, Value] | None = None) -> BoundariesOf:
        """For a surface showing a result's facts: each fact's name to the numbers its value must not be rounded
        across under the settings the result was evaluated with (its ``settings``), or None when not known."""
        settings = self.settings_for(overrides)
        return lambda name: self._boundaries(name, settings)

    def _boundaries(self, name: str, settings: Mapping[str, Value]) -> tuple[float, ...] | None:
        if settings is self.defaults:
            return self._default_boundaries.get(name)
        return boundaries(self.thresholds, name, settings)

    # -- per patient -----------------------------------------------------------------------------------

    def _facts(
        self, record: PatientRecord, now: datetime, settings: Mapping[str, Value]
    ) -> tuple[dict[str, Fact], list[str]]:
        facts, notes = self._extractor_for(settings).extract(record, now)
        for monograph in self.dosed:
            facts.update(dose_facts(monograph, facts, settings))
        return facts, notes

    def _extractor_for(self, settings: Mapping[str, Value]) -> FactExtractor:
        """The fact extractor for these settings: the shared one, or its twin reading overridden limits (validity
        windows, default upper limits of normal)."""
        if settings is self.defaults:  # every call without overrides: nothing to compare
            return self.extractor
        limits = _numeric(settings)
        return self.extractor if limits == self._default_limits else self.extractor.with_limits(limits)

    def evaluate(
        self, record: PatientRecord, now: datetime, settings: Mapping[str, Value] | None = None
    ) -> dict[str, Any]:
        """The result contract (design.md section 5) for one patient at ``now``."""
        if now.tzinfo is None:
            raise EvaluationError("`now` must carry a UTC offset")
        active_settings = self.settings_for(settings)
        facts, notes = self._facts(record, now, active_settings)
        env = Env(facts, active_settings, self.definitions)
        in_scope = not any(self._fires(rule_id, env) for rule_id in self.kb.manifest.scope_rules)
        states = self._agent_states(env.facts)
        findings, effects = self._findings(env, in_scope, states)
        options = self._options(env, effects, now, states) if in_scope else []
        findings = _without_overruled_recommendations(findings, options)
        return self._assemble(record, now, active_settings, in_scope, findings, options, notes)

    def _fires(self, rule_id: str, env: Env) -> Truth:
        compiled = self.rule_by_id[rule_id]
        return compiled.tree.evaluate(env)

    def _findings(self, env: Env, in_scope: bool, states: AgentStates) -> tuple[list[dict[str, Any]], Effects]:
        """Findings of every rule that fired or could not decide, and the option-status effects they carry."""
        findings: list[dict[str, Any]] = []
        effects: Effects = {}
        scope_ids = self.kb.manifest.scope_rules
        strict: Env | None = None
        stale = {name for name, fact in env.facts.items() if fact.stale}
        involved_agents = {agent for agent, (_, involved) in states.items() if involved}
        for compiled in self.rules:
            rule = compiled.rule
            if (rule.id in scope_ids) == in_scope:
                continue
            gap_env, rests_on_stale = env, False
            try:
                value = compiled.tree.evaluate(env)
                if value is not None and stale and not stale.isdisjoint(compiled.facts_read_set):
                    strict = strict or env.strict_twin()
                    if compiled.tree.evaluate(strict) is None:
                        # Decided only by an out-of-date value that counted (stale_if_met): a "yes" stands but says
                        # it rests on out-of-date data; a "no" is not known for now, so the rule's gap is said.
                        rests_on_stale = value
                        if not value:
                            value, gap_env = None, strict
            except Exception as error:
                raise EvaluationError(f"rule {rule.id} failed: {error}", where=compiled.source_file) from error
            if value is False:
                continue
            involved = not involved_agents.isdisjoint(compiled.ladder_agents)
            # Another rule speaks for the case (quiet_when): this one's effects stand, its finding or gap is not said.
            quiet = rule.quiet_when is not None and env.definition(rule.quiet_when) is True
            if value is None:
                gap = not quiet and (
                    rule.on_unknown == "data-gap" or (rule.on_unknown == "data-gap-if-involved" and involved)
                )
                if gap or rule.effects_if_unknown:
                    finding = self._finding(compiled, gap_env, gap=True, involved=involved)
                    if gap:
                        findings.append(finding)
                    self._record_effects(effects, rule.effects_if_unknown, finding)
                continue
            finding = self._finding(compiled, env, gap=False, involved=involved, rests_on_stale=rests_on_stale)
            if self._reported(rule, involved) and not quiet:
                findings.append(finding)
            self._record_effects(effects, rule.effects, finding)
        findings.sort(key=lambda f: (SEVERITY_ORDER[f["severity"]], KIND_ORDER[f["kind"]], f["rule_id"]))
        return findings, effects

    @staticmethod
    def _record_effects(effects: Effects, statuses: Mapping[str, str], finding: dict[str, Any]) -> None:
        reason = {
            "rule_id": finding["rule_id"],
            "rule_version": finding["rule_version"],
            "summary": finding["summary"],
            "citations": finding["citations"],
        }
        for agent, status in statuses.items():
            effects.setdefault(agent, []).append((status, reason))

    @staticmethod
    def _reported(rule: Rule, involved: bool) -> bool:
        """Whether a rule that fired is shown as a finding, or only as the reason on its options."""
        if rule.finding_when == "always":
            return True
        return involved == (rule.finding_when == "agent-involved")

    def _finding(
        self, compiled: CompiledRule, env: Env, *, gap: bool, involved: bool, rests_on_stale: bool = False
    ) -> dict[str, Any]:
        rule = compiled.rule
        facts = [env.facts[name] for name in compiled.facts_read if name in env.facts]
        severity = rule.escalate_if_current if (rule.escalate_if_current and involved) else rule.severity
        if gap:
            unknown = [n.fact for n in compiled.tree.deciding(env) if n.fact]
            missing_names = [name for name in dict.fromkeys(unknown) if not name.startswith("def.")]
            missing_names += [
                d for name in unknown if name.startswith("def.") for d in self._unknown_in_definition(name[4:], env)
            ]
            # Without a gap text of its own a rule's summary is quoted as what could not be checked, not asserted.
            template = rule.gap_summary or f"Not enough data to check whether this applies: {rule.summary}"
            summary = self._render(template, env)
            finding: dict[str, Any] = {
                "id": f"{rule.id}:gap",
                "kind": "data-gap",
                "severity": "warning" if involved else "info",
                "summary": summary,
                "detail": self._render(rule.detail, env),
                "missing": list(dict.fromkeys(missing_names)),
            }
        else:
            template = (rule.stale_summary or rule.summary) if rests_on_stale else rule.summary
            finding = {
                "id": rule.id,
                "kind": rule.kind,
                "severity": severity,
                "summary": self._render(template, env),
                "detail": self._render(rule.detail, env),
            }
            if rests_on_stale:
                # The out-of-date facts that made it true: the finding stands, and asks for current values.
                finding["out_of_date"] = [
                    name for name in dict.fromkeys(self._met(compiled.tree, env)) if env.facts[name].stale
                ]
        finding.update(self._rule_parts(rule, gap))
        finding["facts"] = [fact.to_dict() for fact in facts]
        finding["evidence"] = sorted({source for fact in facts for source in fact.sources})
        return finding

    def _rule_parts(self, rule: Rule, gap: bool) -> dict[str, Any]:
        """The parts of a finding that depend only on the rule, built once and shared (results are read-only)."""
        cached = self._rule_parts_cache.get((rule.id, gap))
        if cached is not None:
            return cached
        parts: dict[str, Any] = {
            "rule_id": rule.id,
            "rule_version": rule.version,
            "agents": list(rule.agents),
            "citations": self.cite(rule.citations),
        }
        if rule.effects and not gap:
            parts["effects"] = dict(rule.effects)
        if rule.action != "none" and not gap:
            parts["action"] = rule.action
        if rule.conflict is not None:
            parts["conflict"] = {
                "topic": rule.conflict.topic,
                "chosen": rule.conflict.chosen,
                "why": rule.conflict.why,
                **({"setting": rule.conflict.setting} if rule.conflict.setting else {}),
            }
        self._rule_parts_cache[(rule.id, gap)] = parts
        return parts

    def _expand(self, names: list[str]) -> list[str]:
        """Fact names with every ``def.X`` replaced by the facts its definition reads, in order, once each."""
        out: list[str] = []
        for name in names:
            inner = self._expand(self.definitions[name[4:]].facts_used()) if name.startswith("def.") else [name]
            out.extend(n for n in inner if n not in out)
        return out

    def _unknown_in_definition(self, name: str, env: Env) -> list[str]:
        unknown = [n.fact for n in self.definitions[name].deciding(env) if n.fact]
        out: list[str] = []
        for fact in unknown:
            if fact.startswith("def."):
                out.extend(self._unknown_in_definition(fact[4:], env))
            else:
                out.append(fact)
        return out

    def _render(self, template: str, env: Env) -> str:
        """Fill ``{fact.name}``, ``{setting.name}`` and ``{def.name}`` placeholders (the compiler accepts all three);
        a definition reads as the facts that made it true."""
        parts = _template_parts(template)
        if len(parts) == 1:
            return template
        out = [parts[0]]
        for index in range(1, len(parts), 2):
            name = parts[index]
            if name in env.facts:
                out.append(env.facts[name].display(self._boundaries(name, env.settings)))
            elif name.startswith("setting.") and name[8:] in env.settings:
                out.append(str(env.settings[name[8:]]))
            elif name.startswith("def.") and name[4:] in self.definitions:
                met = self._met(self.definitions[name[4:]], env)
                phrases = (self._fact_phrase(env.facts[fact], env) for fact in dict.fromkeys(met))
                out.append("; ".join(phrases) or "not met")
            else:
                out.append(f"{{{name}}}")
            out.append(parts[index + 1])
        return "".join(out)

    def _met(self, node: CompiledNode, env: Env) -> list[str]:
        """The facts whose checks made ``node`` true, through the definitions it reads (none under a ``not``)."""
        if node.label == "not" or node.evaluate(env) is not True:
            return []
        if node.children:
            return [fact for child in node.children for fact in self._met(child, env)]
        if node.fact and node.fact.startswith("def."):
            return self._met(self.definitions[node.fact[4:]], env)
        return [node.fact] if node.fact and node.fact in env.facts else []

    def fact_label(self, name: str) -> str:
        """A clinician's name for the fact ``name`` (``labels.fact_label``)."""
        return fact_label(name, self.concept_display, self.kb.definitions)

    def _fact_phrase(self, fact: Fact, env: Env) -> str:
        """``FVC % predicted 42 % (2026-10-01)``, or the concept alone for a yes (``Non-invasive ventilation``)."""
        concept = fact.name.partition(".")[2].split(".")[0]
        label = self.concept_display.get(concept, concept.replace("-", " ").replace("_", " "))
        shown = fact.display(self._boundaries(fact.name, env.settings))
        return label if fact.value is True else f"{label} {shown}"

    def cite(self, refs: list[CitationRef]) -> list[dict[str, Any]]:
        """Citation references expanded with title and evidence status, as every output carries them.

        The expansion depends only on the knowledge base, so it is built once per list and shared between
        results; results are read-only by contract.
        """
        # Keyed by the identity of the knowledge base's list (hashing its items costs more than expanding them
        # for a typical record); the list is kept in the entry, so an id is never reused while it is cached.
        cached = self._citations_cache.get(id(refs))
        if cached is None or cached[0] is not refs:
            cached = self._citations_cache[id(refs)] = (refs, self._expand_citations(refs))
        return cached[1]

    def _expand_citations(self, refs: list[CitationRef]) -> list[dict[str, Any]]:
        out = []
        for ref in refs:
            citation = self.kb.citations[ref.id]
            entry: dict[str, Any] = {
                "id": ref.id,
                "title": citation.title,
                "kind": citation.kind,
                "status": ref.status or citation.status,
                "locator": ref.locator,
            }
            if citation.year:
                entry["year"] = citation.year
            identifiers = {
                k: v
                for k, v in (
                    ("doi", citation.identifiers.doi),
                    ("pmid", citation.identifiers.pmid),
                    ("url", citation.identifiers.url),
                )
                if v
            }
            if identifiers:
                entry["identifiers"] = identifiers
            out.append(entry)
        return out

    def _agent_states(self, facts: Mapping[str, Fact]) -> AgentStates:
        """(current, current or proposed) of every ladder agent in this record (what escalates a rule's severity;
        a use outside the ladder counts here too, so a warning about the drug taken keeps its weight)."""
        states: AgentStates = {}
        for step in self.ladder:
            current = any(facts[name].value is True for name in step.current_when)
            states[step.agent] = (current, current or any(facts[name].value is True for name in step.proposed_when))
        return states

    def _options(self, env: Env, effects: Effects, now: datetime, states: AgentStates) -> list[dict[str, Any]]:
        options = [
            self._option(step, env, effects.get(step.agent, []), now, states[step.agent]) for step in self.ladder
        ]
        options.sort(key=lambda o: (RANK_GROUP[o["status"]], o["position"]))
        for rank, option in enumerate(options, start=1):
            option["rank"] = rank
        self._mark_alternatives(options, states)
        return options

    def _mark_alternatives(self, options: list[dict[str, Any]], states: AgentStates) -> None:
        """A withdrawal whose every ruling rule rules the agent out only because another agent is taken or ordered
        (the rule's ``exclusive_with``) is one of two ways to settle it: its plan names the other
        (``mark_alternatives``). Done once every option is known, since it reads the other agent's reasons."""
        by_agent = {option["agent"]: option for option in options}
        for option in options:
            plan = option.get("dose_plan") or {}
            reduction = plan.get("reduction")
            if not reduction or "stop" not in reduction or not reduction["because"]:
                continue
            rules = [self.rule_by_id[reason["rule_id"]].rule for reason in reduction["because"]]
            partners = [rule.exclusive_with for rule in rules]
            if not all(partner is not None and states[partner][1] for partner in partners):
                continue
            alternatives = {
                partner: self._alternative(option["agent"], rule, by_agent[partner], states[partner][0])
                for rule, partner in zip(rules, partners, strict=True)
                if partner is not None
            }
            mark_alternatives(plan, self.monograph_by_agent[option["agent"]], list(alternatives.values()))

    def _alternative(self, agent: str, rule: Rule, other: dict[str, Any], taken: bool) -> Alternative:
        """The other agent of an ``exclusive_with`` rule, and whether a rule of its own rules it out anyway."""
        anyway = other["status"] in RULED_OUT and any(
            ruling.rules_out(other["agent"]) and ruling.exclusive_with != agent
            for ruling in (self.rule_by_id[reason["rule_id"]].rule for reason in other["reasons"])
        )
        state: Literal["current", "ordered"] = "current" if taken else "ordered"
        return Alternative(other["agent"], other["name"], state, rule.id, anyway)

    def _option(
        self,
        step: LadderStep,
        env: Env,
        effects: list[tuple[str, dict[str, Any]]],
        now: datetime,
        state: tuple[bool, bool],
    ) -> dict[str, Any]:
        current, involved = state
        outside = [env.facts[name] for name in step.outside_when if env.facts[name].value is True]
        taken_outside = self._outside_ladder(step, outside, current) if outside and involved else None
        if outside:
            # Taken or ordered outside the ladder (a benzodiazepine for palliative symptoms): not this option's use.
            current = involved = False
        status, reasons = _status(step, effects, current)
        option: dict[str, Any] = {
            "agent": step.agent,
            "name": step.name,
            "status": status,
            "position": step.position,
            "role": step.role,
            "summary": step.summary,
            "citations": self.cite(step.citations),
            "current": current,
            "proposed": involved and not current,
            "because": [reason["rule_id"] for reason in reasons],
            "reasons": reasons,
        }
        if taken_outside is not None:
            option["outside_ladder"] = taken_outside
        monograph = self.monograph_by_agent.get(step.agent)
        if monograph is not None:
            self._add_monograph(option, monograph, env, now)
        return option

    def _outside_ladder(self, step: LadderStep, outside: list[Fact], current: bool) -> dict[str, Any]:
        """How an option marks its agent taken (``current``) or being ordered for a use outside the ladder: the
        reasons recorded (a ``med.<agent>.for_<reason>`` fact reads as its reason concept), the facts, one sentence."""
        reasons = [self._reason_display(fact.name) for fact in outside]
        state = "current" if current else "ordered"
        who = "Taken now" if current else "Being ordered"
        text = (
            f"{who} for {'; '.join(reasons).lower()}, as the record states - outside the spasticity ladder: "
            f"this option, its status and its reasons are about {step.name} as a spasticity treatment."
        )
        return {"state": state, "reasons": reasons, "facts": [fact.to_dict() for fact in outside], "text": text}

    def _reason_display(self, name: str) -> str:
        reason = name.rpartition(".for_")[2].replace("_", "-") if ".for_" in name else ""
        return self.concept_display.get(reason, name)

    def _add_monograph(self, option: dict[str, Any], monograph: Monograph, env: Env, now: datetime) -> None:
        plan = self._dose_plan(option, monograph, env, now)
        if plan is not None:
            option["dose_plan"] = plan
        daily = env.facts.get(f"med.{monograph.concept}.daily_dose")
        if daily is not None and daily.usable:
            option["daily_dose"] = daily.to_dict()
        static = self._monograph_parts(monograph)
        if "monitoring" in static:
            option["monitoring"] = self._dated_monitoring(monograph, static["monitoring"], option, env, now)
        if "taper" in static:
            option["taper"] = static["taper"]
        if "formulations" in static and env.definition("dysphagia") is True:
            option["formulations"] = static["formulations"]

    def _dose_plan(
        self, option: dict[str, Any], monograph: Monograph, env: Env, now: datetime
    ) -> dict[str, Any] | None:
        """The option's dose plan. Beside "avoid" or "contraindicated" no start dose or titration (it would read as
        advice to start): for an agent taken, the way off it (``withdrawal_plan``); for one not taken, none."""
        if option["status"] not in RULED_OUT:
            hold = "a caution applies to it (see the option's reasons)" if option["status"] == "caution" else None
            return dose_plan(monograph, env.facts, env.settings, now, self.cite, pace=self.reduction_pace, hold=hold)
        if not option["current"]:
            return None
        agent = option["agent"]
        because = [reason for reason in option["reasons"] if self.rule_by_id[reason["rule_id"]].rule.rules_out(agent)]
        ruling = {reason["rule_id"] for reason in because}
        stop = next((entry for entry in monograph.stop_at_once if ruling & set(entry.rules)), None)
        withdrawal = Withdrawal(because, stop, urgent=any(self._critical_when_taken(rule_id) for rule_id in ruling))
        pace = self.reduction_pace
        return withdrawal_plan(monograph, env.facts, env.settings, now, self.cite, pace=pace, withdrawal=withdrawal)

    def _critical_when_taken(self, rule_id: str) -> bool:
        """Whether a rule's finding is critical for a patient who takes the agent it is about."""
        rule = self.rule_by_id[rule_id].rule
        return (rule.escalate_if_current or rule.severity) == "critical"

    @staticmethod
    def _dated_monitoring(
        monograph: Monograph, entries: list[dict[str, Any]], option: dict[str, Any], env: Env, now: datetime
    ) -> list[dict[str, Any]]:
        """The monograph's monitoring, each item with its dates for this patient (``schedule``) when the agent is
        taken or being ordered; the shared entries otherwise, and for an agent ruled out (its titration checks and
        benefit reviews are no longer due: it is being withdrawn). An item of one jurisdiction's practice is left out
        under another's reading (setting ``jurisdiction``)."""
        items = monograph.monitoring
        if any(item.jurisdictions for item in items):
            jurisdiction = env.settings["jurisdiction"]
            kept = [
                (entry, item)
                for entry, item in zip(entries, items, strict=True)
                if not item.jurisdictions or jurisdiction in item.jurisdictions
            ]
            entries, items = [entry for entry, _ in kept], [item for _, item in kept]
        if not (option["current"] or option["proposed"]) or option["status"] in RULED_OUT:
            return entries
        today = now.date()
        started: date | None = today
        if option["current"]:
            days_on = env.facts.get(f"med.{monograph.concept}.days_on")
            started = parse_date(days_on.date) if days_on is not None and days_on.value is not None else None
        dated = []
        for entry, item in zip(entries, items, strict=True):
            when = schedule(item, started, today, env.facts)
            dated.append(entry if when is None else {**entry, "schedule": when})
        return dated

    def _monograph_parts(self, monograph: Monograph) -> dict[str, Any]:
        """The parts of an option that depend only on the monograph, built once and shared (read-only)."""
        cached = self._monograph_cache.get(monograph.id)
        if cached is not None:
            return cached
        parts: dict[str, Any] = {}
        if monograph.monitoring:
            parts["monitoring"] = [
                {"test": item.test, "what": item.what, "citations": self.cite(item.citations)}
                | ({"interval_days": item.interval_days} if item.interval_days else {})
                for item in monograph.monitoring
            ]
        if monograph.taper is not None:
            parts["taper"] = {"text": monograph.taper.text, "citations": self.cite(monograph.taper.citations)}
        suitable = [f for f in monograph.formulations if f.tube or f.dysphagia]
        if suitable:
            parts["formulations"] = [
                {"form": f.form, "strength": f.strength, "tube": f.tube, "citations": self.cite(f.citations)}
                | ({"caution": f.caution} if f.caution else {})
                for f in suitable
            ]
        self._monograph_cache[monograph.id] = parts
        return parts

    def _assemble(
        self,
        record: PatientRecord,
        now: datetime,
        settings: Mapping[str, Value],
        in_scope: bool,
        findings: list[dict[str, Any]],
        options: list[dict[str, Any]],
        notes: list[str],
    ) -> dict[str, Any]:
        gaps = sum(1 for finding in findings if finding["kind"] == "data-gap")
        out_of_date = any("out_of_date" in finding for finding in findings)
        input_notes = list(notes)
        if record.duplicates_dropped:
            input_notes.append(f"{record.duplicates_dropped} duplicate resources collapsed")
        if record.other_patient_resources:
            input_notes.append(f"{record.other_patient_resources} resources of other patients ignored")
        death = record.death_recorded(now)
        if death is not None:
            input_notes.append(f"the Patient resource records a death ({death})")
        elif record.patient_resource.deceased_date_time:
            input_notes.append(
                f"the Patient resource gives a date of death after the evaluation day "
                f"(deceasedDateTime {record.patient_resource.deceased_date_time}) or one that cannot be read; "
                "the patient is treated as living"
            )
        manifest = self.kb.manifest
        return {
            "schema_version": RESULT_SCHEMA_VERSION,
            "patient": record.patient_reference,
            "evaluated_at": now.isoformat(),
            "knowledge_base": {"name": manifest.name, "version": manifest.version, "digest": self.kb.digest},
            "settings": {
                name: settings[name]
                for name in self.kb.settings
                if name in self.choice_settings or settings[name] != self.defaults[name]
            },
            "in_scope": in_scope,
            "confidence": "high" if gaps == 0 and not out_of_date else "reduced",
            "data_gaps": gaps,
            "standing": _standing(options),
            "options": options,
            "findings": findings,
            "input_notes": input_notes,
            "disclaimer": {
                "text": manifest.disclaimer.text,
                "citations": self.cite(manifest.disclaimer.citations),
            },
        }

    def explain(
        self, record: PatientRecord, now: datetime, rule_id: str, settings: Mapping[str, Value] | None = None
    ) -> dict[str, Any]:
        """A rule's tree with the value at each node, and the nodes that decided its outcome."""
        compiled = self.rule_by_id.get(rule_id)
        if compiled is None:
            raise KnowledgeBaseError(
                f"no active rule {rule_id!r}" + did_you_mean(rule_id, [c.rule.id for c in self.rules])
            )
        active_settings = self.settings_for(settings)
        facts, _ = self._facts(record, now, active_settings)
        env = Env(facts, active_settings, self.definitions)
        values: dict[str, Truth] = {}
        outcome = compiled.tree.trace(env, values)
        return {
            "rule_id": compiled.rule.id,
            "rule_version": compiled.rule.version,
            "file": compiled.source_file,
            "outcome": _truth_word(outcome),
            "tree": _tree(compiled.tree, values, env),
            "deciding": [
                {"path": node.path, "label": node.label, "value": _truth_word(values.get(node.path))}
                for node in compiled.tree.deciding(env)
            ],
        }


def _text_facts(rule: Rule) -> list[str]:
    """The facts a rule's texts name as placeholders, in order (settings are not facts)."""
    names = [
        name
        for text in (rule.summary, rule.detail, rule.gap_summary or "", rule.stale_summary or "")
        for name in _template_parts(text)[1::2]
        if not name.startswith("setting.")
    ]
    return list(dict.fromkeys(names))


def _numeric(settings: Mapping[str, Value]) -> dict[str, float]:
    """The settings that are numbers: the limits the fact extractor reads (validity windows, upper limits)."""
    return {
        name: value
        for name, value in settings.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _checked_setting(name: str, setting: Setting, value: Value) -> Value:
    """An override of ``setting``, checked against its choices or the type of its default; InputError if not."""
    if setting.choices:
        if str(value) not in setting.choices:
            raise InputError(f"setting {name} must be one of {', '.join(setting.choices)}, not {value!r}")
        return str(value)
    if isinstance(setting.value, bool):
        if not isinstance(value, bool):
            raise InputError(f"setting {name} must be true or false, not {value!r}")
        return value
    if isinstance(setting.value, int | float):
        # Every numeric setting is a count, a grade, a pressure, an upper limit or a number of days: never negative.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            unit = f" ({setting.unit})" if setting.unit else ""
            raise InputError(f"setting {name} must be a number from 0 up{unit}, not {value!r}")
        return value
    return str(value)


@lru_cache(maxsize=4096)
def _template_parts(template: str) -> list[str]:
    """A text split into literal text and placeholder names, alternating (literal first and last)."""
    return PLACEHOLDER.split(template)


def _status(
    step: LadderStep, effects: list[tuple[str, dict[str, Any]]], current: bool
) -> tuple[str, list[dict[str, Any]]]:
    """Worst safety status wins; else ``current``; else the best ladder status; reasons sorted by rule id."""
    safety = [(s, r) for s, r in effects if s in SAFETY_STATUSES]
    positive = [(s, r) for s, r in effects if s not in SAFETY_STATUSES]
    if safety:
        worst = max(STATUS_ORDER[s] for s, _ in safety)
        return next(s for s, _ in safety if STATUS_ORDER[s] == worst), _reasons(safety)
    if current:
        return "current", _reasons(positive)
    if positive:
        best = min(STATUS_ORDER[s] for s, _ in positive)
        return next(s for s, _ in positive if STATUS_ORDER[s] == best), _reasons(positive)
    return step.default_status, []


def _without_overruled_recommendations(
    findings: list[dict[str, Any]], options: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Drop a ladder recommendation whose every agent a safety rule made avoid or contraindicated, and the
    monitoring of an agent ruled out that the patient does not take.

    "Consider starting baclofen" must not stand next to "avoid oral baclofen" (eGFR < 30): the option keeps the
    safety status and its reasons, and the contradictory recommendation is not shown. A recommendation with at
    least one agent still usable (or only a caution) stays. Likewise "check aminotransferases before starting
    tizanidine" must not stand next to "tizanidine is contraindicated" for an order that is not to be started (the
    option keeps its monitoring, for a clinician who starts it despite this); monitoring of an agent the patient
    takes stays, ruled out or not, while it is withdrawn.
    """
    blocked = {o["agent"] for o in options if o["status"] in RULED_OUT}
    not_to_start = {o["agent"] for o in options if o["status"] in RULED_OUT and not o["current"]}
    return [
        f
        for f in findings
        if not (f["kind"] == "recommendation" and f.get("effects") and set(f["effects"]) <= blocked)
        and not (f["kind"] == "monitoring" and f.get("agents") and set(f["agents"]) <= not_to_start)
    ]


def _reasons(effects: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    unique = {reason["rule_id"]: reason for _, reason in effects}
    return [unique[rule_id] for rule_id in sorted(unique)]


def _standing(options: list[dict[str, Any]]) -> dict[str, Any]:
    current = [o for o in options if o["current"]]
    return {
        "current_agents": [o["agent"] for o in current],
        "highest_step": max((o["position"] for o in current), default=0),
        "roles": [o["role"] for o in current],
    }


def _truth_word(value: Truth) -> str:
    return "unknown" if value is None else "true" if value else "false"


def _tree(node: CompiledNode, values: dict[str, Truth], env: Env) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": node.path,
        "label": node.label,
        "value": _truth_word(values.get(node.path)),
    }
    if node.fact and node.fact in env.facts:
        out["fact"] = env.facts[node.fact].to_dict()
    if node.children:
        out["children"] = [_tree(child, values, env) for child in node.children]
    elif node.fact and node.fact.startswith("def."):
        # A definition's own tree, so that the data behind "respiratory compromise: yes" is in view too.
        definition = env.definitions[node.fact[4:]]
        traced: dict[str, Truth] = {}
        definition.trace(env, traced)
        out["children"] = [_tree(definition, traced, env)]
    return out


def _check_definition_cycles(kb: KnowledgeBase) -> None:
    def references(name: str) -> set[str]:
        found: set[str] = set()
        stack = [kb.definitions[name].when]
        while stack:
            node = stack.pop()
            stack.extend(node.all or [])
            stack.extend(node.any or [])
            if node.not_ is not None:
                stack.append(node.not_)
            if node.check is not None and node.check.fact.startswith("def."):
                found.add(node.check.fact[4:])
        return found

    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise KnowledgeBaseError(f"definition {name!r} refers to itself", where="definitions.yaml")
        visiting.add(name)
        for inner in references(name):
            visit(inner)
        visiting.discard(name)
        done.add(name)

    for name in kb.definitions:
        visit(name)
