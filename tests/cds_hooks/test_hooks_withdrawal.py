"""A draft order of an agent the knowledge base rules out gets a `delete` suggestion; dose alternatives stay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from spasticity_cds.cds_hooks import cards as cards_module
from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import SqlFeedbackStore

from .helpers import (
    BASE,
    REVIEW,
    RXNORM,
    SELECT,
    SIGN,
    Client,
    FrozenClock,
    baclofen_order,
    hook_request,
    prefetch,
    serve,
    valid_cards,
)

SEVERE_EGFR = 20.0


def _findings(card: dict[str, Any]) -> list[str]:
    found: list[str] = card["extension"]["org.spasticity-cds.findings"]
    return found


def _sign(*drafts: dict[str, Any], egfr: float = SEVERE_EGFR, meds: list[dict[str, Any]] | None = None) -> Any:
    return hook_request("order-sign", prefetch_data=prefetch(meds=meds, egfr=egfr), drafts=list(drafts))


def test_baclofen_at_severe_kidney_disease_suggests_deleting_the_draft(app: FastAPI, client: Client) -> None:
    (card,) = valid_cards(app, client, _sign(baclofen_order(value=5)), SIGN)
    assert _findings(card) == ["BACLOFEN-KIDNEY-FAILURE-AVOID"]
    assert card["indicator"] == "critical" and card["selectionBehavior"] == "at-most-one"
    (suggestion,) = card["suggestions"]
    assert suggestion["isRecommended"] is True and suggestion["label"] == "Remove the Baclofen order"
    assert suggestion["actions"] == [
        {
            "type": "delete",
            "description": "Remove the draft order MedicationRequest/draft-baclofen",
            "resourceId": "MedicationRequest/draft-baclofen",
        }
    ]


def test_under_the_avoid_policy_no_kidney_dose_is_offered_beside_avoid(app: FastAPI, client: Client) -> None:
    """A draft above the kidney-adjusted ceiling gets "avoid" alone: no ceiling, no reduced dose to pick instead.

    Under the default avoid policy a kidney-adjusted dose beside "avoid" would read as permission (KB 1.3.0,
    BACLOFEN-DOSE-ABOVE-CEILING v4); the reduce policy offers the dose instead, see
    test_reduce_policy_keeps_the_order_and_offers_only_the_dose."""
    (card,) = valid_cards(app, client, _sign(baclofen_order(value=10)), SIGN)
    assert _findings(card) == ["BACLOFEN-KIDNEY-FAILURE-AVOID"]
    assert card["source"]["topic"]["code"] == "BACLOFEN-KIDNEY-FAILURE-AVOID"
    (remove,) = card["suggestions"]
    assert [a["type"] for a in remove["actions"]] == ["delete"] and remove["isRecommended"] is True
    assert card["detail"].count("avoid oral baclofen") == 1
    assert "kidney-adjusted ceiling" not in card["detail"]


def test_dialysis_rules_baclofen_out_at_any_egfr(app: FastAPI, client: Client) -> None:
    body = _sign(baclofen_order(value=5), egfr=60.0)
    body["prefetch"]["procedures"]["entry"] = [
        {
            "resource": {
                "resourceType": "Procedure",
                "id": "hd",
                "status": "in-progress",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "302497006"}]},
                "subject": {"reference": "Patient/pt-1"},
            }
        }
    ]
    body["prefetch"]["procedures"]["total"] = 1
    cards = valid_cards(app, client, body, SIGN)
    (card,) = [c for c in cards if "BACLOFEN-KIDNEY-FAILURE-AVOID" in _findings(c)]
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/draft-baclofen"


def test_order_select_deletes_only_the_selected_draft(app: FastAPI, client: Client) -> None:
    first, second = baclofen_order("bac-1", value=5), baclofen_order("bac-2", value=5)
    body = hook_request(
        "order-select",
        prefetch_data=prefetch(egfr=SEVERE_EGFR),
        drafts=[first, second],
        selections=["MedicationRequest/bac-2"],
    )
    (card,) = valid_cards(app, client, body, SELECT)
    (suggestion,) = card["suggestions"]
    assert [a["resourceId"] for a in suggestion["actions"]] == ["MedicationRequest/bac-2"]


def test_two_drafts_of_the_agent_are_removed_together(app: FastAPI, client: Client) -> None:
    (card,) = valid_cards(app, client, _sign(baclofen_order("bac-1", value=5), baclofen_order("bac-2", value=5)), SIGN)
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Remove the Baclofen orders"
    assert [a["resourceId"] for a in suggestion["actions"]] == ["MedicationRequest/bac-1", "MedicationRequest/bac-2"]


def test_a_draft_without_id_cannot_be_named_so_it_gets_no_delete(app: FastAPI, client: Client) -> None:
    draft = baclofen_order(value=5)
    del draft["id"]
    (card,) = valid_cards(app, client, _sign(draft), SIGN)
    assert _findings(card) == ["BACLOFEN-KIDNEY-FAILURE-AVOID"] and "suggestions" not in card
    assert "selectionBehavior" not in card


def test_reduce_policy_keeps_the_order_and_offers_only_the_dose(
    tmp_path: Path, client: Client, hook_store: SqlFeedbackStore, hook_clock: FrozenClock
) -> None:
    settings = WebSettings(
        public_base_url=BASE,
        trusted_issuers_file=client.write_trust(tmp_path),
        kb_settings={"baclofen_severe_ckd_policy": "reduce"},
    )
    app = create_app(settings, store=hook_store, clock=hook_clock)
    cards = valid_cards(app, client, _sign(baclofen_order(value=10)), SIGN)
    assert "BACLOFEN-KIDNEY-FAILURE-AVOID" not in {f for c in cards for f in _findings(c)}
    actions = [a for c in cards for s in c.get("suggestions", ()) for a in s["actions"]]
    assert [a["type"] for a in actions] == ["update"]
    assert actions[0]["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 8.5


def test_patient_view_has_no_draft_to_delete(app: FastAPI, client: Client) -> None:
    body = hook_request("patient-view", prefetch_data=prefetch(meds=[baclofen_order(status="active")], egfr=20.0))
    cards = valid_cards(app, client, body, REVIEW)
    avoid = next(c for c in cards if "BACLOFEN-KIDNEY-FAILURE-AVOID" in _findings(c))
    assert "suggestions" not in avoid


def test_patient_view_gives_avoiding_baclofen_one_critical_card(app: FastAPI, client: Client) -> None:
    """Baclofen 20 mg tid at eGFR 20: one card, "avoid oral baclofen" (two critical cards, avoid and "60 mg/day is
    above the kidney-adjusted ceiling", contradicted each other before knowledge base 1.3.1)."""
    body = hook_request("patient-view", prefetch_data=prefetch(meds=[baclofen_order(status="active")], egfr=20.0))
    cards = valid_cards(app, client, body, REVIEW)
    assert [c["indicator"] for c in cards].count("critical") == 1
    (card,) = [c for c in cards if {"BACLOFEN-KIDNEY-FAILURE-AVOID", "BACLOFEN-DOSE-ABOVE-CEILING"} & set(_findings(c))]
    assert _findings(card)[0] == "BACLOFEN-KIDNEY-FAILURE-AVOID" and "avoid oral baclofen" in card["summary"]


def test_a_kidney_dose_joins_the_finding_that_rules_its_drug_out_on_every_hook() -> None:
    """The grouping itself, whatever the knowledge base puts beside "avoid": patient-view groups as the order hooks do
    (it kept the two apart, so a knowledge base with both gave two contradicting cards there)."""
    avoid = {"id": "AVOID", "kind": "contraindication", "agents": ["baclofen"], "effects": {"baclofen": "avoid"}}
    dose = {"id": "DOSE", "kind": "dose", "action": "renal-dose", "agents": ["baclofen"]}
    findings = [{"rule_id": f["id"], "severity": "critical", **f} for f in (avoid, dose)]
    assert [[f["id"] for f in group] for group in cards_module._groups(findings)] == [["AVOID", "DOSE"]]


def test_any_ruled_out_agent_being_ordered_can_be_deleted(app: FastAPI, client: Client) -> None:
    """The same knowledge-base effect (contraindicated) on another agent: tizanidine with fluvoxamine."""
    fluvoxamine = baclofen_order("fluvox", value=50, status="active")
    fluvoxamine["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "42355"}], "text": "fluvoxamine"}
    tizanidine = baclofen_order("tiz", value=2)
    tizanidine["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "57258"}], "text": "tizanidine"}
    cards = valid_cards(app, client, _sign(tizanidine, egfr=90.0, meds=[fluvoxamine]), SIGN)
    (card,) = [c for c in cards if "TIZ-CYP1A2-STRONG" in _findings(c)]
    assert card["suggestions"][0]["actions"] == [
        {
            "type": "delete",
            "description": "Remove the draft order MedicationRequest/tiz",
            "resourceId": "MedicationRequest/tiz",
        }
    ]


def test_accepting_the_delete_over_http_is_stored_as_feedback(
    app: FastAPI, client: Client, hook_store: SqlFeedbackStore
) -> None:
    path = f"/cds-services/{SIGN}"
    with serve(app) as url:
        answer = httpx.post(f"{url}{path}", json=_sign(baclofen_order(value=5)), headers=client.headers(path))
        assert answer.status_code == 200, answer.text
        (card,) = answer.json()["cards"]
        (suggestion,) = card["suggestions"]
        feedback = {
            "card": card["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": "2026-11-24T14:31:00Z",
            "acceptedSuggestions": [{"id": suggestion["uuid"]}],
        }
        stored = httpx.post(
            f"{url}{path}/feedback", json={"feedback": [feedback]}, headers=client.headers(f"{path}/feedback")
        )
        assert stored.status_code == 200, stored.text
    (row,) = hook_store.list_hook_feedback()
    assert row.rule_id == "BACLOFEN-KIDNEY-FAILURE-AVOID" and row.accepted_suggestions == (suggestion["uuid"],)


def test_on_current_baclofen_the_taper_card_stays_beside_the_delete(app: FastAPI, client: Client) -> None:
    """Removing the new draft leaves the active prescription alone; stopping it is the taper card's business."""
    current = baclofen_order("bac-current", value=5, status="active")
    cards = valid_cards(app, client, _sign(baclofen_order(value=5), meds=[current]), SIGN)
    assert [_findings(c) for c in cards] == [["BACLOFEN-KIDNEY-FAILURE-AVOID"], ["BACLOFEN-NO-ABRUPT-STOP"]]
    (remove,) = cards[0]["suggestions"]
    assert [a["resourceId"] for a in remove["actions"]] == ["MedicationRequest/draft-baclofen"]


def test_liver_tests_stay_beside_the_delete_without_naming_the_removed_draft(app: FastAPI, client: Client) -> None:
    """ALT at 10x the upper limit rules tizanidine out and asks for liver tests: both can be taken (``any``)."""
    tizanidine = baclofen_order("tiz", value=2)
    tizanidine["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "57258"}], "text": "tizanidine"}
    body = _sign(tizanidine, egfr=90.0)
    for key in ("observations", "recentObservations"):
        for entry in body["prefetch"][key]["entry"]:
            if entry["resource"]["id"] in ("alt", "ast"):
                entry["resource"]["valueQuantity"]["value"] = 400
    cards = valid_cards(app, client, body, SIGN)
    (card,) = [c for c in cards if "TIZ-LIVER-3X" in _findings(c)]
    remove, liver = card["suggestions"]
    assert card["selectionBehavior"] == "any" and remove["actions"][0]["type"] == "delete"
    (create,) = liver["actions"]
    assert create["type"] == "create" and create["resource"]["resourceType"] == "ServiceRequest"
    assert "reasonReference" not in create["resource"]
