"""One pass over a patient record that turns its resources into named facts."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from operator import itemgetter

import msgspec

from spasticity_cds.engine.facts import Fact, days_between, missing, number_text, parse_date
from spasticity_cds.engine.vocabulary import Match, Vocabulary
from spasticity_cds.fhir.model import (
    CodeableConcept,
    Component,
    Dosage,
    Quantity,
    Resource,
    concept_of,
    quantity_of,
)
from spasticity_cds.fhir.record import PatientRecord
from spasticity_cds.knowledge.schema import Concept, EgfrEquation, StopReasons, UnitConversion

SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled", "not-done", "refuted"})
SKIPPED_DEVICE_STATUSES = SKIPPED_STATUSES | {"inactive"}
CURRENT_MED_STATUSES = frozenset({"active", "on-hold", "intended"})
PAST_MED_STATUSES = frozenset({"completed", "stopped", "not-taken"})
#: MedicationRequest intents that suggest or plan a medicine rather than order it: read as proposed, not current.
NOT_ORDERED_INTENTS = frozenset({"proposal", "plan", "option"})
INACTIVE_CONDITION = frozenset({"inactive", "resolved", "remission"})
MAS_GRADES = {"0": 0.0, "1": 1.0, "1+": 1.5, "2": 2.0, "3": 3.0, "4": 4.0}
NUMBER = re.compile(r"^\s*[<>≤≥=~]?\s*(-?\d+(?:[.,]\d+)?)")
PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.0}
TEXT_FREQUENCY = (
    (re.compile(r"\b(four times|qds|qid|4 times)\b", re.I), 4.0),
    (re.compile(r"\b(three times|tds|tid|3 times)\b", re.I), 3.0),
    (re.compile(r"\b(twice|bd|bid|2 times|b\.i\.d)\b", re.I), 2.0),
    (re.compile(r"\b(once daily|once a day|daily|od|qd|nocte|at night|mane)\b", re.I), 1.0),
)
TEXT_DOSE = re.compile(r"(\d+(?:\.\d+)?)\s*(mg|mcg|microgram|µg|ug|g)\b", re.I)


@dataclass(slots=True)
class Observed:
    """One observation value in canonical units, with its date and source."""

    value: float | bool | str
    when: date | None
    source: str
    unit: str | None
    high: float | None = None
    body_site: str | None = None


#: An observation matched to a concept, kept unread until its value is needed (usually only the latest is):
#: (stamp, holder, resource). ``stamp`` is the effective date as sent (ISO 8601 sorts as text), parsed only for the
#: values used; ``holder`` carries the value (the resource, or one of its components). A plain tuple, because a
#: record holds hundreds and a NamedTuple costs a Python-level call to build each.
RawObservation = tuple[str, Component, Resource]


_stamp = itemgetter(0)


def _raw_when(raw: RawObservation) -> date | None:
    return parse_date(raw[0])


def _raw_source(raw: RawObservation) -> str:
    return raw[2].reference


@dataclass
class MedicationOrder:
    """One medication resource read into what the rules need."""

    source: str
    state: str
    start: date | None
    daily_dose: float | None
    dose_unit: str | None
    dose_note: str | None
    stop_reason: str | None
    how: str
    #: The reasons the order states that match a ``medication-reason`` concept: concept id -> where and how it is
    #: said (the reasonCode text, or the Condition its reasonReference names).
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class _Collected:
    conditions: dict[str, list[str]] = field(default_factory=dict)
    procedures: dict[str, list[str]] = field(default_factory=dict)
    observations: dict[str, list[RawObservation]] = field(default_factory=dict)
    medications: dict[str, list[MedicationOrder]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    text_matches: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    latest: dict[str, Observed | None] = field(default_factory=dict)

    def all_notes(self) -> list[str]:
        """Notes on how the record was read, with text matches grouped by concept and text."""
        grouped = [
            f"{_count_refs(refs)}: no recognised code; matched {display} by its text {text!r}"
            for (display, text), refs in self.text_matches.items()
        ]
        return grouped + self.notes


class FactExtractor:
    """Compiled once per knowledge base; ``extract`` is called once per patient."""

    def __init__(
        self,
        vocabulary: Vocabulary,
        units: list[UnitConversion],
        equation: EgfrEquation,
        stop_reasons: StopReasons,
        validity_days: dict[str, float],
    ) -> None:
        self.vocabulary = vocabulary
        self.units = {u.quantity: {_unit_key(k): f for k, f in u.factors.items()} for u in units}
        self.canonical_units = {u.quantity: u.canonical_unit for u in units}
        self.unitless_canonical = {u.quantity for u in units if u.unitless_is_canonical}
        self.equation = equation
        self.ineffective = re.compile("|".join(stop_reasons.ineffective), re.I)
        self.adverse = re.compile("|".join(stop_reasons.adverse), re.I)
        self.validity_days = validity_days
        self.concepts = vocabulary.concepts
        self.medication_concepts = [c for c in self.concepts.values() if c.kind == "medication"]
        self.reason_concepts = [c for c in self.concepts.values() if c.kind == "medication-reason"]
        reason_ids = [c.id for c in self.reason_concepts]
        self.noted_concepts = [c for c in self.concepts.values() if c.noted_for is not None]
        self.medication_classes = list(dict.fromkeys(k for c in self.medication_concepts for k in c.classes))
        # Facts of concepts absent from a record never change, so they are built once and shared.
        self._absent_presence = {
            f"{c.kind}.{c.id}": Fact(f"{c.kind}.{c.id}", False)
            for c in self.concepts.values()
            if c.kind in ("condition", "procedure")
        }
        self._absent_medications = {
            name: fact
            for c in self.medication_concepts
            for name, fact in _absent_medication_facts(c.id, reason_ids).items()
        }
        self._absent_medications.update(
            {f"medclass.{klass}": Fact(f"medclass.{klass}", False) for klass in self.medication_classes}
        )
        self._missing_observation = {
            f"obs.{c.id}": missing(f"obs.{c.id}") for c in self.concepts.values() if c.kind == "observation"
        }

    def with_limits(self, limits: dict[str, float]) -> FactExtractor:
        """This extractor reading other limits (validity windows, default upper limits): its tables are shared,
        not built again."""
        twin = copy.copy(self)
        twin.validity_days = limits
        return twin

    def extract(self, record: PatientRecord, now: datetime) -> tuple[dict[str, Fact], list[str]]:
        """Every fact about the patient, keyed by name, and notes on how the record was read."""
        collected = _Collected()
        self._collect_conditions(record, collected)
        self._collect_procedures(record, collected)
        self._collect_observations(record, collected)
        self._drop_future_observations(collected, now)
        self._collect_medications(record, collected)
        facts: dict[str, Fact] = {}
        self._patient_facts(record, now, facts)
        self._presence_facts(collected, facts)
        self._observation_facts(collected, now, facts)
        self._medication_facts(collected, now, facts)
        return facts, collected.all_notes()

    # -- collection -------------------------------------------------------------------------------------

    def _collect_conditions(self, record: PatientRecord, out: _Collected) -> None:
        for resource in record.of_type("Condition"):
            if _first_code(resource.verification_status) in SKIPPED_STATUSES:
                continue
            found = self.vocabulary.match(resource.code, "condition")
            if found is None:
                continue
            inactive = _first_code(resource.clinical_status) in INACTIVE_CONDITION
            if inactive and not found.concept.history_counts:
                continue
            out.conditions.setdefault(found.concept.id, []).append(resource.reference)
            self._note_text_match(found, resource, out)

    def _collect_procedures(self, record: PatientRecord, out: _Collected) -> None:
        for resource in record.of_type("Procedure"):
            if resource.status in SKIPPED_STATUSES:
                continue
            found = self.vocabulary.match(resource.code, "procedure")
            if found is not None:
                out.procedures.setdefault(found.concept.id, []).append(resource.reference)
                self._note_text_match(found, resource, out)
        for resource in record.of_type("Device"):
            if resource.status in SKIPPED_DEVICE_STATUSES:
                continue
            found = self.vocabulary.match(resource.type, "procedure")
            if found is not None:
                out.procedures.setdefault(found.concept.id, []).append(resource.reference)

    def _collect_observations(self, record: PatientRecord, out: _Collected) -> None:
        """Observations grouped by their code first, so each distinct code is matched once, not once per value."""
        by_code: dict[bytes, list[Resource]] = {}
        with_components: list[Resource] = []
        for resource in record.of_type("Observation"):
            if resource.status in SKIPPED_STATUSES:
                continue
            code = bytes(resource.code)
            group = by_code.get(code)
            if group is None:
                by_code[code] = [resource]
            else:
                group.append(resource)
            if resource.component:
                with_components.append(resource)
        found: dict[str, list[list[RawObservation]]] = {}
        for resources in by_code.values():
            match = self.vocabulary.match(resources[0].code, "observation")
            if match is not None:
                raws: list[RawObservation] = [(r.effective_date_time or _effective_text(r), r, r) for r in resources]
                found.setdefault(match.concept.id, []).append(raws)
        for pairs in _components_by_code(with_components).values():
            match = self.vocabulary.match(pairs[0][0].code, "observation")
            if match is not None:
                raws = [(r.effective_date_time or _effective_text(r), component, r) for component, r in pairs]
                found.setdefault(match.concept.id, []).append(raws)
        position: dict[int, int] = {}
        for concept_id, groups in found.items():
            if len(groups) == 1:
                out.observations[concept_id] = groups[0]
                continue
            # Several codes (or components) for one concept: back into document order, which breaks date ties.
            if not position:
                position = {id(r): i for i, r in enumerate(record.of_type("Observation"))}
            merged = [raw for group in groups for raw in group]
            out.observations[concept_id] = sorted(merged, key=lambda raw: position[id(raw[2])])

    def _drop_future_observations(self, out: _Collected, now: datetime) -> None:
        """Results dated after the evaluation day are left out, with a note: as the newest they would outrank what
        is true today.

        A full date whose text sorts at or before today's ISO date cannot parse to a later day (ISO 8601 sorts as
        text; the other 10-character form, a week date, sorts after any month), so only the other stamps are
        parsed: a record holds hundreds of results, nearly all dated in the past.
        """
        today = now.date()
        today_text = today.isoformat()
        for concept_id, raws in out.observations.items():
            stamps = list(map(_stamp, raws))
            if min(map(len, stamps)) >= 10 and max(stamps)[:10] <= today_text:
                continue  # every one a full date not after today (the usual case, told without a loop in Python)
            later = [
                raw
                for raw in raws
                if not (len(raw[0]) >= 10 and raw[0][:10] <= today_text)
                and (when := parse_date(raw[0])) is not None
                and when > today
            ]
            if later:
                display, sources = self.concepts[concept_id].display, [_raw_source(raw) for raw in later]
                out.notes.append(f"{display}: {_count_refs(sources)} dated after the evaluation day; left out")
                dropped = {id(raw) for raw in later}
                out.observations[concept_id] = [raw for raw in raws if id(raw) not in dropped]

    def _read(self, concept: Concept, raw: RawObservation, notes: list[str]) -> Observed | None:
        """The observation's value in canonical units, or None (with a note when the unit is unknown)."""
        _, holder, resource = raw
        when, source = _raw_when(raw), resource.reference
        value, unit = _observation_value(holder, concept.id)
        if value is None:
            return None
        if not isinstance(value, bool | str) and value < 0:
            if concept.negative_values == "unreadable":
                notes.append(f"{source}: {concept.display} of {number_text(value)} is negative; value ignored")
                return None
            value = -value
        high = _reference_high(holder)
        if isinstance(value, float) and concept.id in self.units:
            converted = self._to_canonical(concept.id, value, unit)
            if converted is None:
                notes.append(f"{source}: unit {unit!r} of {concept.display} not recognised; value ignored")
                return None
            # The reference range is in the unit of the value, so it converts with it (bilirubin in umol/L).
            high = self._to_canonical(concept.id, high, unit) if high is not None else None
            value, unit = converted, self.canonical_units[concept.id]
        elif concept.unit:
            unit = concept.unit
        site = _text_of(resource.body_site) if holder is resource else None
        return Observed(value, when, source, unit, high, site)

    def _latest(self, collected: _Collected, concept_id: str) -> Observed | None:
        """The most recent readable value of a concept (read once; several facts derive from some concepts)."""
        if concept_id in collected.latest:
            return collected.latest[concept_id]
        latest = collected.latest[concept_id] = self._newest_readable(collected, concept_id)
        return latest

    def _newest_readable(self, collected: _Collected, concept_id: str) -> Observed | None:
        raws = collected.observations.get(concept_id)
        if not raws:
            return None
        concept = self.concepts[concept_id]
        newest = self._read(concept, max(raws, key=_stamp), collected.notes)
        if newest is not None:
            return newest
        for raw in sorted(raws, key=_stamp, reverse=True)[1:]:
            observed = self._read(concept, raw, collected.notes)
            if observed is not None:
                return observed
        return None

    def _to_canonical(self, quantity: str, value: float, unit: str | None) -> float | None:
        factors = self.units[quantity]
        if not unit and quantity in self.unitless_canonical:
            return value
        key = _unit_key(unit or "")
        if key in factors:
            return value * factors[key]
        return None

    def _collect_medications(self, record: PatientRecord, out: _Collected) -> None:
        for resource_type in ("MedicationRequest", "MedicationStatement"):
            for resource in record.of_type(resource_type):
                order = self._read_medication(record, resource, out)
                if order is not None:
                    concept, medication_order = order
                    out.medications.setdefault(concept.id, []).append(medication_order)

    def _read_medication(
        self, record: PatientRecord, resource: Resource, out: _Collected
    ) -> tuple[Concept, MedicationOrder] | None:
        status = resource.status
        if status in SKIPPED_STATUSES:
            return None
        codeable = _medication_codeable(record, resource)
        found = self.vocabulary.match(codeable, "medication")
        if found is None:
            return None
        concept = self._route_override(found.concept, resource)
        self._note_text_match(found, resource, out)
        state = (
            "past"
            if status in PAST_MED_STATUSES
            else "proposed"
            if status == "draft" or resource.intent in NOT_ORDERED_INTENTS
            else "current"
        )
        daily, unit, note = _daily_dose(resource, found)
        return concept, MedicationOrder(
            source=resource.reference,
            state=state,
            start=_medication_start(resource),
            daily_dose=daily,
            dose_unit=unit,
            dose_note=note,
            stop_reason=_text_of(resource.status_reason) or _text_of(resource.reason_code),
            how=found.how,
            reasons=self._stated_reasons(record, resource) if self.reason_concepts else {},
        )

    def _stated_reasons(self, record: PatientRecord, resource: Resource) -> dict[str, str]:
        """The ``medication-reason`` concepts an order states: by its reasonCode (code, text or display), or by a
        Condition in the record that its reasonReference names. A reference that does not resolve says nothing."""
        found: dict[str, str] = {}
        for codeable in resource.reason_code or ():
            match = self.vocabulary.match(codeable, "medication-reason")
            if match is not None:
                found.setdefault(match.concept.id, f"reason {_text_of(codeable) or match.concept.display!r}")
        for reference in resource.reason_reference or ():
            target = record.resolve(reference.reference) if reference.reference else None
            if target is None or target.resource_type != "Condition":
                continue
            if _first_code(target.verification_status) in SKIPPED_STATUSES:
                continue
            match = self.vocabulary.match(target.code, "medication-reason")
            if match is not None:
                said = _text_of(concept_of(target.code)) or match.concept.display
                found.setdefault(match.concept.id, f"reason {target.reference} {said!r}")
        return found

    def _route_override(self, concept: Concept, resource: Resource) -> Concept:
        if not concept.route_overrides:
            return concept
        routes = " ".join(_text_of(dosage.route) or "" for dosage in resource.dosage_instruction or ()).lower()
        for route, target in concept.route_overrides.items():
            if route in routes:
                return self.concepts[target]
        return concept

    @staticmethod
    def _note_text_match(found: Match, resource: Resource, out: _Collected) -> None:
        if found.how == "text":
            out.text_matches.setdefault((found.concept.display, found.text or ""), []).append(resource.reference)

    # -- facts ------------------------------------------------------------------------------------------

    def _patient_facts(self, record: PatientRecord, now: datetime, facts: dict[str, Fact]) -> None:
        patient = record.patient_resource
        ref = record.patient_reference
        born = parse_date(patient.birth_date)
        if born is None:
            facts["patient.age"] = missing("patient.age", "no birthDate")
        elif born > now.date():
            facts["patient.age"] = missing("patient.age", f"birthDate {born.isoformat()} is after the evaluation day")
        else:
            age = now.date().year - born.year - ((now.date().month, now.date().day) < (born.month, born.day))
            facts["patient.age"] = Fact("patient.age", age, "years", sources=(ref,))
        gender = patient.gender
        facts["patient.sex"] = (
            Fact("patient.sex", gender, sources=(ref,))
            if gender in ("male", "female")
            else missing("patient.sex", "gender not recorded as male or female")
        )
        death = record.death_recorded(now)
        facts["patient.deceased"] = Fact("patient.deceased", death is not None, sources=(ref,), note=death)

    def _presence_facts(self, collected: _Collected, facts: dict[str, Fact]) -> None:
        facts.update(self._absent_presence)
        for kind, found_by_concept in (("condition", collected.conditions), ("procedure", collected.procedures)):
            for concept_id, found in found_by_concept.items():
                name = f"{kind}.{concept_id}"
                facts[name] = Fact(name, True, sources=tuple(found))

    def _observation_facts(self, collected: _Collected, now: datetime, facts: dict[str, Fact]) -> None:
        facts.update(self._missing_observation)
        for concept_id in collected.observations:
            latest = self._latest(collected, concept_id)
            if latest is not None:
                name = f"obs.{concept_id}"
                facts[name] = self._fact_from(name, latest, self.concepts[concept_id], now)
        self._egfr_fact(collected, now, facts)
        self._noted_facts(collected, facts)
        self._liver_facts(collected, now, facts)
        self._orthostatic_facts(collected, now, facts)
        self._ashworth_facts(collected, now, facts)

    def _fact_from(
        self, name: str, observed: Observed, concept: Concept, now: datetime, note: str | None = None
    ) -> Fact:
        stale = self._is_stale(observed.when, concept, now)
        if observed.when is None and concept.validity_setting is not None:
            # Without a date its age cannot be judged, so it counts as out of date: say why.
            note = _joined(note, "no readable date, so treated as out of date")
        return Fact(
            name,
            observed.value,
            observed.unit,
            observed.when.isoformat() if observed.when else None,
            stale,
            (observed.source,),
            note,
        )

    def _is_stale(self, when: date | None, concept: Concept, now: datetime) -> bool:
        if concept.validity_setting is None:
            return False
        if when is None:
            return True
        return days_between(when, now) > self.validity_days[concept.validity_setting]

    def _noted_facts(self, collected: _Collected, facts: dict[str, Fact]) -> None:
        """A value in a form the rules do not read (``noted_for``: FVC in litres) is named in the note of the fact
        the rules read, and in an input note, when that fact has no current value."""
        for concept in self.noted_concepts:
            latest = self._latest(collected, concept.id)
            target = f"obs.{concept.noted_for}"
            fact = facts[target]
            if latest is None or (fact.value is not None and not fact.stale):
                continue
            if fact.date and (latest.when is None or latest.when.isoformat() <= fact.date):
                continue  # not newer than the value the rules read (out of date, but the newest of its kind)
            value = number_text(latest.value) if isinstance(latest.value, float) else str(latest.value)
            dated = f" of {latest.when.isoformat()}" if latest.when else ""
            read_as = self.concepts[str(concept.noted_for)].display
            said = f"{concept.display} {value} {latest.unit or ''}".rstrip() + f"{dated} on record ({latest.source})"
            why = f"it cannot be read as {read_as}, which the rules read"
            facts[target] = msgspec.structs.replace(fact, note=_joined(fact.note, f"{said}; {why}"), dict_memo=None)
            collected.notes.append(f"{said}: {why}")

    def _egfr_fact(self, collected: _Collected, now: datetime, facts: dict[str, Fact]) -> None:
        """``obs.egfr`` from the newest kidney measure: a measured eGFR, or one derived from a creatinine taken after
        it (or with no usable measured eGFR at all); a creatinine that cannot be turned into one is said, not hidden."""
        measured = facts["obs.egfr"]
        creatinine = self._latest(collected, "creatinine")
        if creatinine is None or not isinstance(creatinine.value, float):
            return
        if measured.date and (creatinine.when is None or creatinine.when.isoformat() <= measured.date):
            return
        at = f"creatinine {creatinine.value:.2f} mg/dL"
        age, sex = facts["patient.age"].value, facts["patient.sex"].value
        if not isinstance(age, int) or sex not in ("male", "female"):
            dated = f" of {creatinine.when.isoformat()}" if creatinine.when else ""
            unusable = f"{at}{dated} on record; an eGFR cannot be derived from it without the patient's age and sex"
            facts["obs.egfr"] = msgspec.structs.replace(measured, note=_joined(measured.note, unusable), dict_memo=None)
            return
        derived = _ckd_epi(self.equation, creatinine.value, age, str(sex))
        observed = Observed(round(derived, 1), creatinine.when, creatinine.source, self.concepts["egfr"].unit)
        why = (
            f"newer than the measured eGFR of {measured.display()}"
            if measured.value is not None
            else "no current measured eGFR"
        )
        note = f"derived from {at} by {self.equation.name} ({why})"
        facts["obs.egfr"] = self._fact_from("obs.egfr", observed, self.concepts["egfr"], now, note)

    def _liver_facts(self, collected: _Collected, now: datetime, facts: dict[str, Fact]) -> None:
        tests = sorted(
            [*collected.observations.get("alt", []), *collected.observations.get("ast", [])],
            key=_raw_day,
            reverse=True,
        )
        facts["obs.liver_tested"] = Fact(
            "obs.liver_tested", bool(tests), sources=tuple(dict.fromkeys(_raw_source(t) for t in tests[:3]))
        )
        last = next((day for t in tests if (day := _raw_when(t)) is not None), None)
        if last is not None:
            facts["obs.liver_days_since"] = Fact(
                "obs.liver_days_since", days_between(last, now), "days", last.isoformat()
            )
        else:
            facts["obs.liver_days_since"] = missing("obs.liver_days_since", "no ALT or AST on record")
        for analyte in ("alt", "ast", "bilirubin"):
            name = f"obs.{analyte}_x_uln"
            latest = self._latest(collected, analyte)
            if latest is None or not isinstance(latest.value, float):
                facts[name] = missing(name)
                continue
            uln, basis = self._upper_limit(analyte, latest)
            ratio = Observed(round(latest.value / uln, 2), latest.when, latest.source, "x ULN")
            facts[name] = self._fact_from(name, ratio, self.concepts[analyte], now, basis)

    def _upper_limit(self, analyte: str, observed: Observed) -> tuple[float, str]:
        if observed.high:
            return observed.high, f"ULN {observed.high:g} from the laboratory reference range"
        default = self.validity_days[f"default_uln_{analyte}"]
        return float(default), f"ULN {default} assumed (setting default_uln_{analyte}; no reference range sent)"

    def _orthostatic_facts(self, collected: _Collected, now: datetime, facts: dict[str, Fact]) -> None:
        pairs = (
            ("sbp", "systolic-supine", "systolic-standing"),
            ("dbp", "diastolic-supine", "diastolic-standing"),
        )
        for label, lying_id, standing_id in pairs:
            name = f"obs.orthostatic_{label}_drop"
            lying = self._latest(collected, lying_id)
            standing = self._latest(collected, standing_id)
            if not (lying and standing and isinstance(lying.value, float) and isinstance(standing.value, float)):
                facts[name] = missing(name, "no lying and standing pair")
                continue
            drop = Observed(lying.value - standing.value, standing.when, standing.source, "mmHg")
            fact = self._fact_from(name, drop, self.concepts[standing_id], now)
            facts[name] = Fact(name, fact.value, fact.unit, fact.date, fact.stale, (lying.source, standing.source))

    def _ashworth_facts(self, collected: _Collected, now: datetime, facts: dict[str, Fact]) -> None:
        concept = self.concepts["modified-ashworth"]
        raws = collected.observations.get("modified-ashworth", [])
        last_day = max((_raw_day(raw) for raw in raws if raw[0]), default=None)
        read = (self._read(concept, raw, collected.notes) for raw in raws if raw[0] and _raw_day(raw) == last_day)
        scores = [o for o in read if o is not None and isinstance(o.value, float)]
        dated = [o.when for o in scores if o.when is not None]
        if not dated:
            facts["obs.mas_max"] = missing("obs.mas_max", "no Modified Ashworth score on record")
            facts["obs.mas_groups"] = missing("obs.mas_groups", "no Modified Ashworth score on record")
            return
        last = max(dated)
        latest = [o for o in scores if o.when == last]
        top = max(latest, key=lambda o: float(o.value))
        facts["obs.mas_max"] = self._fact_from(
            "obs.mas_max", Observed(top.value, last, top.source, "MAS"), concept, now
        )
        sites = {o.body_site or o.source for o in latest if float(o.value) >= 1.0}
        groups = Observed(float(len(sites)), last, top.source, "muscle groups")
        fact = self._fact_from("obs.mas_groups", groups, concept, now, "muscle groups with MAS >= 1")
        facts["obs.mas_groups"] = Fact(
            fact.name,
            fact.value,
            fact.unit,
            fact.date,
            fact.stale,
            tuple(o.source for o in latest),
            fact.note,
        )

    def _medication_facts(self, collected: _Collected, now: datetime, facts: dict[str, Fact]) -> None:
        facts.update(self._absent_medications)
        class_members: dict[str, list[str]] = {}
        failed_oral: list[str] = []
        for concept in self.medication_concepts:
            orders = collected.medications.get(concept.id)
            if not orders:
                continue
            self._one_medication(concept, orders, now, facts)
            taking = facts[f"med.{concept.id}.current_or_proposed"]
            if taking.value:
                for klass in concept.classes:
                    class_members.setdefault(klass, []).extend(taking.sources)
            if "oral-antispastic" in concept.classes and facts[f"med.{concept.id}.failed"].value:
                failed_oral.append(concept.id)
        for klass, sources in class_members.items():
            facts[f"medclass.{klass}"] = Fact(f"medclass.{klass}", True, sources=tuple(sources))
        facts["antispastic.oral_failed_count"] = Fact(
            "antispastic.oral_failed_count", len(failed_oral), "agents", note=", ".join(failed_oral) or None
        )

    def _one_medication(
        self, concept: Concept, orders: list[MedicationOrder], now: datetime, facts: dict[str, Fact]
    ) -> None:
        prefix = f"med.{concept.id}"
        current = [o for o in orders if o.state == "current"]
        proposed = [o for o in orders if o.state == "proposed"]
        facts[f"{prefix}.current"] = Fact(f"{prefix}.current", bool(current), sources=_sources(current))
        facts[f"{prefix}.proposed"] = Fact(f"{prefix}.proposed", bool(proposed), sources=_sources(proposed))
        facts[f"{prefix}.current_or_proposed"] = Fact(
            f"{prefix}.current_or_proposed", bool(current or proposed), sources=_sources(proposed + current)
        )
        facts[f"{prefix}.ever"] = Fact(f"{prefix}.ever", bool(orders), sources=_sources(orders))
        failures = [o for o in orders if o.state == "past" and o.stop_reason and self._failed(o.stop_reason)]
        facts[f"{prefix}.failed"] = Fact(
            f"{prefix}.failed",
            bool(failures) and not current,
            sources=_sources(failures),
            note="; ".join(sorted({o.stop_reason or "" for o in failures})) or None,
        )
        for reason in self.reason_concepts:
            name = f"{prefix}.for_{reason.id.replace('-', '_')}"
            facts[name] = _reason_fact(name, reason.id, current + proposed)
        dosed = proposed or current
        facts[f"{prefix}.daily_dose"] = _dose_fact(prefix, dosed)
        facts[f"{prefix}.days_on"] = _days_on_fact(prefix, orders, current, now)

    def _failed(self, reason: str) -> bool:
        return bool(self.ineffective.search(reason) or self.adverse.search(reason))


