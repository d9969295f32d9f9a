"""Out-of-date results that still count (``stale_if_met``): the finding stands, says so and lowers confidence;
a conclusion that an out-of-date value made false is not known, so the rule's data gap stays."""

from __future__ import annotations

from typing import Any

import pytest

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.evaluator import Engine

from .records import NOW, Resource, alt, ast, days_ago, egfr, med, orthostatic, record, relies_on_tone, systolic

ENGINE: Engine = load_knowledge_base()
OLD = days_ago(300)


def _evaluate(*resources: Resource | list[Resource]) -> dict[str, Any]:
    return ENGINE.evaluate(record(*resources), NOW)


def _finding(result: dict[str, Any], finding_id: str) -> dict[str, Any]:
    return next(f for f in result["findings"] if f["id"] == finding_id)


def _status(result: dict[str, Any], agent: str) -> str:
    return str(next(o["status"] for o in result["options"] if o["agent"] == agent))


@pytest.mark.parametrize(
    ("resources", "rule_id", "agent", "status", "out_of_date"),
    [
        (
            [egfr(24, when=OLD), med("baclofen", dose=20, per_day=3)],
            "BACLOFEN-KIDNEY-FAILURE-AVOID",
            "baclofen",
            "avoid",
            ["obs.egfr"],
        ),
        ([egfr(20, when=OLD), med("tizanidine")], "TIZ-RENAL", "tizanidine", "caution", ["obs.egfr"]),
        ([egfr(40, when=OLD), med("clonidine")], "CLONIDINE-RENAL", "clonidine", "caution", ["obs.egfr"]),
        (
            [alt(210, when=OLD), ast(150, when=OLD), med("dantrolene", status="draft")],
            "DANT-LFT-ABNORMAL",
            "dantrolene",
            "avoid",
            ["obs.alt_x_uln", "obs.ast_x_uln"],
        ),
        (
            [alt(150, when=OLD), med("tizanidine", status="draft")],
            "TIZ-LIVER-3X",
            "tizanidine",
            "avoid",
            ["obs.alt_x_uln"],
        ),
        (
            [systolic(84, when=OLD), med("tizanidine", status="draft")],
            "ALPHA2-HYPOTENSION",
            "tizanidine",
            "avoid",
            ["obs.systolic-bp"],
        ),
        (
            [relies_on_tone(True, when=OLD)],
            "DANT-TONE-RELIANCE",
            "dantrolene",
            "contraindicated",
            ["obs.relies-on-tone"],
        ),
        ([relies_on_tone(True, when=OLD)], "TONE-RELIANCE", "baclofen", "caution", ["obs.relies-on-tone"]),
    ],
)
def test_an_out_of_date_abnormal_result_still_rules_the_drug_out_and_says_so(
    resources: list[Resource], rule_id: str, agent: str, status: str, out_of_date: list[str]
) -> None:
    result = _evaluate(*resources)
    finding = _finding(result, rule_id)
    rule = ENGINE.rule_by_id[rule_id].rule
    assert finding["kind"] == rule.kind
    assert finding["out_of_date"] == out_of_date
    assert rule.stale_summary is not None
    assert "out of date" in finding["summary"] and "stale" in finding["summary"], "the value and its date are shown"
    assert _status(result, agent) == status
    assert result["confidence"] == "reduced"


def test_a_current_abnormal_result_uses_the_ordinary_text() -> None:
    finding = _finding(_evaluate(egfr(24), med("baclofen", dose=20, per_day=3)), "BACLOFEN-KIDNEY-FAILURE-AVOID")
    assert "out_of_date" not in finding
    assert finding["summary"].startswith("Kidney function is severely reduced")


def test_an_out_of_date_normal_result_is_unknown_not_reassuring() -> None:
    result = _evaluate(egfr(70, when=OLD), med("baclofen", dose=20, per_day=3))
    assert not [f for f in result["findings"] if f["id"] == "BACLOFEN-KIDNEY-FAILURE-AVOID"]
    assert _finding(result, "BACLOFEN-RENAL-BAND:gap")["kind"] == "data-gap"
    assert _status(result, "baclofen") == "current"


def test_a_no_that_rests_on_an_out_of_date_value_keeps_the_rules_data_gap() -> None:
    """BACLOFEN-RENAL-BAND is false once old kidney failure counts, but strictly it cannot be judged."""
    result = _evaluate(egfr(24, when=OLD), med("baclofen", dose=20, per_day=3))
    gap = _finding(result, "BACLOFEN-RENAL-BAND:gap")
    assert gap["kind"] == "data-gap" and gap["severity"] == "warning"
    assert gap["missing"] == ["obs.egfr"]
    assert result["data_gaps"] == sum(1 for f in result["findings"] if f["kind"] == "data-gap")


def test_an_out_of_date_standing_drop_counts_as_low_blood_pressure() -> None:
    old_pair = [{**resource, "effectiveDateTime": OLD} for resource in orthostatic(140, 110)]
    result = _evaluate(old_pair, med("clonidine", status="draft"))
    finding = _finding(result, "ALPHA2-HYPOTENSION")
    assert finding["out_of_date"] == ["obs.orthostatic_sbp_drop"]
    assert _status(result, "clonidine") == "avoid"


def test_only_the_out_of_date_facts_that_decided_are_named() -> None:
    result = _evaluate(alt(210, when=OLD), ast(30), med("dantrolene", status="draft"))
    assert _finding(result, "DANT-LFT-ABNORMAL")["out_of_date"] == ["obs.alt_x_uln"]


def test_a_current_value_beside_an_old_one_needs_no_out_of_date_mark() -> None:
    result = _evaluate(alt(210, when=OLD), ast(200), med("dantrolene", status="draft"))
    finding = _finding(result, "DANT-LFT-ABNORMAL")
    assert "out_of_date" not in finding
    assert finding["summary"].startswith("Liver tests are abnormal")
