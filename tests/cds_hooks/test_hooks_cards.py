"""Cards: one per decision, KB text with citations, data used and missing, acting suggestions, stored for feedback."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi import FastAPI

from spasticity_cds.cds_hooks.cards import compact, short_summary
from spasticity_cds.store import SqlFeedbackStore, hash_patient_ref

from .helpers import (
    PATIENT_ID,
    REVIEW,
    RXNORM,
    SELECT,
    SIGN,
    Client,
    assert_no_empty,
    baclofen_order,
    call,
    days_ago,
    hook_request,
    observation,
    observations,
    prefetch,
    searchset,
    valid_cards,
)


def _rule(card: dict[str, Any]) -> str:
    rule: str = card["extension"]["org.spasticity-cds.rule"]["id"]
    return rule


def _drug(order_id: str, code: str, text: str, status: str = "draft") -> dict[str, Any]:
    order = baclofen_order(order_id, value=2, status=status)
    order["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": code}], "text": text}
    return order


def test_order_over_the_kidney_ceiling_gets_one_card_with_a_whole_resource_update(app: FastAPI, client: Client) -> None:
    draft = baclofen_order()
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(), drafts=[draft]), SIGN)
    (card,) = cards
    assert card["indicator"] == "critical" and card["selectionBehavior"] == "at-most-one"
    assert card["extension"]["org.spasticity-cds.findings"] == ["BACLOFEN-DOSE-ABOVE-CEILING", "BACLOFEN-RENAL-BAND"]
    (action,) = card["suggestions"][0]["actions"]
    assert action["type"] == "update"
    updated = action["resource"]
    assert updated["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 13
    expected = baclofen_order()
    expected["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 13
    expected["dosageInstruction"][0]["text"] = "13 mg 3 times a day (kidney-adjusted dose)"
    assert updated == expected


def test_a_patient_taking_a_dose_above_the_ceiling_sees_the_gradual_reduction_on_the_card(
    app: FastAPI, client: Client
) -> None:
    taken = baclofen_order("bac-now", value=20, per_day=4, status="active")
    cards = valid_cards(app, client, hook_request("patient-view", prefetch_data=prefetch([taken])), REVIEW)
    card = next(c for c in cards if _rule(c) == "BACLOFEN-DOSE-ABOVE-CEILING")
    detail = card["detail"]
    assert "**Dose plan for Baclofen (oral):**" in detail
    assert "Taken at 80 mg/day, above the ceiling of 40 mg/day" in detail
    assert "Reduction steps: 2026-11-24 20 mg x3 (60 mg/day); 2026-12-01 15 mg x3 (45 mg/day); " in detail
    assert "One titration step down every 7 days" in detail and "Never stop abruptly" in detail
    assert "dose\\_reduction\\_step\\_days setting" in detail  # the pace's source, cited with its status
    assert "(evidence: UNCONFIRMED)" in detail


def test_a_card_ruling_out_a_drug_taken_now_carries_its_withdrawal_undated_when_critical(
    app: FastAPI, client: Client
) -> None:
    taken = baclofen_order("bac-now", value=20, per_day=3, status="active")
    request = hook_request("patient-view", prefetch_data=prefetch([taken], egfr=20))
    card = next(c for c in valid_cards(app, client, request, REVIEW) if _rule(c) == "BACLOFEN-KIDNEY-FAILURE-AVOID")
    detail = card["detail"]
    assert "**Dose plan for Baclofen (oral):**" in detail
    assert "Taken at 60 mg/day, but ruled out for this patient" in detail
    assert "Withdrawal steps" not in detail and "Stop on" not in detail and "Never stop abruptly" in detail
    assert "A critical finding rules Baclofen (oral) out" in detail and "clinician's decision now" in detail
    assert "Ruled out by BACLOFEN-KIDNEY-FAILURE-AVOID v3." in detail and "Warnings: abrupt discontinuation" in detail


def test_a_renewal_above_the_ceiling_of_a_dose_taken_now_suggests_the_first_step_down(
    app: FastAPI, client: Client
) -> None:
    taken = baclofen_order("bac-now", value=20, per_day=4, status="active")
    draft = baclofen_order(value=20, per_day=4)
    body = hook_request("order-sign", prefetch_data=prefetch([taken]), drafts=[draft])
    card = next(c for c in valid_cards(app, client, body, SIGN) if _rule(c) == "BACLOFEN-DOSE-ABOVE-CEILING")
    suggestion = card["suggestions"][0]
    assert suggestion["label"] == (
        "Reduce to 15 mg per dose (tablet strength unknown: check it can be given; 60 mg/day), the first step of the "
        "gradual reduction to the ceiling of 40 mg/day"
    )
    updated = suggestion["actions"][0]["resource"]
    assert updated["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 15


def _lioresal(max_per_day: dict[str, Any] | None = None) -> dict[str, Any]:
    """Baclofen 10 mg tablets [Lioresal] (RxNorm 202109, strength_mg 10 in the knowledge base), 20 mg tid."""
    draft = baclofen_order(code="202109")
    draft["medicationCodeableConcept"]["text"] = "Baclofen 10 MG Oral Tablet [Lioresal]"
    if max_per_day is not None:
        draft["dosageInstruction"][0]["maxDosePerPeriod"] = max_per_day
    return draft


def test_a_kidney_adjusted_dose_is_one_the_product_can_give_and_its_maximum_follows(
    app: FastAPI, client: Client
) -> None:
    """20 mg tid of 10 mg tablets at eGFR 45 (ceiling 40 mg/day): 10 mg (one tablet), not an undispensable 13 mg;
    and the draft's maxDosePerPeriod of 80 mg/day is lowered to the ceiling."""
    limit = {"numerator": {"value": 80, "unit": "mg", "code": "mg"}, "denominator": {"value": 1, "code": "d"}}
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[_lioresal(limit)])
    (card,) = valid_cards(app, client, body, SIGN)
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Reduce to 10 mg per dose (1 tablet; 30 mg/day, ceiling 40 mg/day)"
    dosage = suggestion["actions"][0]["resource"]["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 10
    assert dosage["maxDosePerPeriod"] == {
        "numerator": {"value": 40, "unit": "mg", "code": "mg"},
        "denominator": {"value": 1, "code": "d"},
    }


def test_a_first_step_down_bounds_the_maximum_by_that_step_not_the_ceiling(app: FastAPI, client: Client) -> None:
    """A renewal of 20 mg qid taken now steps down to 60 mg/day first: a maximum of 80 mg/day becomes 60, not the
    ceiling of 40, which would forbid the very dose the update orders."""
    taken = baclofen_order("bac-now", value=20, per_day=4, status="active")
    draft = baclofen_order(value=20, per_day=4)
    limit = {"numerator": {"value": 80, "code": "mg"}, "denominator": {"value": 1, "code": "d"}}
    draft["dosageInstruction"][0]["maxDosePerPeriod"] = limit
    body = hook_request("order-sign", prefetch_data=prefetch([taken]), drafts=[draft])
    card = next(c for c in valid_cards(app, client, body, SIGN) if _rule(c) == "BACLOFEN-DOSE-ABOVE-CEILING")
    dosage = card["suggestions"][0]["actions"][0]["resource"]["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 15
    assert dosage["maxDosePerPeriod"]["numerator"] == {"value": 60, "code": "mg"}


@pytest.mark.parametrize(
    ("limit", "kept"),
    [
        ({"numerator": {"value": 30, "code": "mg"}, "denominator": {"value": 24, "code": "h"}}, True),  # within
        ({"numerator": {"value": 0.08, "code": "g"}, "denominator": {"value": 1, "code": "d"}}, False),  # 80 mg
        ({"numerator": {"value": 8, "code": "mL"}, "denominator": {"value": 1, "code": "d"}}, None),  # no mass
        ({"numerator": {"value": 80, "code": "mg"}, "denominator": {"value": 1, "code": "mo"}}, None),
    ],
)
def test_a_maximum_per_period_is_kept_lowered_or_left_out(
    app: FastAPI, client: Client, limit: dict[str, Any], kept: bool | None
) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[_lioresal(limit)])
    (card,) = valid_cards(app, client, body, SIGN)
    dosage = card["suggestions"][0]["actions"][0]["resource"]["dosageInstruction"][0]
    if kept is None:  # cannot be compared with the ceiling: an update does not carry a limit that may contradict it
        assert "maxDosePerPeriod" not in dosage
    elif kept:
        assert dosage["maxDosePerPeriod"] == limit
    else:
        assert dosage["maxDosePerPeriod"]["numerator"] == {"value": 0.04, "code": "g"}


def test_an_order_by_ingredient_keeps_half_milligram_steps_and_says_the_strength_is_unknown(
    app: FastAPI, client: Client
) -> None:
    (card,) = valid_cards(
        app, client, hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order()]), SIGN
    )
    assert card["suggestions"][0]["label"] == (
        "Reduce to 13 mg per dose (tablet strength unknown: check it can be given; 39 mg/day, ceiling 40 mg/day)"
    )