def _absent_medication_facts(concept_id: str, reason_ids: list[str]) -> dict[str, Fact]:
    prefix = f"med.{concept_id}"
    names = ["current", "proposed", "current_or_proposed", "ever", "failed"]
    names += [f"for_{reason.replace('-', '_')}" for reason in reason_ids]
    facts = {f"{prefix}.{name}": Fact(f"{prefix}.{name}", False) for name in names}
    facts[f"{prefix}.daily_dose"] = missing(f"{prefix}.daily_dose", "not taking or ordering it")
    facts[f"{prefix}.days_on"] = missing(f"{prefix}.days_on", "not currently taking it")
    return facts


def _reason_fact(name: str, reason: str, taking: list[MedicationOrder]) -> Fact:
    """True when the medicine is taken or ordered and every such order states the reason: one order without it
    (or with another) is read as use for something else, so it does not count (the conservative reading)."""
    stating = [o for o in taking if reason in o.reasons]
    said = "; ".join(dict.fromkeys(o.reasons[reason] for o in stating)) or None
    if stating and len(stating) < len(taking):
        said = f"{said}; {len(taking) - len(stating)} other order(s) state no such reason"
    return Fact(name, bool(taking) and len(stating) == len(taking), sources=_sources(stating or taking), note=said)


def _sources(orders: list[MedicationOrder]) -> tuple[str, ...]:
    return tuple(o.source for o in orders)


