"""Withdrawal plans: an agent the patient takes that a rule rules out comes off it: dated, undated when a critical
finding rules it out, or at once."""

from __future__ import annotations

from typing import Any

from spasticity_cds.api import load_knowledge_base

from .records import NOW, alt, ast, egfr, med, record, systolic

ENGINE = load_knowledge_base()


def _option(agent: str, *resources: Any, **settings: Any) -> dict[str, Any]:
    result = ENGINE.evaluate(record(*resources), NOW, settings)
    option: dict[str, Any] = next(o for o in result["options"] if o["agent"] == agent)
    return option


def _plan(agent: str, *resources: Any, **settings: Any) -> dict[str, Any]:
    option = _option(agent, *resources, **settings)
    assert option["status"] in ("avoid", "contraindicated") and option["current"]
    plan: dict[str, Any] = option["dose_plan"]
    return plan


def _dailies(steps: list[dict[str, Any]]) -> list[float]:
    return [step["daily"] for step in steps]


def test_baclofen_ruled_out_by_a_critical_finding_gets_no_routine_taper_dates_but_its_taper_advice() -> None:
    plan = _plan("baclofen", med("baclofen", dose=20, per_day=3), egfr(20))
    assert plan["steps"] == [] and not {"start", "titration", "max_basis", "ceiling"} & set(plan)
    placement = plan["placement"]
    assert placement["state"] == "current" and placement["daily"] == 60
    assert placement["limit"] is None and "withdrawn" in placement["text"]
    reduction = plan["reduction"]
    assert reduction["steps"] == [] and reduction["stop"] == {"how": "undated"} and "pace" not in reduction
    assert "critical finding" in reduction["text"] and "clinician's decision" in reduction["text"]
    assert reduction["taper"]["text"].startswith("Never stop abruptly")
    assert [reason["rule_id"] for reason in reduction["because"]] == ["BACLOFEN-KIDNEY-FAILURE-AVOID"]
    assert reduction["because"][0]["citations"][0]["id"] == "ajkd-2017-baclofen"


TIZANIDINE_WITH_VERAPAMIL = (med("tizanidine", dose=4, per_day=3), med("verapamil", dose=80, per_day=3))


def test_a_drug_ruled_out_by_a_warning_is_tapered_down_the_steps_to_stopping() -> None:
    reduction = _plan("tizanidine", *TIZANIDINE_WITH_VERAPAMIL)["reduction"]
    assert _dailies(reduction["steps"]) == [6, 4, 2] and reduction["target_daily"] == 0
    assert [step["date"] for step in reduction["steps"]] == ["2026-11-24", "2026-12-01", "2026-12-08"]
    assert reduction["stop"] == {"how": "taper", "day": 21, "date": "2026-12-15"}
    assert "then stop on 2026-12-15" in reduction["text"]
    assert "rebound hypertension" in reduction["taper"]["text"]
    assert reduction["pace"]["citations"][0]["id"] == "project-design-proposal"
    assert [reason["rule_id"] for reason in reduction["because"]] == ["TIZ-CYP1A2-OTHER"]


def test_an_agent_ruled_out_but_only_ordered_has_no_plan() -> None:
    option = _option("baclofen", med("baclofen", status="draft", dose=5, per_day=3), egfr(20))
    assert option["status"] == "avoid" and not option["current"]
    assert "dose_plan" not in option


def test_the_pace_of_a_withdrawal_is_the_reduction_setting() -> None:
    plan = _plan("tizanidine", *TIZANIDINE_WITH_VERAPAMIL, dose_reduction_step_days=3)
    assert [(s["day"], s["daily"]) for s in plan["reduction"]["steps"]] == [(0, 6), (3, 4), (6, 2)]
    assert plan["reduction"]["stop"]["day"] == 9


def test_on_the_lowest_step_the_dose_is_kept_one_interval_then_stopped_never_stopped_today() -> None:
    lowest = med("tizanidine", dose=2, per_day=1)
    reduction = _plan("tizanidine", lowest, med("verapamil", dose=80, per_day=3))["reduction"]
    assert reduction["steps"] == [] and reduction["stop"] == {"how": "taper", "day": 7, "date": "2026-12-01"}
    assert "keep it for 7 days" in reduction["text"]


def test_an_unreadable_dose_cannot_be_dated_but_the_taper_advice_is_given() -> None:
    plan = _plan("baclofen", med("baclofen"), egfr(20))
    reduction = plan["reduction"]
    assert plan["placement"]["daily"] is None and reduction["steps"] == []
    assert reduction["stop"] == {"how": "undated"} and "cannot be dated" in reduction["text"]
    assert reduction["taper"]["text"].startswith("Never stop abruptly") and "pace" not in reduction


def test_tizanidine_with_fluvoxamine_is_undated_with_its_taper_advice() -> None:
    plan = _plan("tizanidine", med("tizanidine", dose=4, per_day=3), med("fluvoxamine", dose=50, per_day=1))
    reduction = plan["reduction"]
    assert reduction["steps"] == [] and reduction["stop"] == {"how": "undated"}
    assert "rebound hypertension" in reduction["taper"]["text"]
    assert [reason["rule_id"] for reason in reduction["because"]] == ["TIZ-CYP1A2-STRONG"]