def test_order_that_already_fits_gets_no_card(app: FastAPI, client: Client) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order(value=5)])
    assert valid_cards(app, client, body, SIGN) == []


def test_order_select_checks_only_the_selection(app: FastAPI, client: Client) -> None:
    over = baclofen_order("over")
    fine = baclofen_order("fine", value=5)
    body = hook_request(
        "order-select", prefetch_data=prefetch(), drafts=[over, fine], selections=["MedicationRequest/fine"]
    )
    assert valid_cards(app, client, body, SELECT) == []
    body["context"]["selections"] = ["MedicationRequest/over"]
    assert [_rule(c) for c in valid_cards(app, client, body, SELECT)] == ["BACLOFEN-DOSE-ABOVE-CEILING"]


def test_tizanidine_without_liver_tests_suggests_creating_a_liver_test_order(app: FastAPI, client: Client) -> None:
    data = prefetch()
    data["observations"] = data["recentObservations"] = searchset(
        [o for o in observations() if o["id"] not in ("alt", "ast", "bili")]
    )
    draft = _drug("tiz", "57258", "tizanidine 2 mg")
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=data, drafts=[draft]), SIGN)
    liver = next(c for c in cards if _rule(c) == "TIZ-LFT-BASELINE")
    assert liver["selectionBehavior"] == "any"
    (action,) = liver["suggestions"][0]["actions"]
    assert action["type"] == "create"
    request = action["resource"]
    assert request["resourceType"] == "ServiceRequest" and request["code"]["coding"][0]["code"] == "24325-3"
    assert request["subject"] == {"reference": f"Patient/{PATIENT_ID}"}
    assert request["reasonReference"] == [{"reference": "MedicationRequest/tiz"}]
    assert request["requester"] == {"reference": "Practitioner/dr-1"}
    assert "aminotransferases" in liver["detail"] and "MedicationRequest/tiz" in liver["detail"]


