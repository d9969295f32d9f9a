"""Every active rule: a record on which it fires, one on which it does not, one with its data missing."""

from __future__ import annotations

from typing import Any

import pytest

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.fhir.record import PatientRecord

from .records import LOINC, NOW, fvc, obs, record
from .records import patient as patient_resource
from .rule_cases import CASES, RuleCase

ENGINE: Engine = load_knowledge_base()
RULES = {compiled.rule.id: compiled.rule for compiled in ENGINE.rules}
IDS = [case.rule_id for case in CASES]


def _run(case: RuleCase, which: int) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    build = (case.fires, case.does_not_fire, case.missing)[which]
    assert build is not None
    person = case.fires_person() if which == 0 and case.fires_person is not None else None
    patient: PatientRecord = record(*build(), with_als=case.with_als[which], person=person)
    outcome = ENGINE.explain(patient, NOW, case.rule_id, case.settings)["outcome"]
    result = ENGINE.evaluate(patient, NOW, case.settings)
    mine = [f for f in result["findings"] if f["rule_id"] == case.rule_id]
    return outcome, mine, result


def test_the_table_covers_every_active_rule_once() -> None:
    assert sorted(IDS) == sorted(RULES)
    assert len(RULES) >= 56


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fires(case: RuleCase) -> None:
    outcome, mine, result = _run(case, 0)
    rule = RULES[case.rule_id]
    assert outcome == "true"
    assert [f["kind"] for f in mine] == [rule.kind], "a firing rule reports exactly one finding of its kind"
    finding = mine[0]
    assert finding["rule_version"] == rule.version
    assert finding["citations"], "every finding carries its citations"
    assert "{" not in finding["summary"], f"unfilled placeholder in {finding['summary']!r}"
    statuses = {option["agent"]: option for option in result["options"]}
    for agent in rule.effects:
        assert case.rule_id in statuses[agent]["because"], f"{agent} does not name {case.rule_id} among its reasons"


@pytest.mark.parametrize("case", [c for c in CASES if c.does_not_fire is not None], ids=lambda c: c.rule_id)
def test_does_not_fire(case: RuleCase) -> None:
    outcome, mine, _ = _run(case, 1)
    assert outcome == "false"
    assert mine == []


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_missing_data(case: RuleCase) -> None:
    outcome, mine, result = _run(case, 2)
    rule = RULES[case.rule_id]
    assert outcome == case.missing_outcome
    involved = any(o["current"] or o["proposed"] for o in result["options"] if o["agent"] in rule.agents)
    says_gap = rule.on_unknown == "data-gap" or (rule.on_unknown == "data-gap-if-involved" and involved)
    if outcome == "unknown" and says_gap:
        assert [f["kind"] for f in mine] == ["data-gap"]
        assert mine[0]["missing"], "a data gap names the facts that are missing"
        assert result["confidence"] == "reduced"
    elif outcome == "true":
        assert [f["kind"] for f in mine] == [rule.kind]
    else:
        assert mine == []
    if outcome == "unknown":
        statuses = {option["agent"]: option for option in result["options"]}
        for agent in rule.effects_if_unknown:
            assert case.rule_id in statuses[agent]["because"]


def test_spasticity_severity_has_no_false_case() -> None:
    """SPASTICITY-SEVERITY reports any current MAS score; a stale one is a data gap, never 'false'."""
    from .records import days_ago, mas

    outcome, mine, _ = _run(
        RuleCase("SPASTICITY-SEVERITY", lambda: [mas("3", "left calf", when=days_ago(400))], None, lambda: []), 0
    )
    assert outcome == "unknown"
    assert [f["kind"] for f in mine] == ["data-gap"]


def test_a_gap_names_the_missing_facts_behind_definitions() -> None:
    from .records import LOCAL, obs

    result = ENGINE.evaluate(record(obs(LOCAL, "snip", 70, unit="cm[H2O]")), NOW)
    gap = next(f for f in result["findings"] if f["id"] == "RESP-STATUS:gap")
    assert gap["kind"] == "data-gap"
    assert gap["missing"] == ["obs.fvc-percent"]
    assert result["data_gaps"] == sum(1 for f in result["findings"] if f["kind"] == "data-gap")


