"""Typed shapes of the knowledge-base files; unknown fields are rejected when a file is decoded."""

from __future__ import annotations

from typing import Literal

import msgspec

EvidenceStatus = Literal["C-primary", "C-secondary", "UNCONFIRMED"]
CitationKind = Literal["label", "guideline", "trial", "review", "article", "case-series", "formulary", "standard"]
FindingKind = Literal["recommendation", "contraindication", "warning", "dose", "monitoring", "data-gap", "info"]
Severity = Literal["critical", "warning", "info"]
OptionStatus = Literal["current", "recommended", "consider", "caution", "avoid", "contraindicated"]
Jurisdiction = Literal["us", "uk"]
#: ``medication-reason``: why a medicine is given (MedicationRequest.reasonCode, or the Condition its reasonReference
#: names), read into ``med.<concept>.for_<reason>`` facts.
ConceptKind = Literal["condition", "observation", "medication", "procedure", "medication-reason"]


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base for every knowledge-base struct: frozen, keyword-only, no unknown fields."""


class Identifiers(Strict, kw_only=True, frozen=True):
    doi: str | None = None
    pmid: str | None = None
    url: str | None = None
    other: str | None = None


class Citation(Strict, kw_only=True, frozen=True):
    id: str
    kind: CitationKind
    title: str
    authors: str | None = None
    source: str | None = None
    year: int | None = None
    identifiers: Identifiers = Identifiers()
    status: EvidenceStatus
    note: str | None = None


class CitationRef(Strict, kw_only=True, frozen=True):
    id: str
    locator: str
    status: EvidenceStatus | None = None


class Coding(Strict, kw_only=True, frozen=True):
    system: str
    code: str
    display: str | None = None
    level: Literal["ingredient", "scd", "sbd", "concept"] = "concept"
    strength_mg: float | None = None
    status: EvidenceStatus = "C-secondary"
    #: Where the code was confirmed, when clinical reference section 4 does not say.
    citations: tuple[CitationRef, ...] = ()


class Concept(Strict, kw_only=True, frozen=True):
    id: str
    kind: ConceptKind
    display: str
    codings: list[Coding] = []
    code_prefixes: list[Coding] = []
    text_patterns: list[str] = []
    text_excludes: list[str] = []
    classes: list[str] = []
    unit: str | None = None
    validity_setting: str | None = None
    history_counts: bool = False
    route_overrides: dict[str, str] = {}
    #: How a negative number is read: no such result can be negative, so it is left out with an input note; or
    #: the measure is a negative pressure that some systems record with its sign, and its magnitude is read.
    negative_values: Literal["unreadable", "magnitude"] = "unreadable"
    #: An observation in another form than the one the rules read (FVC in litres beside FVC % predicted): its
    #: latest value is named in the note of that concept's fact, and in an input note, when the rules' concept has
    #: no current value, so that "no current value" does not read as "never measured".
    noted_for: str | None = None
    note: str | None = None


class UnitConversion(Strict, kw_only=True, frozen=True):
    quantity: str
    canonical_unit: str
    factors: dict[str, float]
    citations: list[CitationRef]
    #: A value sent without a unit is read in the canonical one (where no other unit is in common use).
    unitless_is_canonical: bool = False


class EgfrEquation(Strict, kw_only=True, frozen=True):
    name: str
    multiplier: float
    kappa: dict[str, float]
    alpha: dict[str, float]
    exponent_above_kappa: float
    age_base: float
    female_factor: float
    citations: list[CitationRef]


class StopReasons(Strict, kw_only=True, frozen=True):
    ineffective: list[str]
    adverse: list[str]


class ValueSets(Strict, kw_only=True, frozen=True):
    concepts: list[Concept]
    units: list[UnitConversion]
    medication_classes: dict[str, str]
    egfr_equation: EgfrEquation
    stop_reasons: StopReasons


class Setting(Strict, kw_only=True, frozen=True):
    value: float | int | str | bool
    unit: str | None = None
    choices: list[str] = []
    description: str
    basis: str
    citations: list[CitationRef] = []


class DoseStep(Strict, kw_only=True, frozen=True):
    day: int
    dose: float
    times_per_day: int
    unit: str = "mg"


class RenalBand(Strict, kw_only=True, frozen=True):
    below_egfr: float
    #: The band includes its upper bound: where a source's bands share an end point (CrCl 30-50 and 50-80), the
    #: stricter band takes it, the conservative reading.
    inclusive: bool = False
    action: Literal["reduce", "avoid", "caution"]
    fraction_of_usual: float | None = None
    max_daily: float | None = None
    text: str
    citations: list[CitationRef]


class Formulation(Strict, kw_only=True, frozen=True):
    form: str
    strength: str
    tube: bool = False
    dysphagia: bool = False
    caution: str | None = None
    citations: list[CitationRef]


class MonitoringItem(Strict, kw_only=True, frozen=True):
    test: Literal["liver", "renal", "blood-pressure", "respiratory", "benefit", "sedation"]
    what: str
    first_due_days: int | None = None
    interval_days: int | None = None
    until_days: int | None = None
    #: The readings of the ``jurisdiction`` setting under which the item applies (one jurisdiction's practice);
    #: empty: every jurisdiction. The loader checks each against the setting's choices.
    jurisdictions: list[str] = []
    citations: list[CitationRef]


class Statement(Strict, kw_only=True, frozen=True):
    text: str
    citations: list[CitationRef]


class StopAtOnce(Strict, kw_only=True, frozen=True):
    """Where the sources say to stop an agent the patient takes at once, not to taper it: while one of ``rules``
    rules the agent out, its withdrawal plan says ``text`` (cited) instead of a dated taper."""

    rules: list[str]
    text: str
    citations: list[CitationRef]


class Monograph(Strict, kw_only=True, frozen=True):
    id: str
    name: str
    concept: str
    role: Literal["antispastic", "co-medication"]
    drug_class: str
    mechanism: Statement | None = None
    start: Statement | None = None
    steps: list[DoseStep] = []
    titration: Statement | None = None
    max_daily: dict[str, float] = {}
    max_unit: str = "mg"
    max_basis: Statement | None = None
    renal_bands: list[RenalBand] = []
    hepatic: Statement | None = None
    contraindications: list[Statement] = []
    cautions: list[Statement] = []
    monitoring: list[MonitoringItem] = []
    taper: Statement | None = None
    stop_at_once: list[StopAtOnce] = []
    formulations: list[Formulation] = []
    off_label_in_als: Statement | None = None


class Comparison(Strict, kw_only=True, frozen=True):
    fact: str
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "is"]
    value: float | int | str | bool | list[str] | None = None
    setting: str | None = None
    if_missing: Literal["unknown", "false"] = "unknown"
    #: A value past its validity still counts when it meets the check (the rule's citations say why); otherwise an
    #: out-of-date value is unknown. A finding that rests on such a value says so (``Rule.stale_summary``).
    stale_if_met: bool = False


class Node(Strict, kw_only=True, frozen=True):
    all: list[Node] | None = None
    any: list[Node] | None = None
    not_: Node | None = msgspec.field(default=None, name="not")
    check: Comparison | None = None


class ConflictNote(Strict, kw_only=True, frozen=True):
    topic: str
    chosen: str
    why: str
    setting: str | None = None


class RuleChange(Strict, kw_only=True, frozen=True):
    version: int
    change: str


class Rule(Strict, kw_only=True, frozen=True):
    id: str
    version: int
    changes: list[RuleChange]
    kind: FindingKind
    severity: Severity
    escalate_if_current: Severity | None = None
    agents: list[str] = []
    effects: dict[str, OptionStatus] = {}
    when: Node
    #: When the rule cannot decide: a data-gap finding, one only while one of its agents is taken or being ordered
    #: (what is missing matters then, and is noise for everyone else), or nothing.
    on_unknown: Literal["data-gap", "data-gap-if-involved", "silent"] = "data-gap"
    effects_if_unknown: dict[str, OptionStatus] = {}
    gap_summary: str | None = None
    summary: str
    #: The summary when the rule fired only because an out-of-date value counted (``stale_if_met``): it should say
    #: the value is out of date and ask for a current one. Without it the summary is used.
    stale_summary: str | None = None
    detail: str
    citations: list[CitationRef]
    conflict: ConflictNote | None = None
    action: Literal["none", "renal-dose", "liver-test", "taper", "referral"] = "none"
    finding_when: Literal["always", "agent-involved", "agent-not-involved"] = "always"
    #: A definition: while it is true the rule's effects on the options stand, but its finding gives way to another
    #: rule that speaks for the case (a benzodiazepine taken only for palliative symptoms).
    quiet_when: str | None = None
    #: The agent whose being taken or ordered is this rule's whole reason for ruling its agents out (two drugs not to
    #: be combined, each rule naming the other): while nothing else rules the agent out, its withdrawal is one of two
    #: alternatives, and its plan names the other agent (``reduction.alternatives``) rather than reading as certain.
    exclusive_with: str | None = None
    active: bool = True

    def rules_out(self, agent: str) -> bool:
        """Whether the rule's effects (fired or undecided) set ``agent`` to avoid or contraindicated."""
        return bool({self.effects.get(agent), self.effects_if_unknown.get(agent)} & {"avoid", "contraindicated"})


class Definition(Strict, kw_only=True, frozen=True):
    description: str
    when: Node
    citations: list[CitationRef]


class RuleFile(Strict, kw_only=True, frozen=True):
    rules: list[Rule]


class LadderStep(Strict, kw_only=True, frozen=True):
    agent: str
    name: str
    position: int
    default_status: OptionStatus
    role: str
    summary: str
    citations: list[CitationRef]
    current_when: list[str] = []
    proposed_when: list[str] = []
    #: Facts that, when true, put the agent's use outside the ladder: taking or ordering it does not make the
    #: option current or proposed (a benzodiazepine recorded only for palliative symptoms).
    outside_when: list[str] = []


class Ladder(Strict, kw_only=True, frozen=True):
    steps: list[LadderStep]


class Release(Strict, kw_only=True, frozen=True):
    version: str
    date: str
    changes: list[str]


class Manifest(Strict, kw_only=True, frozen=True):
    name: str
    version: str
    releases: list[Release]
    #: Rules that put a patient out of scope when any fires: no options, only their findings.
    scope_rules: list[str]
    disclaimer: Statement
    evidence_gaps: list[Statement]