@pytest.mark.parametrize("user_id", ["Practitioner/", "PractitionerRole/ ", "Patient/pt-1"])
def test_a_user_id_that_names_no_practitioner_is_no_requester(app: FastAPI, client: Client, user_id: str) -> None:
    data = prefetch()
    data["observations"] = data["recentObservations"] = searchset(
        [o for o in observations() if o["id"] not in ("alt", "ast", "bili")]
    )
    body = hook_request("order-sign", prefetch_data=data, drafts=[_drug("tiz", "57258", "tizanidine 2 mg")])
    body["context"]["userId"] = user_id
    liver = next(c for c in valid_cards(app, client, body, SIGN) if _rule(c) == "TIZ-LFT-BASELINE")
    assert "requester" not in liver["suggestions"][0]["actions"][0]["resource"]


def test_a_draft_without_an_id_is_never_named_by_a_made_up_reference(app: FastAPI, client: Client) -> None:
    data = prefetch()
    data["observations"] = data["recentObservations"] = searchset(
        [o for o in observations() if o["id"] not in ("alt", "ast", "bili")]
    )
    draft = _drug("tiz", "57258", "tizanidine 2 mg")
    del draft["id"]
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=data, drafts=[draft]), SIGN)
    liver = next(c for c in cards if _rule(c) == "TIZ-LFT-BASELINE")
    assert "reasonReference" not in liver["suggestions"][0]["actions"][0]["resource"]
    assert "unnamed-draft" not in json.dumps(cards)
    assert "the draft order (sent without an id)" in liver["detail"]


@pytest.mark.parametrize("bad_id", [None, "", 12, {"a": 1}, "has space", "a/b", "x" * 257])
def test_a_draft_whose_id_cannot_name_it_is_never_named(app: FastAPI, client: Client, bad_id: object) -> None:
    draft = baclofen_order(value=20) | {"id": bad_id}
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(egfr=20), drafts=[draft]), SIGN)
    assert cards
    text = json.dumps(cards)
    assert "MedicationRequest/None" not in text and '"MedicationRequest/"' not in text
    for card in cards:
        for suggestion in card.get("suggestions", ()):
            assert all(action["type"] != "delete" for action in suggestion["actions"])


@pytest.mark.parametrize("draft_id", ["draft_baclofen", "d" * 65])
def test_order_select_finds_a_selected_draft_whose_id_fhir_would_refuse(
    app: FastAPI, client: Client, draft_id: str
) -> None:
    draft = baclofen_order(draft_id, value=20)
    body = hook_request(
        "order-select", prefetch_data=prefetch(egfr=45), drafts=[draft], selections=[f"MedicationRequest/{draft_id}"]
    )
    cards = valid_cards(app, client, body, SELECT)
    assert [_rule(card) for card in cards] == ["BACLOFEN-DOSE-ABOVE-CEILING"]


def test_a_draft_whose_subject_is_this_patient_s_versioned_or_absolute_reference_is_checked(
    app: FastAPI, client: Client
) -> None:
    for subject in (f"Patient/{PATIENT_ID}/_history/2", f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}"):
        draft = baclofen_order(value=20) | {"subject": {"reference": subject}}
        cards = valid_cards(
            app, client, hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[draft]), SIGN
        )
        assert [_rule(card) for card in cards] == ["BACLOFEN-DOSE-ABOVE-CEILING"], subject