def _dose_fact(prefix: str, orders: list[MedicationOrder]) -> Fact:
    name = f"{prefix}.daily_dose"
    if not orders:
        return missing(name, "not taking or ordering it")
    known = [o for o in orders if o.daily_dose is not None]
    if not known:
        return missing(name, "the order has no dose and frequency that can be read")
    total = sum(o.daily_dose or 0.0 for o in known)
    notes = sorted({o.dose_note for o in known if o.dose_note})
    return Fact(
        name,
        round(total, 3),
        f"{known[0].dose_unit}/day",
        sources=_sources(known),
        note="; ".join(notes) or None,
    )


def _days_on_fact(prefix: str, orders: list[MedicationOrder], current: list[MedicationOrder], now: datetime) -> Fact:
    name = f"{prefix}.days_on"
    if not current:
        return missing(name, "not currently taking it")
    course = [o for o in orders if o.state in ("current", "past") and o.start and not o.stop_reason]
    starts = [o.start for o in course if o.start is not None]
    if not starts:
        return missing(name, "no start date on the orders")
    first = min(starts)
    return Fact(name, days_between(first, now), "days", first.isoformat(), sources=_sources(current))


def _count_refs(refs: list[str]) -> str:
    return refs[0] if len(refs) == 1 else f"{len(refs)} resources (e.g. {refs[0]})"


