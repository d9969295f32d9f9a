"""A medicine's stated reason (reasonCode, reasonReference) as facts; palliative benzodiazepines; FVC in litres;
nabiximols by jurisdiction (knowledge base 1.4.1)."""

from __future__ import annotations

from typing import Any

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.facts import Fact
from spasticity_cds.fhir.record import PatientRecord

from .records import (
    ICD,
    LOINC,
    NOW,
    SCT,
    Resource,
    condition,
    days_ago,
    fvc,
    med,
    obs,
    procedure,
    record,
)

ENGINE = load_knowledge_base()
PALLIATIVE = "Breathlessness and anxiety - end of life palliative care"
FACT = "med.diazepam.for_palliative_symptoms"


def facts(patient: PatientRecord) -> dict[str, Fact]:
    found, _ = ENGINE._facts(patient, NOW, ENGINE.defaults)
    return found


def evaluate(*resources: Resource | list[Resource], **settings: Any) -> dict[str, Any]:
    return ENGINE.evaluate(record(*resources), NOW, settings or None)


def ids(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in result["findings"]}


def option(result: dict[str, Any], agent: str) -> dict[str, Any]:
    return next(o for o in result["options"] if o["agent"] == agent)


def named_condition(text: str, ident: str = "why-1", status: str = "confirmed") -> Resource:
    return {
        "resourceType": "Condition",
        "id": ident,
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": status}]},
        "code": {"text": text},
        "subject": {"reference": "Patient/p1"},
    }


# ---- the reason facts ---------------------------------------------------------------------------------------


def test_reason_code_text_makes_the_fact_true_and_quotes_it() -> None:
    fact = facts(record(med("diazepam", indication=PALLIATIVE)))[FACT]
    assert fact.value is True
    assert fact.note is not None and PALLIATIVE in fact.note
    assert fact.sources


def test_reason_reference_to_a_condition_in_the_record() -> None:
    why = named_condition("Dyspnoea - palliative care")
    found = facts(record(why, med("clonazepam", indication_ref="Condition/why-1")))
    assert found["med.clonazepam.for_palliative_symptoms"].value is True
    assert "Condition/why-1" in (found["med.clonazepam.for_palliative_symptoms"].note or "")


def test_a_reference_that_does_not_resolve_or_an_entered_in_error_condition_says_nothing() -> None:
    assert facts(record(med("diazepam", indication_ref="Condition/elsewhere")))[FACT].value is False
    wrong = named_condition("Breathlessness", status="entered-in-error")
    assert facts(record(wrong, med("diazepam", indication_ref="Condition/why-1")))[FACT].value is False


def test_a_coded_reason_is_read_by_its_display() -> None:
    order = med("diazepam")
    order["reasonCode"] = [{"coding": [{"system": SCT, "code": "267036007", "display": "Dyspnea"}]}]
    assert facts(record(order))[FACT].value is True


def test_only_an_explicit_palliative_or_breathlessness_reason_counts() -> None:
    for reason in ("Anxiety", "Spasticity", "Breathlessness and leg spasms", "Not for palliative use - spasticity"):
        assert facts(record(med("diazepam", indication=reason)))[FACT].value is False, reason
    assert facts(record(med("diazepam")))[FACT].value is False
    assert facts(record())[FACT].value is False


def test_every_order_must_state_it() -> None:
    fact = facts(record(med("diazepam", indication=PALLIATIVE), med("diazepam", dose=5, per_day=3)))[FACT]
    assert fact.value is False
    assert fact.note is not None and "1 other order(s) state no such reason" in fact.note


def test_a_past_order_does_not_count() -> None:
    assert facts(record(med("diazepam", status="stopped", indication=PALLIATIVE)))[FACT].value is False


# ---- the respiratory gate -----------------------------------------------------------------------------------


def test_palliative_diazepam_on_niv_is_not_the_spasticity_contraindication() -> None:
    result = evaluate(
        procedure("Non-invasive ventilation"), fvc(31), med("diazepam", dose=2, per_day=2, indication=PALLIATIVE)
    )
    found = ids(result)
    assert "BENZO-RESP-GATE" not in found
    assert found["BENZO-PALLIATIVE-RESP"]["severity"] == "warning"
    assert "palliative" in found["BENZO-PALLIATIVE-RESP"]["summary"]
    assert "depress breathing" in found["BENZO-PALLIATIVE-RESP"]["summary"]
    diazepam = option(result, "diazepam")
    assert diazepam["status"] == "contraindicated" and "BENZO-RESP-GATE" in diazepam["because"]
    assert diazepam["current"] is False
    assert "diazepam" not in result["standing"]["current_agents"]
    # Still marked as taken, outside the ladder, with the reason the record states.
    outside = diazepam["outside_ladder"]
    assert outside["state"] == "current" and outside["reasons"] == ["Palliative breathlessness or anxiety"]
    assert [fact["name"] for fact in outside["facts"]] == [FACT]
    assert outside["text"].startswith("Taken now for palliative breathlessness or anxiety")
    assert "outside_ladder" not in option(result, "clonazepam")