def test_a_draft_for_another_patient_is_not_checked_against_this_one(app: FastAPI, client: Client) -> None:
    draft = baclofen_order(value=30) | {"subject": {"reference": "Patient/someone-else"}}
    body = hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[draft])
    assert valid_cards(app, client, body, SIGN) == []
    assert valid_cards(app, client, body | {"context": body["context"] | {"draftOrders": {
        "resourceType": "Bundle", "type": "collection", "entry": [{"resource": baclofen_order(value=30)}]
    }}}, SIGN)  # fmt: skip


def test_an_update_suggestion_carries_no_empty_value_from_the_draft(app: FastAPI, client: Client) -> None:
    draft = baclofen_order(value=20) | {"note": [], "reasonCode": [{}], "category": None}
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[draft]), SIGN)
    update = cards[0]["suggestions"][0]["actions"][0]
    assert update["type"] == "update"
    assert_no_empty(update["resource"])


@pytest.mark.parametrize("value", [1e308, 0, -20])
def test_a_dose_that_cannot_be_a_dose_is_never_shown_as_one(app: FastAPI, client: Client, value: float) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[baclofen_order(value=value)])
    text = json.dumps(valid_cards(app, client, body, SIGN))
    assert "inf mg" not in text and "-20 mg/day" not in text and " 0 mg/day" not in text


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"url": "urn:example:leaf", "valueString": "x"}
    for _ in range(depth):
        value = {"url": "urn:example:node", "extension": [value]}
    return value


@pytest.mark.parametrize(
    "oddity",
    [
        {"extension": [_nested(400)]},  # valid JSON nested deeper than Python recurses
        {"extension": [{"url": "urn:example:big", "valueInteger64": 18446744073709551616}]},  # beyond 64 bits
    ],
)
def test_a_draft_that_cannot_be_sent_back_gets_its_card_without_the_update(
    app: FastAPI, client: Client, oddity: dict[str, Any]
) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[baclofen_order() | oddity])
    (card,) = valid_cards(app, client, body, SIGN)
    assert card["indicator"] == "critical"
    assert all(action["type"] != "update" for s in card.get("suggestions", ()) for action in s["actions"])


def test_a_timing_too_sparse_to_be_a_dose_gives_no_update_and_no_error(app: FastAPI, client: Client) -> None:
    draft = baclofen_order()
    draft["dosageInstruction"][0]["timing"]["repeat"]["period"] = 1e308
    earlier = baclofen_order("earlier-draft")  # another draft of baclofen among the prefetched orders
    body = hook_request("order-sign", prefetch_data=prefetch(meds=[earlier], egfr=20), drafts=[draft])
    cards = valid_cards(app, client, body, SIGN)
    assert all(action["type"] != "update" for c in cards for s in c.get("suggestions", ()) for action in s["actions"])


def test_interacting_order_is_caught_through_the_evidence(app: FastAPI, client: Client) -> None:
    tizanidine = _drug("tiz-current", "57258", "tizanidine 2 mg", status="active")
    ciprofloxacin = _drug("cipro", "2551", "ciprofloxacin 500 mg")
    body = hook_request("order-sign", prefetch_data=prefetch(meds=[tizanidine]), drafts=[ciprofloxacin])
    cards = valid_cards(app, client, body, SIGN)
    assert cards and cards[0]["indicator"] == "critical"
    assert "MedicationRequest/cipro" in cards[0]["detail"]


def test_patient_view_reviews_the_current_regimen(app: FastAPI, client: Client) -> None:
    body = hook_request("patient-view", prefetch_data=prefetch(meds=[baclofen_order(status="active")]))
    cards = valid_cards(app, client, body, REVIEW)
    rules = [_rule(c) for c in cards]
    assert rules[0] == "BACLOFEN-DOSE-ABOVE-CEILING"
    assert len(rules) == len(set(rules))
    assert all("suggestions" not in c for c in cards if _rule(c) == "BACLOFEN-DOSE-ABOVE-CEILING")


@pytest.mark.parametrize("egfr", [20.0, 45.0, 90.0])
def test_patient_view_says_nothing_about_drugs_the_patient_is_not_taking(
    app: FastAPI, client: Client, egfr: float
) -> None:
    """ "Avoid oral baclofen" (eGFR 20) and "reduce baclofen" (eGFR 45) are for when baclofen is ordered."""
    assert valid_cards(app, client, hook_request("patient-view", prefetch_data=prefetch(egfr=egfr)), REVIEW) == []


def test_patient_view_shows_no_standing_reminders_for_a_regimen_within_limits(app: FastAPI, client: Client) -> None:
    """Baclofen 5 mg tid at eGFR 90: no "never stop abruptly", no "watch for sedation" at every chart open."""
    meds = [baclofen_order(status="active", value=5)]
    assert (
        valid_cards(app, client, hook_request("patient-view", prefetch_data=prefetch(meds=meds, egfr=90.0)), REVIEW)
        == []
    )
    within_band = [baclofen_order(status="active", value=10)]  # 30 mg/day under the 40 mg/day ceiling of eGFR 45
    body = hook_request("patient-view", prefetch_data=prefetch(meds=within_band, egfr=45.0))
    assert valid_cards(app, client, body, REVIEW) == []