def test_unmeasured_optional_tests_do_not_make_breathing_unknown() -> None:
    """FVC is the required measure; SNIP, MIP and blood gases count only when they were measured."""
    from .records import fvc

    result = ENGINE.evaluate(record(fvc(85)), NOW)
    assert not [f for f in result["findings"] if f["rule_id"] == "RESP-STATUS"]
    benzo = next(o for o in result["options"] if o["agent"] == "diazepam")
    assert benzo["status"] == "consider"


def test_out_of_scope_gives_only_the_scope_finding() -> None:
    from .records import med

    result = ENGINE.evaluate(record(med("baclofen", dose=30, per_day=4), with_als=False), NOW)
    assert result["in_scope"] is False
    assert result["options"] == []
    assert [f["rule_id"] for f in result["findings"]] == ["SCOPE-NO-ALS"]


def test_a_summary_names_the_measures_that_met_its_definition() -> None:
    result = ENGINE.evaluate(record(fvc(90), obs(LOINC, "2019-8", 48.0, unit="mm[Hg]")), NOW)
    summary = next(f["summary"] for f in result["findings"] if f["id"] == "RESP-STATUS")
    assert summary.startswith("Breathing is compromised (Arterial PaCO2 48 mmHg")
    assert "FVC" not in summary and "Non-invasive" not in summary


DOSE_LIMIT_RULES = (
    "BACLOFEN-DOSE-ABOVE-MAX",
    "BACLOFEN-DOSE-ABOVE-CEILING",
    "GABAPENTIN-DOSE-ABOVE-MAX",
    "GABAPENTIN-DOSE-ABOVE-CEILING",
    "TIZ-DOSE-ABOVE-MAX",
    "DANT-DOSE-ABOVE-MAX",
)


def test_every_dosed_antispastic_with_a_labelled_maximum_has_a_maximum_rule() -> None:
    """A monograph's max_daily is checked by a rule that reads dose.<agent>.above_max."""
    reads = {
        fact
        for compiled in ENGINE.rules
        for fact in compiled.facts_read
        if fact.startswith("dose.") and fact.endswith(".above_max")
    }
    dosed = {m.id for m in ENGINE.kb.monographs.values() if m.role == "antispastic" and m.max_daily}
    assert {f"dose.{agent}.above_max" for agent in dosed} <= reads


@pytest.mark.parametrize("rule_id", DOSE_LIMIT_RULES)
def test_dose_limit_rules_weigh_the_same(rule_id: str) -> None:
    """A dose above the limit in force is critical for every drug, taken or ordered."""
    rule = RULES[rule_id]
    assert (rule.kind, rule.severity, rule.escalate_if_current) == ("dose", "critical", None)