def _components_by_code(resources: list[Resource]) -> dict[bytes, list[tuple[Component, Resource]]]:
    grouped: dict[bytes, list[tuple[Component, Resource]]] = {}
    for resource in resources:
        for component in resource.component or ():
            grouped.setdefault(bytes(component.code), []).append((component, resource))
    return grouped


def _raw_day(raw: RawObservation) -> str:
    return raw[0][:10]


@lru_cache(maxsize=1024)
def _unit_key(unit: str) -> str:
    return unit.replace("µ", "u").replace("μ", "u").replace(" ", "").lower()


def _first_code(codeable: CodeableConcept | None) -> str | None:
    if codeable is not None:
        for coding in codeable.coding or ():
            if coding.code is not None:
                return coding.code
    return None


def _text_of(codeable: str | CodeableConcept | list[CodeableConcept] | None) -> str | None:
    """The text of a CodeableConcept (the first of a list), else its first coding's display or code."""
    if isinstance(codeable, list):
        codeable = codeable[0] if codeable else None
    if not isinstance(codeable, CodeableConcept):
        return None
    if codeable.text is not None:
        return codeable.text
    for coding in codeable.coding or ():
        label = coding.display or coding.code
        if label is not None:
            return label
    return None


def _effective_text(resource: Resource) -> str:
    """The effective date-time string the resource carries, or "" (which sorts before every date)."""
    stamp = resource.effective_date_time or resource.effective_instant
    if stamp is not None:
        return stamp
    period = resource.effective_period
    if period is not None and period.start is not None:
        return period.start
    return resource.issued or ""


