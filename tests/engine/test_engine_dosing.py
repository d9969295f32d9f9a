"""Dose plans placed where the patient stands: remaining steps, none at the top, a gradual reduction above the limit."""

from __future__ import annotations

from typing import Any

import pytest

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine import dosing
from spasticity_cds.engine.dosing import dose_plan, steps_text

from .records import NOW, days_ago, egfr, med, procedure, record

ENGINE = load_knowledge_base()


def _plan(agent: str, *resources: Any, **settings: Any) -> dict[str, Any]:
    facts, _ = ENGINE._facts(record(*resources), NOW, ENGINE.settings_for(settings))
    plan = dose_plan(
        ENGINE.kb.monographs[agent], facts, ENGINE.settings_for(settings), NOW, ENGINE.cite, pace=ENGINE.reduction_pace
    )
    assert plan is not None
    return plan


def _dailies(steps: list[dict[str, Any]]) -> list[float]:
    return [step["daily"] for step in steps]


def test_a_new_patient_has_no_placement_and_the_steps_from_the_start() -> None:
    plan = _plan("baclofen", egfr(90))
    assert "placement" not in plan and "reduction" not in plan
    assert _dailies(plan["steps"]) == [15, 30, 45, 60, 80]
    assert plan["steps"][0]["date"] == "2026-11-24"


def test_above_the_kidney_ceiling_the_dose_comes_down_one_step_a_week_to_the_highest_step_within_it() -> None:
    plan = _plan("baclofen", med("baclofen", dose=20, per_day=4, start=days_ago(200)), egfr(60))
    placement = plan["placement"]
    assert placement["fit"] == "above-limit" and placement["state"] == "current"
    assert placement["daily"] == 80 and placement["limit"] == 53.6 and placement["limit_basis"] == "ceiling"
    assert plan["steps"] == []  # never the new-patient titration from 5 mg three times daily
    reduction = plan["reduction"]
    assert _dailies(reduction["steps"]) == [60, 45] and reduction["target_daily"] == 45
    assert [step["date"] for step in reduction["steps"]] == ["2026-11-24", "2026-12-01"]
    assert reduction["step_days"] == 7
    assert reduction["taper"]["text"].startswith("Never stop abruptly")
    assert {c["id"] for c in reduction["taper"]["citations"]} == {"baclofen-label-us", "baclofen-uk-formulary"}
    assert reduction["pace"]["citations"][0]["id"] == "project-design-proposal"
    assert reduction["pace"]["citations"][0]["status"] == "UNCONFIRMED"


def test_the_pace_of_a_reduction_is_a_setting() -> None:
    plan = _plan("baclofen", med("baclofen", dose=20, per_day=4), egfr(40), dose_reduction_step_days=3)
    assert [(s["day"], s["daily"]) for s in plan["reduction"]["steps"]] == [(0, 60), (3, 45), (6, 30)]


def test_just_above_the_labelled_maximum_is_one_step_down_to_it() -> None:
    plan = _plan("baclofen", med("baclofen", dose=30, per_day=3), egfr(95))
    assert plan["placement"]["limit"] == 80
    assert _dailies(plan["reduction"]["steps"]) == [80]


def test_an_order_above_the_limit_not_yet_taken_is_not_tapered() -> None:
    plan = _plan("baclofen", med("baclofen", status="draft", dose=30, per_day=3), egfr(95))
    assert plan["placement"]["state"] == "ordered" and plan["placement"]["fit"] == "above-limit"
    assert "reduction" not in plan
    assert _dailies(plan["steps"])[0] == 15


def test_mid_titration_the_remaining_steps_are_dated_one_interval_from_today() -> None:
    plan = _plan("baclofen", med("baclofen", dose=10, per_day=3, start=days_ago(60)), egfr(95))
    assert plan["placement"]["fit"] == "steps-remain"
    assert [(s["day"], s["daily"]) for s in plan["steps"]] == [(3, 45), (6, 60), (9, 80)]
    assert "the record does not show since when" in plan["placement"]["text"]


@pytest.mark.parametrize(("days", "first_day"), [(7, 0), (21, 0), (3, 4)])
def test_on_the_starting_dose_the_days_already_taken_count(days: int, first_day: int) -> None:
    plan = _plan("dantrolene", med("dantrolene", dose=25, per_day=1, start=days_ago(days)), egfr(95))
    assert [(s["day"], s["daily"]) for s in plan["steps"]] == [
        (first_day, 75),
        (first_day + 7, 150),
        (first_day + 14, 300),
    ]
    assert f"after {days} days on the starting dose" in plan["placement"]["text"]


def test_at_the_top_within_the_ceiling_no_step_remains() -> None:
    plan = _plan("baclofen", med("baclofen", dose=10, per_day=3), egfr(40))
    assert plan["placement"]["fit"] == "no-step-remains" and plan["steps"] == []
    assert "within the ceiling of 40 mg/day" in plan["placement"]["text"]
    assert "reduction" not in plan


def test_an_unreadable_dose_keeps_the_standard_steps_and_says_it_could_not_place_the_patient() -> None:
    plan = _plan("baclofen", med("baclofen", start=days_ago(30)), egfr(95))
    assert plan["placement"]["fit"] == "dose-unknown" and plan["placement"]["daily"] is None
    assert "could not be placed" in plan["placement"]["text"]
    assert _dailies(plan["steps"]) == [15, 30, 45, 60, 80]


def test_a_dose_in_another_unit_is_not_placed() -> None:
    plan = _plan("baclofen", med("baclofen", dose=20000, unit="ug", per_day=3), egfr(95))
    assert plan["placement"]["fit"] == "dose-unknown"