def test_patient_view_shows_monitoring_that_is_due_for_the_current_drug(app: FastAPI, client: Client) -> None:
    tizanidine = _drug("tiz", "57258", "tizanidine 2 mg", status="active")
    data = prefetch(meds=[tizanidine], egfr=90.0)
    without_liver_tests = [o for o in observations(90.0) if o["id"] not in ("alt", "ast", "bili")]
    data["observations"] = data["recentObservations"] = searchset(without_liver_tests)
    cards = valid_cards(app, client, hook_request("patient-view", prefetch_data=data), REVIEW)
    assert [_rule(c) for c in cards] == ["TIZ-LFT-BASELINE"]  # not the standing "check BP during titration"
    nabiximols = _drug("nab", "1670017", "nabiximols", status="active")
    # Its 4-week review is due, or not yet; under the default jurisdiction (us) it is also not marketed there.
    not_us = "NABIXIMOLS-NOT-US"
    for days, expected in ((40, [not_us, "NABIXIMOLS-4-WEEK-REVIEW"]), (10, [not_us])):
        nabiximols["authoredOn"] = days_ago(days)
        body = hook_request("patient-view", prefetch_data=prefetch(meds=[nabiximols], egfr=90.0))
        assert [_rule(c) for c in valid_cards(app, client, body, REVIEW)] == expected


def test_patient_without_als_gets_no_cards(app: FastAPI, client: Client) -> None:
    data = prefetch(meds=[baclofen_order(status="active")])
    data["conditions"] = searchset([])
    assert valid_cards(app, client, hook_request("patient-view", prefetch_data=data), REVIEW) == []


def test_detail_shows_the_basis_data_used_and_missing(app: FastAPI, client: Client) -> None:
    data = prefetch()
    del data["statements"]
    body = hook_request("order-sign", prefetch_data=data, drafts=[baclofen_order()])
    (card,) = valid_cards(app, client, body, SIGN)
    detail = card["detail"]
    assert "**Patient data used:**" in detail and "eGFR: 45" in detail and "Observation/egfr" in detail
    assert "**Missing or out of date:**" in detail and "medication statements: not obtained" in detail
    assert "**Sources:**" in detail and "evidence: C-primary" in detail
    assert "BACLOFEN-DOSE-ABOVE-CEILING v" in detail


def test_record_text_in_the_detail_can_never_become_a_link_an_image_or_html(app: FastAPI, client: Client) -> None:
    draft = baclofen_order("[clickme](javascript:alert(1))")
    dosage = draft["dosageInstruction"][0]
    del dosage["doseAndRate"], dosage["timing"]
    dosage["text"] = "20 mg three times a day [clickme](javascript:alert(1)) <img src=x onerror=alert(1)> *now*"
    (card,) = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(), drafts=[draft]), SIGN)
    detail = card["detail"]
    assert "dose read from the dosage text" in detail
    for markup in (r"\[clickme\]", r"\<img", r"\*now\*"):  # each only escaped, never as markup
        assert re.search(rf"(?<!\\){markup}", detail) is None
    assert r"\[clickme\](javascript:alert(1))" in detail and r"\<img src=x onerror=alert(1)\>" in detail
    assert "**Patient data used:**" in detail  # the card's own Markdown stays


def test_data_gaps_share_one_card_and_name_what_is_missing(app: FastAPI, client: Client) -> None:
    data = prefetch(meds=[baclofen_order(status="active")])
    data["observations"] = data["recentObservations"] = searchset([])
    cards = valid_cards(app, client, hook_request("patient-view", prefetch_data=data), REVIEW)
    gaps = [c for c in cards if any(f.endswith(":gap") for f in c["extension"]["org.spasticity-cds.findings"])]
    assert len(gaps) == 1
    assert "eGFR" in gaps[0]["detail"]


def test_issued_cards_are_stored_and_feedback_joins_back(
    app: FastAPI, client: Client, hook_store: SqlFeedbackStore
) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order()])
    (card,) = valid_cards(app, client, body, SIGN)
    assert app.state.hooks.cards.flush()
    issued = hook_store.find_issued_card(card["uuid"])
    assert issued is not None and issued.hook_instance == body["hookInstance"] and issued.service_id == SIGN
    assert issued.patient_ref_hash == hash_patient_ref(f"Patient/{PATIENT_ID}")
    path = f"/cds-services/{SIGN}/feedback"
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-24T14:31:00Z",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
    }
    for _ in range(3):
        assert call(app, "POST", path, json={"feedback": [accepted]}, headers=client.headers(path)).status_code == 200
    (stored,) = hook_store.list_hook_feedback()
    assert (stored.rule_id, stored.kb_version, stored.hook_instance) == (
        issued.rule_id,
        issued.kb_version,
        body["hookInstance"],
    )
    assert stored.accepted_suggestions == (card["suggestions"][0]["uuid"],)
    (stats,) = [s for s in hook_store.feedback_report() if s.rule_id == issued.rule_id]
    assert stats.cards_issued == 1 and stats.accepted == 1