def _observation_value(holder: Component, concept_id: str) -> tuple[float | bool | str | None, str | None]:
    if concept_id == "modified-ashworth":
        return _ashworth_grade(holder), "MAS"
    quantity = quantity_of(holder.value_quantity)
    if quantity is not None and quantity.value is not None:
        return quantity.value, quantity.code or quantity.unit
    for number in (holder.value_integer, holder.value_decimal):
        if number is not None:
            return number, None
    if holder.value_boolean is not None:
        return holder.value_boolean, None
    text = holder.value_string
    if text is not None:
        match = NUMBER.match(text)
        return (float(match.group(1).replace(",", ".")), None) if match else (None, None)
    coded = _text_of(holder.value_codeable_concept)
    if coded is not None:
        lowered = coded.strip().lower()
        if lowered in ("yes", "true", "y"):
            return True, None
        if lowered in ("no", "false", "n"):
            return False, None
    return None, None


def _ashworth_grade(holder: Component) -> float | None:
    number = holder.value_decimal if holder.value_decimal is not None else holder.value_integer
    if number is None and (quantity := quantity_of(holder.value_quantity)) is not None:
        number = quantity.value
    if number is not None:
        return number if 0 <= number <= 4 else None
    text = holder.value_string
    if text is None and holder.value_codeable_concept is not None:
        text = _first_code(holder.value_codeable_concept) or _text_of(holder.value_codeable_concept)
    return MAS_GRADES.get(text.strip().replace(" ", "")) if text is not None else None