def test_tizanidine_steps_say_the_kidney_adjustment_applies_to_them_without_changing_the_doses() -> None:
    plan = _plan("tizanidine", egfr(20))
    renal = plan["renal_adjustment"]
    assert renal["action"] == "caution" and renal["basis"] == "eGFR < 25"
    assert (
        renal["steps_note"]
        == "The titration steps show standard doses: this kidney adjustment applies to each of them."
    )
    assert renal["citations"][0]["id"] == "zanaflex-label"
    assert _dailies(plan["steps"]) == [2, 4, 6, 12, 18, 24, 30, 36]  # no invented reduced doses
    assert plan["ceiling"]["value"] == 36


def test_tizanidine_on_dialysis_without_an_egfr_names_the_band_too() -> None:
    plan = _plan("tizanidine", procedure("haemodialysis"))
    assert plan["renal_adjustment"]["basis"].startswith("kidney failure or dialysis with no current eGFR")
    assert plan["ceiling"]["value"] == 36


def test_no_kidney_adjustment_above_the_bands() -> None:
    assert "renal_adjustment" not in _plan("tizanidine", egfr(60))
    assert "renal_adjustment" not in _plan("baclofen", egfr(95))


def test_baclofen_steps_stop_at_the_kidney_adjusted_ceiling() -> None:
    plan = _plan("baclofen", egfr(40))
    assert plan["renal_adjustment"]["steps_note"] == "The titration steps stop at the kidney-adjusted ceiling."
    unscaled = _plan("baclofen", egfr(40), renal_fraction_ceiling="labelled-maximum")
    assert unscaled["renal_adjustment"]["steps_note"].startswith("The titration steps show standard doses")


def test_steps_are_shared_per_monograph_cap_day_and_place() -> None:
    dosing._STEPS_CACHE.clear()
    first = _plan("baclofen", med("baclofen", dose=10, per_day=3), egfr(95))["steps"]
    again = _plan("baclofen", med("baclofen", dose=10, per_day=3), egfr(95))["steps"]
    other = _plan("baclofen", med("baclofen", dose=15, per_day=3), egfr(95))["steps"]
    new = _plan("baclofen", egfr(95))["steps"]
    assert first is again and first is not other and first is not new
    assert _dailies(other) == [60, 80] and _dailies(new)[0] == 15


def test_steps_text_is_one_dated_line() -> None:
    steps = [{"date": "2026-11-24", "dose": 5.0, "unit": "mg", "times_per_day": 3, "daily": 15.0}]
    assert steps_text(steps) == "2026-11-24 5 mg x3 (15 mg/day)"


def test_a_first_step_down_larger_than_any_titration_step_is_said_not_filled_with_invented_doses() -> None:
    plan = _plan("tizanidine", med("tizanidine", dose=12, per_day=4), egfr(90))
    reduction = plan["reduction"]
    assert _dailies(reduction["steps"]) == [36]  # the monograph has no step between 48 and 36 mg/day, the maximum
    assert "from 48 to 36 mg/day, is larger than any step of the titration" in reduction["text"]
    ordinary = _plan("baclofen", med("baclofen", dose=20, per_day=4), egfr(60))["reduction"]["text"]
    assert "larger than any step" not in ordinary


def test_tizanidine_comes_down_from_above_its_maximum_to_the_highest_step_within_it_never_to_24() -> None:
    """The steps reach the labelled maximum of 36 mg/day (10 and 12 mg three times daily above the usual 24)."""
    reduction = _plan("tizanidine", med("tizanidine", dose=10, per_day=4), egfr(90))["reduction"]  # 40 mg/day
    assert _dailies(reduction["steps"]) == [36] and reduction["target_daily"] == 36
    assert "larger than any step" not in reduction["text"]  # 40 to 36 is smaller than a titration step
    withdrawal = _option_plan(
        "tizanidine", med("tizanidine", dose=12, per_day=3), med("verapamil", dose=80, per_day=3), egfr(90)
    )["reduction"]
    assert _dailies(withdrawal["steps"]) == [30, 24, 18, 12, 6, 4, 2]  # a taper from 36 mg/day, a step at a time


def _option_plan(agent: str, *resources: Any) -> dict[str, Any]:
    result = ENGINE.evaluate(record(*resources), NOW)
    plan: dict[str, Any] = next(o for o in result["options"] if o["agent"] == agent)["dose_plan"]
    return plan


def test_without_a_current_egfr_a_drug_taken_gets_no_step_up() -> None:
    plan = _option_plan("baclofen", med("baclofen", dose=10, per_day=3))
    placement = plan["placement"]
    assert placement["fit"] == "held" and plan["steps"] == []
    assert placement["text"] == (
        "Taken at 30 mg/day: no titration step up for now, as its kidney-adjusted ceiling is unknown (no current eGFR)."
    )


def test_a_caution_on_a_drug_taken_holds_its_steps_but_an_order_keeps_them() -> None:
    opioid = med("oxycodone", dose=5, per_day=2)
    taken = _option_plan("tizanidine", med("tizanidine", dose=2, per_day=3), opioid, egfr(90))
    assert taken["placement"]["fit"] == "held" and taken["steps"] == []
    assert "a caution applies to it" in taken["placement"]["text"]
    ordered = _option_plan("tizanidine", med("tizanidine", status="draft", dose=2, per_day=3), opioid, egfr(90))
    assert ordered["placement"]["fit"] == "steps-remain" and ordered["steps"]