def test_feedback_finds_its_card_whatever_the_case_of_the_uuid_hex(
    app: FastAPI, client: Client, hook_store: SqlFeedbackStore
) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order()])
    (card,) = valid_cards(app, client, body, SIGN)
    suggestion = card["suggestions"][0]["uuid"]
    path = f"/cds-services/{SIGN}/feedback"
    item = {"outcome": "accepted", "outcomeTimestamp": "2026-11-24T14:31:00Z"}
    for card_id, suggestion_id in (
        (card["uuid"].upper(), f"urn:uuid:{suggestion.upper()}"),
        (card["uuid"], suggestion),
    ):
        sent = item | {"card": card_id, "acceptedSuggestions": [{"id": suggestion_id}]}
        assert call(app, "POST", path, json={"feedback": [sent]}, headers=client.headers(path)).status_code == 200
    (stored,) = hook_store.list_hook_feedback()  # one report, however its ids were written
    assert (stored.card_uuid, stored.accepted_suggestions) == (card["uuid"], (suggestion,))
    assert stored.rule_id == "BACLOFEN-DOSE-ABOVE-CEILING" and stored.hook_instance == body["hookInstance"]


def test_feedback_accepting_a_suggestion_the_card_never_carried_is_stored_and_flagged(
    app: FastAPI, client: Client, hook_store: SqlFeedbackStore
) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order()])
    (card,) = valid_cards(app, client, body, SIGN)
    issued_suggestion = card["suggestions"][0]["uuid"]
    assert app.state.hooks.cards.flush()
    stored_card = hook_store.find_issued_card(card["uuid"])
    assert stored_card is not None and stored_card.suggestion_uuids == (issued_suggestion,)
    path = f"/cds-services/{SIGN}/feedback"
    never = "0b6d4f4e-0000-4000-8000-000000000000"
    items = [
        {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": f"2026-11-24T14:3{n}:00Z", **accepted}
        for n, accepted in enumerate(
            [
                {"acceptedSuggestions": [{"id": issued_suggestion}]},
                {"acceptedSuggestions": [{"id": issued_suggestion}, {"id": never}]},
            ]
        )
    ]
    items.append(items[0] | {"card": "not-ours"})
    assert call(app, "POST", path, json={"feedback": items}, headers=client.headers(path)).status_code == 200
    stored = {(f.card_uuid, f.accepted_suggestions): f.unknown_suggestions for f in hook_store.list_hook_feedback()}
    assert stored == {
        (card["uuid"], (issued_suggestion,)): (),
        (card["uuid"], (issued_suggestion, never)): (never,),  # kept as sent, flagged
        ("not-ours", (issued_suggestion,)): None,  # an unknown card: nothing to check against
    }


def test_every_card_and_suggestion_has_its_own_uuid(app: FastAPI, client: Client) -> None:
    body = hook_request("patient-view", prefetch_data=prefetch(meds=[baclofen_order(status="active")]))
    first, second = (valid_cards(app, client, body | {"hookInstance": h}, REVIEW) for h in ("a-1", "a-2"))
    uuids = [c["uuid"] for c in first + second] + [s["uuid"] for c in first + second for s in c.get("suggestions", [])]
    assert len(uuids) == len(set(uuids))


def test_summary_is_cut_under_140_characters_at_a_word() -> None:
    long = "Kidney function is severely reduced " * 8
    cut = short_summary(long)
    assert len(cut) < 140 and cut.endswith("…") and not cut[:-1].endswith(" ")
    assert short_summary("Short one.") == "Short one."


def test_compact_drops_every_empty_value() -> None:
    value = {"a": None, "b": "", "c": [], "d": {}, "e": [None, "", {"f": []}], "g": {"h": 0, "i": False}}
    assert compact(value) == {"g": {"h": 0, "i": False}}


def test_draft_without_id_gets_a_card_but_no_update(app: FastAPI, client: Client) -> None:
    draft = baclofen_order()
    del draft["id"]
    (card,) = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(), drafts=[draft]), SIGN)
    assert _rule(card) == "BACLOFEN-DOSE-ABOVE-CEILING" and "suggestions" not in card