def _rule_ids(*resources: Any, settings: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    result = ENGINE.evaluate(record(*resources), NOW, settings or {})
    return {f["id"]: f for f in result["findings"]}


def test_avoid_policy_gives_no_kidney_ceiling_beside_avoid() -> None:
    from .records import egfr, med

    found = _rule_ids(egfr(20), med("baclofen", dose=20, per_day=3))
    assert "BACLOFEN-KIDNEY-FAILURE-AVOID" in found
    assert "BACLOFEN-DOSE-ABOVE-CEILING" not in found


def test_reduce_policy_flags_the_ceiling_on_dialysis_without_an_egfr() -> None:
    from .records import med, procedure

    found = _rule_ids(
        procedure("Haemodialysis"),
        med("baclofen", dose=10, per_day=3),
        settings={"baclofen_severe_ckd_policy": "reduce"},
    )
    ceiling = found["BACLOFEN-DOSE-ABOVE-CEILING"]
    assert ceiling["severity"] == "critical"
    assert ceiling["summary"] == "Baclofen 30 mg/day is above the kidney-adjusted ceiling of 26.4 mg/day (Dialysis)."
    assert "BACLOFEN-KIDNEY-FAILURE-REDUCE" in found


def test_the_baclofen_ceiling_applies_at_an_egfr_of_exactly_80() -> None:
    from .records import egfr, med

    found = _rule_ids(egfr(80), med("baclofen", dose=20, per_day=3))
    assert "BACLOFEN-RENAL-BAND" in found
    assert "53.6 mg/day" in found["BACLOFEN-DOSE-ABOVE-CEILING"]["summary"]


def test_gabapentin_on_dialysis_without_an_egfr_takes_the_lowest_band() -> None:
    from .records import med, procedure

    found = _rule_ids(procedure("Haemodialysis"), med("gabapentin", dose=300, per_day=3))
    assert "300 mg/day (Dialysis)" in found["GABAPENTIN-DOSE-ABOVE-CEILING"]["summary"]
    assert "GABAPENTIN-DOSE-ABOVE-MAX" not in found


def test_a_gabapentin_dose_above_the_maximum_is_flagged_once() -> None:
    from .records import egfr, med

    found = _rule_ids(egfr(95), med("gabapentin", dose=1200, per_day=4))
    assert "GABAPENTIN-DOSE-ABOVE-MAX" in found
    assert "GABAPENTIN-DOSE-ABOVE-CEILING" not in found
    low = _rule_ids(egfr(25), med("gabapentin", dose=1200, per_day=4))
    assert {"GABAPENTIN-DOSE-ABOVE-MAX", "GABAPENTIN-DOSE-ABOVE-CEILING"} <= set(low)


def test_the_next_ladder_options_are_not_offered_when_both_are_already_taken() -> None:
    from .records import med

    at_max = med("baclofen", dose=20, per_day=4)
    both = ENGINE.evaluate(
        record(at_max, med("tizanidine", dose=4, per_day=3), med("gabapentin", dose=300, per_day=3)), NOW
    )
    assert not [f for f in both["findings"] if f["rule_id"] == "LADDER-AFTER-BACLOFEN"]
    one = ENGINE.evaluate(record(at_max, med("tizanidine", dose=4, per_day=3)), NOW)
    assert not [f for f in one["findings"] if f["rule_id"] == "LADDER-AFTER-BACLOFEN"]
    neither = ENGINE.evaluate(record(at_max), NOW)
    summary = next(f["summary"] for f in neither["findings"] if f["rule_id"] == "LADDER-AFTER-BACLOFEN")
    assert "dantrolene" not in summary


def test_combined_sedating_antispastics_name_each_drug() -> None:
    from .records import med

    result = ENGINE.evaluate(
        record(
            med("baclofen", dose=10, per_day=3), med("tizanidine", dose=2, per_day=3), med("diazepam", status="draft")
        ),
        NOW,
    )
    finding = next(f for f in result["findings"] if f["rule_id"] == "SEDATING-ANTISPASTICS-COMBINED")
    assert finding["severity"] == "warning"
    for name in ("Baclofen", "Tizanidine", "Diazepam"):
        assert name in finding["summary"]


def test_a_pump_for_a_patient_with_respiratory_failure_is_a_caution_not_a_recommendation() -> None:
    from .records import mas, med, procedure

    result = ENGINE.evaluate(
        record(
            procedure("BiPAP overnight"),
            fvc(30),
            med("baclofen", status="stopped", reason="ineffective"),
            mas("3", "hip"),
        ),
        NOW,
    )
    itb = next(o for o in result["options"] if o["agent"] == "intrathecal-baclofen")
    assert itb["status"] == "caution"
    assert "ITB-RESPIRATORY" in itb["because"]
    ids = {f["rule_id"] for f in result["findings"]}
    assert {"ITB-REFERRAL", "ITB-RESPIRATORY"} <= ids


def test_a_date_of_death_after_the_evaluation_day_is_said_and_the_patient_treated_as_living() -> None:
    result = ENGINE.evaluate(record(person={**patient_resource(), "deceasedDateTime": "2027-01-01"}), NOW)
    assert result["in_scope"] is True
    assert not [f for f in result["findings"] if f["rule_id"] == "SCOPE-DECEASED"]
    assert (
        "the Patient resource gives a date of death after the evaluation day (deceasedDateTime 2027-01-01) or one "
        "that cannot be read; the patient is treated as living"
    ) in result["input_notes"]