def _reference_high(holder: Component) -> float | None:
    for reference_range in holder.reference_range or ():
        high = reference_range.high
        if high is not None and high.value is not None and high.value > 0:
            return high.value
    return None


def _medication_codeable(record: PatientRecord, resource: Resource) -> CodeableConcept | msgspec.Raw | None:
    if resource.medication_codeable_concept is not None:
        return resource.medication_codeable_concept
    reference = resource.medication_reference
    if reference is None or reference.reference is None:
        return None
    target = reference.reference
    if target.startswith("#"):
        for contained in resource.contained or ():
            if contained.id == target[1:]:
                return contained.code
        return None
    medication = record.resolve(target)
    if medication is not None:
        return medication.code
    return CodeableConcept(text=reference.display) if reference.display else None


def _dosages(resource: Resource) -> list[Dosage]:
    """MedicationRequest.dosageInstruction, else MedicationStatement.dosage."""
    dosages = resource.dosage_instruction or resource.dosage
    if isinstance(dosages, Dosage):
        return [dosages]
    return dosages or []


def _medication_start(resource: Resource) -> date | None:
    for dosage in _dosages(resource):
        repeat = dosage.timing.repeat if dosage.timing is not None else None
        bounds = repeat.bounds_period if repeat is not None else None
        start = parse_date(bounds.start) if bounds is not None else None
        if start is not None:
            return start
    period = resource.effective_period
    start = parse_date(period.start) if period is not None else None
    if start is not None:
        return start
    return parse_date(resource.authored_on) or parse_date(resource.effective_date_time)


