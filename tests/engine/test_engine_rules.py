"""Every active rule: a record on which it fires, one on which it does not, one with its data missing."""

from __future__ import annotations

from typing import Any

import pytest

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.fhir.record import PatientRecord

from .records import LOINC, NOW, fvc, obs, record
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
