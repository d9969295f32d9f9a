"""Fact extraction: units, valueString, text matches, doses, days on treatment, staleness, derived eGFR."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.dosing import dose_facts, dose_plan, renal_band
from spasticity_cds.engine.facts import Fact
from spasticity_cds.fhir.record import PatientRecord
from spasticity_cds.knowledge.schema import ConceptKind

from .records import (
    ICD,
    LOINC,
    NOW,
    RECENT,
    RXN,
    SCT,
    Resource,
    alt,
    bilirubin,
    coded,
    condition,
    creatinine,
    days_ago,
    egfr,
    mas,
    med,
    obs,
    orthostatic,
    patient,
    procedure,
    record,
)

ENGINE = load_knowledge_base()


def facts_of(*resources: Resource | list[Resource], **kw: Any) -> tuple[dict[str, Fact], list[str]]:
    return ENGINE.extractor.extract(record(*resources, **kw), NOW)


def all_facts(patient_record: PatientRecord, **settings: Any) -> dict[str, Fact]:
    facts, _ = ENGINE._facts(patient_record, NOW, ENGINE.settings_for(settings))
    return facts


def test_creatinine_in_umol_per_litre_is_converted() -> None:
    facts, _ = facts_of(creatinine(88.4, "umol/L"))
    assert facts["obs.creatinine"].value == pytest.approx(1.0, abs=0.001)
    assert facts["obs.creatinine"].unit == "mg/dL"


def test_egfr_is_derived_from_creatinine_with_a_note() -> None:
    facts, _ = facts_of(creatinine(190, "umol/L"), person=patient("1954-01-19", "female"))
    derived = facts["obs.egfr"]
    assert derived.value == pytest.approx(23.9, abs=0.2)
    assert derived.note is not None
    assert "derived from creatinine" in derived.note
    assert "CKD-EPI 2021" in derived.note
    assert derived.sources and derived.sources[0].startswith("Observation/")


def test_a_measured_egfr_wins_over_a_creatinine_of_the_same_day_or_older() -> None:
    for when in (RECENT, days_ago(40)):
        facts, _ = facts_of(egfr(75), creatinine(3.0, when=when))
        assert facts["obs.egfr"].value == 75.0
        assert facts["obs.egfr"].note is None


def test_a_creatinine_newer_than_a_current_measured_egfr_gives_the_egfr() -> None:
    facts, _ = facts_of(egfr(58, when=days_ago(80)), creatinine(3.1, when=days_ago(4)), person=patient("1950-01-01"))
    derived = facts["obs.egfr"]
    assert derived.value == pytest.approx(20.1, abs=0.2)
    assert derived.date == days_ago(4) and not derived.stale
    assert derived.note is not None and "newer than the measured eGFR of 58 mL/min/1.73m2" in derived.note


def test_egfr_needs_age_and_sex_to_be_derived_and_says_so() -> None:
    facts, _ = facts_of(creatinine(1.0), person={"resourceType": "Patient", "id": "p1"})
    assert facts["obs.egfr"].value is None
    assert facts["patient.age"].note == "no birthDate"
    assert facts["obs.egfr"].note == (
        f"creatinine 1.00 mg/dL of {RECENT} on record; an eGFR cannot be derived from it without the patient's age "
        "and sex"
    )


def test_value_string_numbers_are_read() -> None:
    facts, _ = facts_of(obs(LOINC, "98979-8", ">90", kind="string"))
    assert facts["obs.egfr"].value == 90.0


def test_paco2_in_kpa_and_unknown_units() -> None:
    facts, _ = facts_of(obs(LOINC, "2019-8", 6.0, unit="kPa"))
    assert facts["obs.paco2"].value == pytest.approx(45.0, abs=0.01)
    facts, notes = facts_of(obs(LOINC, "2160-0", 1.0, unit="furlongs"))
    assert facts["obs.creatinine"].value is None
    assert any("unit 'furlongs'" in note and "not recognised" in note for note in notes)


def test_modified_ashworth_1_plus_and_muscle_groups() -> None:
    facts, _ = facts_of(mas("1+", "left calf"), mas("2", "right calf"), mas("0", "left elbow"))
    assert facts["obs.mas_max"].value == 2.0
    assert facts["obs.mas_groups"].value == 2.0
    facts, _ = facts_of(mas("1+", "left calf"))
    assert facts["obs.mas_max"].value == 1.5


def test_only_the_latest_ashworth_assessment_counts() -> None:
    facts, _ = facts_of(mas("3", "left calf", when=days_ago(60)), mas("1", "left calf"), mas("1", "right calf"))
    assert facts["obs.mas_max"].value == 1.0


def test_stale_facts_are_kept_but_marked_and_not_usable() -> None:
    facts, _ = facts_of(egfr(38, when=days_ago(400)))
    fact = facts["obs.egfr"]
    assert fact.value == 38.0
    assert fact.stale is True
    assert not fact.usable
    assert "stale" in fact.display()
    assert fact.to_dict()["stale"] is True


def test_stale_egfr_makes_the_kidney_ceiling_missing() -> None:
    facts = all_facts(record(egfr(38, when=days_ago(400)), med("baclofen", dose=20, per_day=3)))
    ceiling = facts["dose.baclofen.ceiling"]
    assert ceiling.value is None
    assert ceiling.note is not None and "stale" in ceiling.note


def test_text_only_records_are_matched_and_reported() -> None:
    condition_text = {
        "resourceType": "Condition",
        "id": "c9",
        "code": {"text": "Motor neurone disease"},
        "subject": {"reference": "Patient/p1"},
    }
    facts, notes = facts_of(condition_text, med("Sativex oromucosal spray"), with_als=False)
    assert facts["condition.als"].value is True
    assert facts["med.nabiximols.current"].value is True
    assert any("matched ALS / motor neuron disease by its text 'Motor neurone disease'" in n for n in notes)
    assert any("by its text 'Sativex oromucosal spray'" in n for n in notes)


def test_product_level_code_times_pill_count_gives_the_daily_dose() -> None:
    order = med("baclofen", dose=1, unit="{pill}", per_day=3)
    order["medicationCodeableConcept"] = coded(RXN, "197391", "baclofen 10 MG Oral Tablet")
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {
        "value": 1,
        "unit": "tablet",
        "system": "http://unitsofmeasure.org",
        "code": "{pill}",
    }
    facts, _ = facts_of(order)
    dose = facts["med.baclofen.daily_dose"]
    assert dose.value == 30.0
    assert dose.unit == "mg/day"
    assert dose.note is not None and "10 mg product strength" in dose.note


@pytest.mark.parametrize(
    "repeat",
    [
        {"frequency": 3, "period": 0, "periodUnit": "d"},
        {"frequency": 3, "period": 1e-320, "periodUnit": "h"},
        {"frequency": -3, "period": 1, "periodUnit": "d"},
        {"frequency": 0},
        {"frequency": 3, "period": 1, "periodUnit": "fortnight"},
    ],
)
def test_a_timing_that_gives_no_usable_frequency_leaves_the_daily_dose_unknown(repeat: dict[str, Any]) -> None:
    order = med("baclofen", dose=10, per_day=3)
    order["dosageInstruction"][0]["timing"] = {"repeat": repeat}
    facts, _ = facts_of(order)
    assert facts["med.baclofen.daily_dose"].value is None


def test_a_unitless_dose_on_an_ingredient_code_is_not_guessed() -> None:
    order = med("baclofen", dose=1, unit="", per_day=3)
    facts, _ = facts_of(order)
    assert facts["med.baclofen.daily_dose"].value is None
    assert facts["med.baclofen.current"].value is True


def test_dose_from_the_dosage_text() -> None:
    order = med("Baclofen 5mg tablets", status="draft")
    order["dosageInstruction"] = [{"text": "5 mg three times a day with food"}]
    facts, _ = facts_of(order)
    dose = facts["med.baclofen.daily_dose"]
    assert dose.value == 15.0
    assert dose.note is not None and "dosage text" in dose.note
    assert facts["med.baclofen.proposed"].value is True
    assert facts["med.baclofen.current"].value is False


def test_two_dosage_lines_are_added() -> None:
    order = med("baclofen", dose=20, per_day=4)
    order["dosageInstruction"].append(
        {
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
        }
    )
    facts, _ = facts_of(order)
    assert facts["med.baclofen.daily_dose"].value == 90.0


def test_micrograms_and_grams() -> None:
    facts, _ = facts_of(med("gabapentin", dose=0.6, unit="g", per_day=3))
    assert facts["med.gabapentin.daily_dose"].value == pytest.approx(1800.0)


def test_days_on_counts_from_the_start_of_the_course() -> None:
    facts, _ = facts_of(med("dantrolene", start=days_ago(60)))
    assert facts["med.dantrolene.days_on"].value == 60
    facts, _ = facts_of(med("dantrolene"))
    assert facts["med.dantrolene.days_on"].value is None
    assert facts["med.dantrolene.days_on"].note == "no start date on the orders"
    facts, _ = facts_of(med("dantrolene", status="stopped", start=days_ago(90)))
    assert facts["med.dantrolene.days_on"].value is None


def test_failed_needs_a_stop_reason_that_means_failure() -> None:
    facts, _ = facts_of(med("baclofen", status="stopped", reason="Not tolerated - drowsiness"))
    assert facts["med.baclofen.failed"].value is True
    assert facts["antispastic.oral_failed_count"].value == 1
    facts, _ = facts_of(med("baclofen", status="completed", reason="course finished"))
    assert facts["med.baclofen.failed"].value is False
    facts, _ = facts_of(med("baclofen", status="stopped", reason="ineffective"), med("baclofen"))
    assert facts["med.baclofen.failed"].value is False, "restarted: currently taking it"


def test_entered_in_error_and_refuted_are_ignored() -> None:
    wrong = med("tizanidine", status="entered-in-error")
    refuted = condition(ICD, "K74.60")
    refuted["verificationStatus"] = coded("http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted")
    facts, _ = facts_of(wrong, refuted)
    assert facts["med.tizanidine.ever"].value is False
    assert facts["condition.liver-disease"].value is False


def test_resolved_history_counts_only_where_the_concept_says_so() -> None:
    facts, _ = facts_of(condition(ICD, "F20.0", status="resolved"), condition(ICD, "K74.60", status="resolved"))
    assert facts["condition.psychosis"].value is True
    assert facts["condition.liver-disease"].value is False


def test_icd_codes_match_by_prefix_with_or_without_dot() -> None:
    facts, _ = facts_of(condition(ICD, "G4733"))
    assert facts["condition.sleep-apnoea"].value is True
    facts, _ = facts_of(condition(ICD, "G12.23"), with_als=False)
    assert facts["condition.als"].value is True


def test_intrathecal_route_turns_baclofen_into_itb() -> None:
    facts, _ = facts_of(med("baclofen", dose=150, unit="ug", per_day=1, route="Intrathecal"))
    assert facts["med.intrathecal-baclofen.current"].value is True
    assert facts["med.baclofen.current"].value is False


def test_liver_ratios_use_the_reference_range_in_the_value_unit() -> None:
    facts, _ = facts_of(alt(120, high=40), bilirubin(53, high=21, unit="umol/L"))
    assert facts["obs.alt_x_uln"].value == 3.0
    assert facts["obs.bilirubin_x_uln"].value == pytest.approx(2.52, abs=0.01)
    assert facts["obs.alt_x_uln"].note is not None and "reference range" in facts["obs.alt_x_uln"].note


def test_liver_ratio_without_a_range_uses_the_named_default() -> None:
    facts, _ = facts_of(alt(120, high=None))
    assert facts["obs.alt_x_uln"].value == 3.0
    assert facts["obs.alt_x_uln"].note is not None and "default_uln_alt" in facts["obs.alt_x_uln"].note
    assert facts["obs.liver_tested"].value is True
    assert facts["obs.liver_days_since"].value == 14


def test_orthostatic_drop_from_lying_and_standing() -> None:
    facts, _ = facts_of(orthostatic(140, 112, (84, 70)))
    assert facts["obs.orthostatic_sbp_drop"].value == 28.0
    assert facts["obs.orthostatic_dbp_drop"].value == 14.0
    assert len(facts["obs.orthostatic_sbp_drop"].sources) == 2


def test_blood_pressure_panel_components_are_read() -> None:
    panel = obs(LOINC, "85354-9", None, kind="none")
    panel["component"] = [
        {"code": coded(LOINC, "8480-6"), "valueQuantity": {"value": 86, "unit": "mm[Hg]"}},
        {"code": coded(LOINC, "8462-4"), "valueQuantity": {"value": 50, "unit": "mm[Hg]"}},
    ]
    facts, _ = facts_of(panel)
    assert facts["obs.systolic-bp"].value == 86.0


def test_relies_on_tone_from_a_coded_yes() -> None:
    yes = obs("http://spasticity-cds.org/fhir/CodeSystem/local", "relies-on-tone", None, kind="none")
    yes["valueCodeableConcept"] = {"coding": [{"code": "Y", "display": "Yes"}], "text": "Yes"}
    facts, _ = facts_of(yes)
    assert facts["obs.relies-on-tone"].value is True


def test_snomed_als_and_patient_age() -> None:
    facts, _ = facts_of(condition(SCT, "86044005"), with_als=False, person=patient("1964-11-25", "female"))
    assert facts["condition.als"].value is True
    assert facts["patient.age"].value == 61
    assert facts["patient.sex"].value == "female"


# ---- dosing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(95, 80.0), (80.5, 80.0), (80, 53.6), (70, 53.6), (50, 40.0), (40, 40.0), (30, 40.0), (20, 26.4)],
)
def test_baclofen_ceiling_follows_the_narrowest_renal_band(value: float, ceiling: float) -> None:
    facts = all_facts(record(egfr(value)))
    assert facts["dose.baclofen.ceiling"].value == ceiling


def test_the_renal_fraction_can_leave_the_labelled_maximum_as_the_ceiling() -> None:
    order = med("baclofen", dose=20, per_day=3)
    scaled = all_facts(record(egfr(45), order))
    labelled = all_facts(record(egfr(45), order), renal_fraction_ceiling="labelled-maximum")
    assert (scaled["dose.baclofen.ceiling"].value, scaled["dose.baclofen.above_ceiling"].value) == (40.0, True)
    assert (labelled["dose.baclofen.ceiling"].value, labelled["dose.baclofen.above_ceiling"].value) == (80, False)
    assert "reduce the dose to about 0.5" in (labelled["dose.baclofen.ceiling"].note or "")


def test_gabapentin_ceiling_uses_the_label_table() -> None:
    facts = all_facts(record(egfr(25), med("gabapentin", dose=600, per_day=3)))
    assert facts["dose.gabapentin.ceiling"].value == 700
    assert facts["dose.gabapentin.above_ceiling"].value is True


def test_jurisdiction_sets_the_maximum() -> None:
    order = med("baclofen", dose=20, per_day=4)
    us = all_facts(record(egfr(95), order))
    uk = all_facts(record(egfr(95), order), jurisdiction="uk")
    assert us["dose.baclofen.max"].value == 80
    assert uk["dose.baclofen.max"].value == 100
    assert us["dose.baclofen.at_max"].value is True
    assert uk["dose.baclofen.at_max"].value is False


def test_renal_band_is_none_without_a_usable_egfr() -> None:
    monograph = ENGINE.kb.monographs["baclofen"]
    assert renal_band(monograph, Fact("obs.egfr", None)) is None
    assert renal_band(monograph, Fact("obs.egfr", 20.0, stale=True)) is None
    band = renal_band(monograph, Fact("obs.egfr", 45.0))
    assert band is not None and band.below_egfr == 50


def test_dose_plan_steps_are_dated_and_capped_at_the_ceiling() -> None:
    monograph = ENGINE.kb.monographs["baclofen"]
    facts = all_facts(record(egfr(40)))
    plan = dose_plan(monograph, facts, ENGINE.defaults, NOW, ENGINE.cite, pace=ENGINE.reduction_pace)
    assert plan is not None
    assert [step["daily"] for step in plan["steps"]] == [15, 30]
    assert plan["steps"][0]["date"] == "2026-11-24"
    assert plan["steps"][1]["date"] == "2026-11-27"
    assert plan["renal_adjustment"]["below_egfr"] == 50
    assert plan["max_daily"] == 80 and plan["jurisdiction"] == "us"


def test_dose_facts_are_missing_not_false_when_the_dose_is_unknown() -> None:
    monograph = ENGINE.kb.monographs["baclofen"]
    facts, _ = facts_of(med("baclofen"), egfr(90))
    out = dose_facts(monograph, facts, ENGINE.defaults)
    assert out["dose.baclofen.above_max"].value is None
    assert out["dose.baclofen.max"].value == 80


def test_an_observation_value_beyond_a_double_is_unreadable_not_an_error() -> None:
    from spasticity_cds.api import read_patient

    bundle = (
        b'{"resourceType":"Bundle","entry":['
        b'{"resource":{"resourceType":"Patient","id":"p1","birthDate":"1960-01-01","gender":"female"}},'
        b'{"resource":{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},'
        b'"code":{"coding":[{"system":"http://loinc.org","code":"2160-0"}]},"effectiveDateTime":"2026-10-01",'
        b'"valueQuantity":{"value":1e999,"unit":"mg/dL"}}}]}'
    )
    facts, _ = ENGINE.extractor.extract(read_patient(bundle), NOW)
    assert facts["obs.creatinine"].value is None


@pytest.mark.parametrize(
    ("system", "code", "kind", "concept"),
    [
        (RXN, "3105", "medication", "dantrolene"),
        (RXN, "3228", "medication", None),  # no source pairs 3228 with dantrolene (docs/knowledge-base.md)
        (SCT, "235159007", "procedure", "gastrostomy"),
        (SCT, "303703008", "procedure", None),
        (RXN, "52175", "medication", "antihypertensive"),
    ],
)
def test_verified_codes_match_and_dropped_ones_do_not(
    system: str, code: str, kind: ConceptKind, concept: str | None
) -> None:
    from spasticity_cds.fhir.model import CodeableConcept, Coding

    found = ENGINE.vocabulary.match(CodeableConcept(coding=(Coding(system=system, code=code),)), kind)
    assert (found.concept.id if found else None) == concept


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("1742-6", 3.0, "ukat/L", 180.0),  # ALT: 1 ukat = 60 U
        ("1742-6", 45.0, "IU/L", 45.0),
        ("1742-6", 45.0, None, 45.0),  # no unit: read in the only unit in common use
        ("1742-6", 3.0, "mmol/L", None),  # another unit: never read as if it were U/L
        ("98979-8", 0.4, "mL/s/1.73m2", 24.0),
        ("98979-8", 45.0, "mL/min/{1.73_m2}", 45.0),
        ("19872-1", 2.1, "L", None),
        ("19872-1", 64.0, "%", 64.0),
    ],
)
def test_lab_units_are_converted_or_the_value_is_left_out_with_a_note(
    code: str, value: float, unit: str | None, expected: float | None
) -> None:
    concept = {"1742-6": "alt", "98979-8": "egfr", "19872-1": "fvc-percent"}[code]
    facts, notes = facts_of(obs(LOINC, code, value, unit=unit))
    raw = {"alt": "obs.alt_x_uln", "egfr": "obs.egfr", "fvc-percent": "obs.fvc-percent"}[concept]
    if expected is None:
        assert facts[raw].value is None
        assert any(f"unit {unit!r}" in note and "not recognised" in note for note in notes)
    elif concept == "alt":
        assert facts[raw].value is not None
    else:
        assert facts[raw].value == pytest.approx(expected)


def test_a_result_dated_after_the_evaluation_day_is_left_out_with_a_note() -> None:
    later = (NOW + timedelta(days=200)).date().isoformat()
    facts, notes = facts_of(obs(LOINC, "19872-1", 40.0, unit="%"), obs(LOINC, "19872-1", 85.0, unit="%", when=later))
    assert facts["obs.fvc-percent"].value == pytest.approx(40.0)
    assert any("dated after the evaluation day" in note for note in notes)


def test_a_birth_date_after_the_evaluation_day_gives_no_age() -> None:
    facts, _ = facts_of(person=patient(birth="2030-01-01"))
    assert facts["patient.age"].value is None and "after the evaluation day" in (facts["patient.age"].note or "")


@pytest.mark.parametrize(("value", "text"), [(29.999, "29.999"), (54.83721, "54.84"), (45.0, "45"), (80.001, "80.001")])
def test_numbers_never_read_as_a_round_number_they_are_not(value: float, text: str) -> None:
    from spasticity_cds.engine.facts import number_text

    assert number_text(value) == text


@pytest.mark.parametrize(
    ("stamp", "kept"),
    [
        ("2026-11-24", True),  # the evaluation day itself
        ("2026-11-24T23:59:00-05:00", True),
        ("2026-11-25T00:01:00+09:00", False),  # its own calendar day is after the evaluation day
        ("2026", True),  # a year is read as its 1 July, before the evaluation day
        ("2027", False),
        ("2026-12", False),  # a month is read as its 15th
        ("2026-W52-1", False),  # not FHIR, but Python reads week dates: it must not pass as a past date
        ("not a date", True),  # unreadable: kept, and its age cannot be judged
    ],
)
def test_only_results_whose_date_is_after_the_evaluation_day_are_left_out(stamp: str, kept: bool) -> None:
    facts, notes = facts_of(obs(LOINC, "19872-1", 40.0, unit="%", when=stamp))
    assert (facts["obs.fvc-percent"].value == pytest.approx(40.0)) is kept
    assert any("dated after the evaluation day" in note for note in notes) is not kept


@pytest.mark.parametrize(
    ("code", "raw"), [("1742-6", "obs.alt_x_uln"), ("98979-8", "obs.egfr"), ("19872-1", "obs.fvc-percent")]
)
def test_a_negative_result_is_left_out_with_a_note_and_an_older_one_read(code: str, raw: str) -> None:
    older = days_ago(60)
    facts, notes = facts_of(obs(LOINC, code, 45.0, when=older), obs(LOINC, code, -45.0))
    assert facts[raw].value is not None and facts[raw].date == older
    assert any("of -45 is negative; value ignored" in note for note in notes)


def test_a_negative_result_alone_leaves_the_fact_missing() -> None:
    facts, _ = facts_of(obs(LOINC, "98979-8", -12.0))
    assert facts["obs.egfr"].value is None


@pytest.mark.parametrize("concept", ["snip", "mip"])
def test_inspiratory_pressures_recorded_with_their_sign_are_read_as_their_magnitude(concept: str) -> None:
    from .records import LOCAL

    facts, notes = facts_of(obs(LOCAL, concept, -35.0, unit="cm[H2O]"))
    assert facts[f"obs.{concept}"].value == pytest.approx(35.0)
    assert not any("negative" in note for note in notes)


def _step(dose: float, per_day: int, sequence: int | None) -> dict[str, Any]:
    dosage: dict[str, Any] = {
        "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg"}}],
    }
    if sequence is not None:
        dosage["sequence"] = sequence
    return dosage


@pytest.mark.parametrize(
    ("steps", "daily", "noted"),
    [
        ([(5, 3, 1), (10, 3, 2)], 30.0, True),  # a titration: 15 mg/day for three days, then 30 mg/day
        ([(10, 3, 2), (5, 3, 1)], 30.0, True),  # in any order
        ([(10, 1, 1), (5, 1, 1), (20, 1, 2)], 20.0, True),  # one sequence number: taken together
        ([(10, 1, None), (5, 2, None)], 20.0, False),  # no sequence: every instruction applies
    ],
)
def test_instructions_given_in_sequence_are_steps_not_added_up(
    steps: list[tuple[float, int, int | None]], daily: float, noted: bool
) -> None:
    order = med("baclofen")
    order["dosageInstruction"] = [_step(*step) for step in steps]
    facts, _ = facts_of(order)
    dose = facts["med.baclofen.daily_dose"]
    assert dose.value == pytest.approx(daily)
    assert ("dose steps given in sequence" in (dose.note or "")) is noted


@pytest.mark.parametrize(("intent", "current"), [("order", True), ("proposal", False), ("plan", False), (None, True)])
def test_a_request_that_only_proposes_or_plans_a_medicine_is_proposed_not_current(
    intent: str | None, current: bool
) -> None:
    order = med("baclofen", dose=10, per_day=3)
    if intent is None:
        del order["intent"]
    else:
        order["intent"] = intent
    facts, _ = facts_of(order)
    assert facts["med.baclofen.current"].value is current
    assert facts["med.baclofen.proposed"].value is not current


def test_overridden_validity_windows_and_upper_limits_are_used() -> None:
    """Settings the extractor reads (validity windows, default upper limits) follow the caller's overrides."""
    from spasticity_cds.api import read_patient

    record = read_patient([patient(), obs(LOINC, "98979-8", 45.0, when=days_ago(60)), alt(100.0, high=None)])
    default, _ = ENGINE._facts(record, NOW, ENGINE.settings_for(None))
    overridden = ENGINE.settings_for({"validity_days_renal": 30, "default_uln_alt": 50})
    short, _ = ENGINE._facts(record, NOW, overridden)
    assert not default["obs.egfr"].stale and short["obs.egfr"].stale
    assert default["obs.alt_x_uln"].value == pytest.approx(2.5) and short["obs.alt_x_uln"].value == pytest.approx(2.0)
    assert ENGINE._facts(record, NOW, ENGINE.settings_for(None))[0]["obs.egfr"] == default["obs.egfr"]
    result = ENGINE.evaluate(record, NOW, {"validity_days_renal": 30})
    assert result["settings"]["validity_days_renal"] == 30  # an override shows in the result


def test_a_result_without_a_readable_date_is_out_of_date_and_says_why() -> None:
    facts, _ = facts_of(obs(LOINC, "98979-8", 45.0, when="sometime last spring"))
    assert facts["obs.egfr"].stale and "no readable date" in (facts["obs.egfr"].note or "")


@pytest.mark.parametrize(("agent", "ceiling"), [("baclofen", 26.4), ("gabapentin", 300.0)])
def test_dialysis_without_an_egfr_takes_the_lowest_renal_band(agent: str, ceiling: float) -> None:
    facts = all_facts(record(procedure("Haemodialysis"), med(agent, dose=300, per_day=3)))
    assert facts[f"dose.{agent}.ceiling"].value == ceiling
    assert "kidney failure or dialysis with no current eGFR" in (facts[f"dose.{agent}.ceiling"].note or "")