def _daily_dose(resource: Resource, found: Match) -> tuple[float | None, str | None, str | None]:
    """Daily dose from structured dosage, else from its text; None when neither can be read.

    Instructions with one sequence number (or none) apply together and add up; instructions with different ones
    follow each other (FHIR Dosage.sequence: a titration), so the dose is that of the highest step, not their sum.
    """
    steps: dict[int | None, tuple[float, str, list[str]]] = {}
    for dosage in _dosages(resource):
        single = _structured_dose(dosage, found) or _text_dose(dosage)
        if single is None:
            continue
        amount, amount_unit, note = single
        total, _, notes = steps.get(dosage.sequence, (0.0, amount_unit, []))
        steps[dosage.sequence] = (total + amount, amount_unit, [*notes, note] if note else notes)
    if not steps:
        return None, None, None
    total, unit, notes = max(steps.values(), key=lambda step: step[0])
    if not 0 < total < math.inf:  # a dose so large it overflows cannot be read
        return None, None, None
    if len(steps) > 1:
        notes = [*notes, f"the highest of {len(steps)} dose steps given in sequence"]
    return total, unit, "; ".join(notes) or None


def _structured_dose(dosage: Dosage, found: Match) -> tuple[float, str, str | None] | None:
    per_day = _dosage_times_per_day(dosage)
    dose = _dose_quantity(dosage)
    if per_day is None or dose is None:
        return None
    value, unit = dose
    normal, note = _normal_amount(value, unit, found)
    if normal is None:
        return None
    amount, amount_unit = normal
    return amount * per_day, amount_unit, note