def test_only_the_rules_that_rule_the_agent_out_are_named_not_its_cautions() -> None:
    option = _option(
        "tizanidine", med("tizanidine", dose=4, per_day=3), med("clonidine", dose=0.1, per_day=2), egfr(20)
    )
    because = [reason["rule_id"] for reason in option["dose_plan"]["reduction"]["because"]]
    assert because == ["ALPHA2-DUPLICATE-TIZANIDINE"]
    assert set(option["because"]) > set(because)


def test_an_agent_without_titration_steps_gets_its_taper_advice_undated() -> None:
    plan = _plan("clonidine", med("tizanidine", dose=4, per_day=3), med("clonidine", dose=0.1, per_day=2))
    reduction = plan["reduction"]
    assert reduction["stop"] == {"how": "undated"} and reduction["steps"] == []
    assert "no titration steps for Clonidine" in reduction["text"]
    assert "2-4 days" in reduction["taper"]["text"]


def test_dantrolene_with_abnormal_liver_tests_stops_at_once_without_a_taper() -> None:
    plan = _plan("dantrolene", med("dantrolene", dose=50, per_day=3), alt(130), ast(90))
    reduction = plan["reduction"]
    assert reduction["steps"] == [] and reduction["stop"] == {"how": "at-once", "day": 0, "date": "2026-11-24"}
    assert "today rather than taper it" in reduction["text"]
    assert reduction["stop_at_once"]["citations"][0]["id"] == "dantrium-label"
    assert reduction["stop_at_once"]["citations"][0]["status"] == "C-primary"
    assert "taper" not in reduction and "pace" not in reduction
    assert "DANT-LFT-ABNORMAL" in [reason["rule_id"] for reason in reduction["because"]]


def test_dantrolene_ruled_out_for_another_reason_says_no_taper_advice_is_known() -> None:
    plan = _plan(
        "dantrolene", med("dantrolene", dose=50, per_day=3), med("verapamil", dose=80, per_day=3), alt(20), ast(20)
    )
    reduction = plan["reduction"]
    assert reduction["steps"] == [] and reduction["stop"] == {"how": "undated"}
    assert "no taper advice for Dantrolene" in reduction["text"] and "taper" not in reduction
    assert "DANT-VERAPAMIL" in [reason["rule_id"] for reason in reduction["because"]]


def test_a_current_option_not_ruled_out_keeps_its_usual_plan() -> None:
    option = _option("baclofen", med("baclofen", dose=20, per_day=3), egfr(95))
    assert option["status"] == "current"
    assert "stop" not in option["dose_plan"].get("reduction", {}) and option["dose_plan"]["placement"]["limit"] == 80


# ---- two agents not to be combined (exclusive_with, knowledge base 1.6.0) -----------------------------------

TIZANIDINE = med("tizanidine", dose=4, per_day=3)
CLONIDINE = med("clonidine", dose=0.1, per_day=2)


def test_with_both_alpha2_agonists_taken_each_withdrawal_names_the_other_as_its_alternative() -> None:
    for agent, other, rule in (
        ("tizanidine", "clonidine", "ALPHA2-DUPLICATE-TIZANIDINE"),
        ("clonidine", "tizanidine", "ALPHA2-DUPLICATE-CLONIDINE"),
    ):
        plan = _plan(agent, TIZANIDINE, CLONIDINE)
        (alternative,) = plan["reduction"]["alternatives"]
        assert alternative == {
            "agent": other,
            "name": other.capitalize(),
            "state": "current",
            "withdrawn_anyway": False,
            "rule_id": rule,
            "text": alternative["text"],
        }
        assert alternative["text"].endswith(f"withdraw {agent.capitalize()} or {other.capitalize()}, not both.")
        assert "one way to settle it" in plan["placement"]["text"]


def test_with_the_other_only_being_ordered_not_starting_it_is_the_alternative() -> None:
    plan = _plan("tizanidine", TIZANIDINE, med("clonidine", status="draft"))
    (alternative,) = plan["reduction"]["alternatives"]
    assert alternative["state"] == "ordered"
    assert alternative["text"].endswith("withdraw Tizanidine, or do not start Clonidine.")


def test_when_the_other_goes_for_a_reason_of_its_own_this_one_need_not_be_withdrawn() -> None:
    plan = _plan("clonidine", TIZANIDINE, CLONIDINE, med("fluvoxamine"))  # tizanidine contraindicated anyway
    (alternative,) = plan["reduction"]["alternatives"]
    assert alternative["agent"] == "tizanidine" and alternative["withdrawn_anyway"] is True
    assert alternative["text"].endswith("once Tizanidine is stopped, Clonidine need not be withdrawn.")
    tizanidine = _plan("tizanidine", TIZANIDINE, CLONIDINE, med("fluvoxamine"))
    assert "alternatives" not in tizanidine["reduction"]  # it goes whatever is done about clonidine


def test_a_reason_of_its_own_makes_a_withdrawal_certain() -> None:
    low = systolic(84)
    for agent in ("tizanidine", "clonidine"):  # low blood pressure rules both out: both go
        plan = _plan(agent, TIZANIDINE, CLONIDINE, low)
        assert "alternatives" not in plan["reduction"]
        assert "withdrawn (reduction)" in plan["placement"]["text"]