def test_a_palliative_benzodiazepine_being_ordered_is_marked_as_ordered_outside_the_ladder() -> None:
    result = evaluate(fvc(85), med("clonazepam", status="draft", indication=PALLIATIVE))
    clonazepam = option(result, "clonazepam")
    assert clonazepam["proposed"] is False
    assert clonazepam["outside_ladder"]["state"] == "ordered"
    assert clonazepam["outside_ladder"]["text"].startswith("Being ordered for palliative")


def test_palliative_benzodiazepine_with_reduced_reserve() -> None:
    result = evaluate(fvc(65), med("clonazepam", indication="Terminal breathlessness, palliative"))
    found = ids(result)
    assert "BENZO-RESP-REDUCED" not in found
    assert "BENZO-PALLIATIVE-RESP" in found
    assert option(result, "clonazepam")["status"] == "caution"


def test_palliative_benzodiazepine_with_unknown_breathing_is_a_gap() -> None:
    found = ids(evaluate(med("diazepam", indication=PALLIATIVE)))
    assert found["BENZO-PALLIATIVE-RESP:gap"]["kind"] == "data-gap"
    assert "BENZO-RESP-GATE:gap" not in found


def test_a_benzodiazepine_for_spasticity_beside_a_palliative_one_keeps_the_gate() -> None:
    result = evaluate(
        condition(ICD, "G47.33"),
        med("clonazepam", indication=PALLIATIVE),
        med("diazepam", indication="Spasticity"),
    )
    found = ids(result)
    assert found["BENZO-RESP-GATE"]["severity"] == "critical"
    assert "BENZO-PALLIATIVE-RESP" not in found
    assert option(result, "diazepam")["current"] is True
    assert option(result, "clonazepam")["current"] is False
    assert "outside_ladder" not in option(result, "diazepam")
    assert option(result, "clonazepam")["outside_ladder"]["state"] == "current"


def test_the_opioid_boxed_warning_keeps_its_weight_for_palliative_use() -> None:
    found = ids(evaluate(med("morphine"), med("diazepam", indication=PALLIATIVE)))
    assert found["BENZO-OPIOID"]["severity"] == "critical"


# ---- sedation beside a palliative benzodiazepine (knowledge base 1.6.0) -------------------------------------


def test_a_palliative_benzodiazepine_is_not_counted_as_an_antispastic_but_its_sedation_is_named() -> None:
    found = ids(evaluate(fvc(85), med("baclofen", dose=10, per_day=3), med("diazepam", indication=PALLIATIVE)))
    assert "SEDATING-ANTISPASTICS-COMBINED" not in found
    sedation = found["BENZO-PALLIATIVE-SEDATION"]
    assert sedation["severity"] == "warning"
    assert sedation["summary"].startswith("Diazepam is recorded for palliative breathlessness or anxiety")
    assert "(Baclofen (oral))" in sedation["summary"]


def test_a_palliative_benzodiazepine_alone_adds_to_no_antispastic() -> None:
    found = ids(evaluate(fvc(85), med("diazepam", indication=PALLIATIVE)))
    assert "BENZO-PALLIATIVE-SEDATION" not in found and "SEDATING-ANTISPASTICS-COMBINED" not in found


def test_two_palliative_benzodiazepines_are_still_named_together() -> None:
    found = ids(evaluate(fvc(85), med("diazepam", indication=PALLIATIVE), med("clonazepam", indication=PALLIATIVE)))
    assert "SEDATING-ANTISPASTICS-COMBINED" not in found
    assert "(Diazepam; Clonazepam)" in found["BENZO-PALLIATIVE-SEDATION"]["summary"]