def _dose_quantity(dosage: Dosage) -> tuple[float, str] | None:
    for dose_and_rate in dosage.dose_and_rate or ():
        quantity: Quantity | None = dose_and_rate.dose_quantity
        if quantity is None and dose_and_rate.dose_range is not None:
            quantity = dose_and_rate.dose_range.high
        value = _positive_number(quantity.value) if quantity is not None else None
        if quantity is not None and value is not None:  # a zero or negative amount is not a dose
            return value, quantity.code or quantity.unit or ""
    return None


def _normal_amount(value: float, unit: str, found: Match) -> tuple[tuple[float, str] | None, str | None]:
    key = _unit_key(unit)
    if key in ("mg", "milligram", "milligrams"):
        return (value, "mg"), None
    if key in ("g", "gram", "grams"):
        return (value * 1000.0, "mg"), None
    if key in ("ug", "mcg", "microgram", "micrograms"):
        return (value, "microgram"), None
    strength = found.coding.strength_mg if found.coding else None
    if key in ("{pill}", "{tbl}", "tablet", "tablets", "tab", "{tablet}", "capsule", "{capsule}", "1") and strength:
        return (value * strength, "mg"), f"{value:g} {unit} x {strength:g} mg product strength"
    return None, None


def _dosage_times_per_day(dosage: Dosage) -> float | None:
    timing = dosage.timing
    if timing is None:
        return None
    repeat = timing.repeat
    if repeat is not None:
        per_day = times_per_day(repeat.frequency_max or repeat.frequency, repeat.period, repeat.period_unit)
        if per_day is not None:
            return per_day
    code_text = _text_of(timing.code)
    if code_text:
        return _frequency_from_text(code_text)
    return None


def times_per_day(frequency: object, period: object, period_unit: object) -> float | None:
    """Doses a day from a Timing.repeat's frequency, period and periodUnit (no period: per day); None unless each
    is usable: a positive finite number, a known unit."""
    count = _positive_number(frequency)
    if count is None or period is None:
        return count
    length = _positive_number(period)
    if length is None or not isinstance(period_unit, str) or period_unit not in PERIOD_DAYS:
        return None
    rate = count / (length * PERIOD_DAYS[period_unit])
    return rate if 0 < rate < math.inf else None


def _positive_number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return None


def _frequency_from_text(text: str) -> float | None:
    for pattern, per_day in TEXT_FREQUENCY:
        if pattern.search(text):
            return per_day
    return None


def _text_dose(dosage: Dosage) -> tuple[float, str, str | None] | None:
    text = dosage.text
    if text is None:
        return None
    amount = TEXT_DOSE.search(text)
    per_day = _frequency_from_text(text)
    if amount is None or per_day is None:
        return None
    value, unit = float(amount.group(1)), amount.group(2).lower()
    if unit == "g":
        value, unit = value * 1000.0, "mg"
    elif unit != "mg":
        unit = "microgram"
    return value * per_day, unit, f"dose read from the dosage text {text!r}"


def _joined(*notes: str | None) -> str | None:
    """Notes on one fact, in order, the absent ones left out."""
    return "; ".join(note for note in notes if note) or None


def _ckd_epi(equation: EgfrEquation, creatinine_mg_dl: float, age: int, sex: str) -> float:
    kappa, alpha = equation.kappa[sex], equation.alpha[sex]
    ratio = creatinine_mg_dl / kappa
    value = (
        equation.multiplier
        * min(ratio, 1.0) ** alpha
        * max(ratio, 1.0) ** equation.exponent_above_kappa
        * equation.age_base**age
    )
    return float(value * (equation.female_factor if sex == "female" else 1.0))