def test_the_clients_draft_is_never_changed_in_place() -> None:
    from spasticity_cds.cds_hooks.orders import adjusted_order, draft_resources

    draft = baclofen_order()
    del draft["subject"]
    context = {"patientId": PATIENT_ID, "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}}
    before = json.dumps(context, sort_keys=True)
    ((copied, sent),) = draft_resources(context)
    updated = adjusted_order(sent, 5, 3)
    assert copied["subject"] == {"reference": f"Patient/{PATIENT_ID}"} and sent is draft
    assert updated["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 5
    assert "subject" not in updated  # the update is the client's draft with the dose changed, nothing else
    assert json.dumps(context, sort_keys=True) == before


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ({"status": None, "intent": ""}, {"status": "draft", "intent": "order"}),
        ({"status": "active", "intent": "proposal"}, {"status": "active", "intent": "proposal"}),
    ],
)
def test_an_update_has_the_status_and_intent_fhir_requires_and_keeps_those_the_client_sent(
    sent: dict[str, Any], expected: dict[str, Any]
) -> None:
    from spasticity_cds.cds_hooks.orders import adjusted_order

    draft = baclofen_order() | sent
    before = json.dumps(draft, sort_keys=True)
    updated = adjusted_order(draft, 5, 3)
    assert {name: updated[name] for name in expected} == expected
    assert json.dumps(draft, sort_keys=True) == before


def test_an_update_of_a_draft_without_status_is_a_draft(app: FastAPI, client: Client) -> None:
    draft = baclofen_order()
    del draft["status"]
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[draft]), SIGN)
    (action,) = cards[0]["suggestions"][0]["actions"]
    assert action["resource"]["status"] == "draft" and action["resource"]["intent"] == "order"


def test_an_update_keeps_the_clients_own_subject_and_a_clean_dose(app: FastAPI, client: Client) -> None:
    draft = baclofen_order(value=0.02, unit="g")
    draft["subject"] = {"reference": f"https://ehr.example/fhir/Patient/{PATIENT_ID}"}
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(egfr=45), drafts=[draft]), SIGN)
    (action,) = cards[0]["suggestions"][0]["actions"]
    assert action["resource"]["subject"] == draft["subject"]
    assert action["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 0.013


def test_a_draft_sent_twice_is_removed_by_one_action(app: FastAPI, client: Client) -> None:
    tizanidine = _drug("draft-tiz", "57258", "tizanidine 2 mg", status="draft")
    ciprofloxacin = _drug("cipro", "2551", "ciprofloxacin 500 mg", status="active")
    body = hook_request(
        "order-sign", prefetch_data=prefetch(meds=[ciprofloxacin]), drafts=[tizanidine, dict(tizanidine)]
    )
    removals = [
        action
        for card in valid_cards(app, client, body, SIGN)
        for suggestion in card.get("suggestions", ())
        for action in suggestion["actions"]
        if action["type"] == "delete"
    ]
    assert [action["resourceId"] for action in removals] == ["MedicationRequest/draft-tiz"]


def test_a_clients_own_id_that_reads_like_an_unnamed_draft_is_still_named(app: FastAPI, client: Client) -> None:
    tizanidine = _drug("unnamed-draft-1", "57258", "tizanidine 2 mg", status="draft")
    ciprofloxacin = _drug("cipro", "2551", "ciprofloxacin 500 mg", status="active")
    body = hook_request("order-sign", prefetch_data=prefetch(meds=[ciprofloxacin]), drafts=[tizanidine])
    text = json.dumps(valid_cards(app, client, body, SIGN))
    assert '"resourceId": "MedicationRequest/unnamed-draft-1"' in text


def test_order_without_a_dose_yet(app: FastAPI, client: Client) -> None:
    """order-select: the dose is still being typed, so only the kidney ceiling is shown; order-sign flags the gap."""
    draft = baclofen_order(intent=None)
    del draft["dosageInstruction"]
    select = hook_request(
        "order-select", prefetch_data=prefetch(), drafts=[draft], selections=[f"MedicationRequest/{draft['id']}"]
    )
    assert [_rule(c) for c in valid_cards(app, client, select, SELECT)] == ["BACLOFEN-RENAL-BAND"]
    sign = hook_request("order-sign", prefetch_data=prefetch(), drafts=[draft])
    assert [_rule(c) for c in valid_cards(app, client, sign, SIGN)] == [
        "BACLOFEN-RENAL-BAND",
        "BACLOFEN-DOSE-ABOVE-MAX",
    ]


def test_card_uuids_are_random_version_4_and_never_repeat() -> None:
    import uuid

    from spasticity_cds.cds_hooks.cards import random_uuid

    drawn = [random_uuid() for _ in range(1000)]  # more than one 4 KiB pool
    assert len(set(drawn)) == len(drawn)
    assert all(uuid.UUID(text).version == 4 and uuid.UUID(text).variant == uuid.RFC_4122 for text in drawn)


def test_a_step_down_never_overshoots_the_plans_step_when_the_product_cannot_give_it(
    app: FastAPI, client: Client
) -> None:
    """20 mg tablets, 20 mg tid taken at eGFR 45: the plan's first step down is 45 mg/day (15 mg tid). Half tablets
    give 10 or 20 mg, so rounding down would halve the dose at once (30 mg/day, below the step): no update is
    suggested, and the card still shows the plan."""
    taken = baclofen_order("bac-now", value=20, per_day=3, status="active")
    draft = baclofen_order(value=20, per_day=3, code="197392")
    body = hook_request("order-sign", prefetch_data=prefetch([taken]), drafts=[draft])
    card = next(c for c in valid_cards(app, client, body, SIGN) if _rule(c) == "BACLOFEN-DOSE-ABOVE-CEILING")
    updates = [s for s in card.get("suggestions", []) if s["actions"][0]["type"] == "update"]
    assert updates == []
    assert "**Dose plan for Baclofen (oral):**" in card["detail"]


def test_patient_view_speaks_of_a_draft_order_in_the_chart_as_of_the_regimen(app: FastAPI, client: Client) -> None:
    """A tizanidine order drafted in the chart beside fluvoxamine: its critical contraindication is shown on
    patient-view (a finding naming a drug of the regimen must not hide a worse one about the same drug)."""
    meds = [_drug("tiz", "57258", "tizanidine 2 mg"), _drug("fluv", "42355", "fluvoxamine 50 mg", status="active")]
    cards = valid_cards(app, client, hook_request("patient-view", prefetch_data=prefetch(meds=meds, egfr=90.0)), REVIEW)
    assert "TIZ-CYP1A2-STRONG" in [_rule(c) for c in cards]


def test_an_order_whose_dose_is_only_in_its_text_and_within_the_ceiling_gets_no_kidney_card(
    app: FastAPI, client: Client
) -> None:
    """Baclofen 5 mg three times a day written only in the dosage text, eGFR 45 (ceiling 40 mg/day): the evaluator
    reads and places it within the ceiling, so no "reduce baclofen" card."""
    draft = baclofen_order(value=5)
    del draft["dosageInstruction"][0]["timing"], draft["dosageInstruction"][0]["doseAndRate"]
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=prefetch(), drafts=[draft]), SIGN)
    kidney = {"BACLOFEN-RENAL-BAND", "BACLOFEN-DOSE-ABOVE-CEILING"}
    assert not [c for c in cards if set(c["extension"]["org.spasticity-cds.findings"]) & kidney]