def test_a_benzodiazepine_for_spasticity_still_counts_as_an_antispastic() -> None:
    found = ids(evaluate(fvc(85), med("baclofen", dose=10, per_day=3), med("diazepam", indication="Leg spasms")))
    assert "SEDATING-ANTISPASTICS-COMBINED" in found and "BENZO-PALLIATIVE-SEDATION" not in found


# ---- another sedating drug beside a palliative benzodiazepine (knowledge base 1.6.1) ------------------------


def test_a_palliative_benzodiazepine_is_not_the_antispastic_another_sedating_drug_adds_to() -> None:
    result = evaluate(fvc(85), med("lorazepam", dose=1, per_day=2), med("diazepam", indication=PALLIATIVE))
    found = ids(result)
    assert "ADDED-SEDATION" not in found
    sedation = found["BENZO-PALLIATIVE-SEDATION"]
    assert sedation["severity"] == "warning"
    assert "(Other benzodiazepine)" in sedation["summary"]
    # The caution on the sedating options stands, with ADDED-SEDATION as its reason.
    for agent in ("baclofen", "tizanidine", "diazepam"):
        assert option(result, agent)["status"] == "caution"
        assert "ADDED-SEDATION" in option(result, agent)["because"]


def test_with_an_antispastic_too_each_drug_s_sedation_is_named_once() -> None:
    found = ids(
        evaluate(
            fvc(85),
            med("baclofen", dose=10, per_day=3),
            med("pregabalin", dose=75, per_day=2),
            med("diazepam", indication=PALLIATIVE),
        )
    )
    assert found["ADDED-SEDATION"]["severity"] == "warning"
    assert "(Baclofen (oral); Pregabalin)" in found["BENZO-PALLIATIVE-SEDATION"]["summary"]
    assert "SEDATING-ANTISPASTICS-COMBINED" not in found


def test_a_benzodiazepine_for_spasticity_beside_lorazepam_is_still_the_antispastic() -> None:
    found = ids(evaluate(fvc(85), med("lorazepam", dose=1, per_day=2), med("diazepam", indication="Leg spasms")))
    assert found["ADDED-SEDATION"]["severity"] == "warning"
    assert "BENZO-PALLIATIVE-SEDATION" not in found


# ---- FVC in litres ------------------------------------------------------------------------------------------


def litres(value: float, when: str = days_ago(12)) -> Resource:
    return obs(LOINC, "19868-9", value, unit="L", when=when)


def test_fvc_in_litres_is_named_when_no_percent_predicted_is_current() -> None:
    result = evaluate(litres(2.4))
    gap = ids(result)["RESP-STATUS:gap"]
    fvc_fact = next(f for f in gap["facts"] if f["name"] == "obs.fvc-percent")
    assert "FVC in litres 2.4 L" in fvc_fact["note"] and "cannot be read as FVC % predicted" in fvc_fact["note"]
    assert any("FVC in litres 2.4 L" in note for note in result["input_notes"])


def test_millilitres_are_read_as_litres() -> None:
    note = facts(record(obs(LOINC, "19868-9", 2400, unit="mL")))["obs.fvc-percent"].note
    assert note is not None and "2.4 L" in note


def test_no_litres_note_beside_a_current_percent_or_after_a_newer_one() -> None:
    assert facts(record(litres(2.4), fvc(70)))["obs.fvc-percent"].note is None
    older = facts(record(litres(2.4, when=days_ago(400)), fvc(70, when=days_ago(200))))["obs.fvc-percent"]
    assert older.stale and older.note is None
    newer = facts(record(litres(2.4, when=days_ago(10)), fvc(70, when=days_ago(200))))["obs.fvc-percent"]
    assert newer.value == 70 and newer.note is not None and "2.4 L" in newer.note


# ---- nabiximols by jurisdiction -----------------------------------------------------------------------------


def test_nabiximols_follows_the_jurisdiction() -> None:
    us = evaluate(med("Sativex spray", status="draft"))
    assert option(us, "nabiximols")["status"] == "avoid"
    assert ids(us)["NABIXIMOLS-NOT-US"]["severity"] == "warning"
    quiet = evaluate()
    assert option(quiet, "nabiximols")["status"] == "avoid"
    assert option(quiet, "nabiximols")["because"] == ["NABIXIMOLS-NOT-US"]
    assert "NABIXIMOLS-NOT-US" not in ids(quiet)
    uk = evaluate(med("Sativex spray", status="draft"), jurisdiction="uk")
    assert option(uk, "nabiximols")["status"] == "consider"
    assert "NABIXIMOLS-NOT-US" not in ids(uk)