def test_a_new_order_above_the_ceiling_shows_a_new_patients_steps_on_its_card(app: FastAPI, client: Client) -> None:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order()])
    (card,) = valid_cards(app, client, body, SIGN)
    assert "Steps from the start: " in card["detail"] and "5 mg x3 (15 mg/day)" in card["detail"]


def test_card_data_lines_name_facts_as_the_page_does(app: FastAPI, client: Client) -> None:
    data = prefetch()
    data["observations"] = data["recentObservations"] = searchset(
        [o if o["id"] != "alt" else observation("alt", "1742-6", 190, "U/L") for o in observations()]
    )
    draft = _drug("tiz", "57258", "tizanidine 2 mg")
    cards = valid_cards(app, client, hook_request("order-sign", prefetch_data=data, drafts=[draft]), SIGN)
    lines = [line for card in cards for line in card["detail"].splitlines() if line.startswith("- ")]
    assert any(line.startswith("- ALT (multiple of upper limit): ") for line in lines), lines
    assert not [line for line in lines if line.startswith(("- obs.", "- med.", "- patient."))]


def test_patient_view_keeps_the_warnings_of_a_drug_taken_outside_the_spasticity_ladder(
    app: FastAPI, client: Client
) -> None:
    """Diazepam taken for palliative breathlessness is not the spasticity option's use, but it is taken: its opioid
    boxed warning (critical) reaches the chart like that of any drug the patient takes."""
    diazepam = _drug("dzp", "3322", "diazepam 2 mg", status="active")
    diazepam["reasonCode"] = [{"text": "Breathlessness - end of life palliative care"}]
    morphine = _drug("mor", "7052", "morphine 10 mg", status="active")
    body = hook_request("patient-view", prefetch_data=prefetch(meds=[diazepam, morphine], egfr=90.0))
    rules = [_rule(c) for c in valid_cards(app, client, body, REVIEW)]
    assert "BENZO-OPIOID" in rules


def test_patient_view_says_the_two_alpha2_withdrawals_are_alternatives(app: FastAPI, client: Client) -> None:
    tizanidine = _drug("tiz", "57258", "tizanidine 4 mg", status="active")
    clonidine = _drug("clo", "2599", "clonidine 0.1 mg", status="active")
    body = hook_request("patient-view", prefetch_data=prefetch(meds=[tizanidine, clonidine], egfr=90.0))
    cards = {_rule(c): c for c in valid_cards(app, client, body, REVIEW)}
    detail = cards["ALPHA2-DUPLICATE-TIZANIDINE"]["detail"]
    assert "withdraw Tizanidine or Clonidine, not both" in detail
