"""Contract tests on the specification's own example bodies (HL7 CDS Hooks 2.0.1, Inferno CRD) and sandbox quirks."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import SqlFeedbackStore

from .fhir_server import Behaviour, fhir_server
from .helpers import (
    BASE,
    REVIEW,
    SELECT,
    SIGN,
    Client,
    FrozenClock,
    als,
    assert_no_empty,
    assert_valid_card,
    baclofen_order,
    call,
    hook_request,
    load_fixture,
    observations,
    prefetch,
)

SERVICE_PATHS = {"patient-view": REVIEW, "order-select": SELECT, "order-sign": SIGN}


LoopbackApp = Callable[[str], FastAPI]


@pytest.fixture
def loopback_app(settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock) -> LoopbackApp:
    """An app allowed to query only the loopback FHIR server at the base it is given (the examples name public
    hosts)."""

    def app_for(base: str) -> FastAPI:
        allow = dataclasses.replace(settings, fhir_server_allowlist=(base,))
        return create_app(allow, store=hook_store, clock=hook_clock)

    return app_for


def _post(app: FastAPI, client: Client, body: dict[str, Any]) -> Any:
    path = f"/cds-services/{SERVICE_PATHS[body['hook']]}"
    return call(app, "POST", path, json=body, headers=client.headers(path))


def _record_for(patient_id: str) -> dict[str, list[dict[str, Any]]]:
    def owned(resource: dict[str, Any]) -> dict[str, Any]:
        return resource | {"subject": {"reference": f"Patient/{patient_id}"}}

    return {
        "Patient": [{"resourceType": "Patient", "id": patient_id, "gender": "male", "birthDate": "1955-12-23"}],
        "Condition": [owned(als())],
        "Observation": [owned(o) for o in observations()],
    }


def test_discovery_has_the_shape_of_the_spec_example(app: FastAPI, client: Client) -> None:
    example = load_fixture("hl7/discovery.json")["services"][0]
    ours = call(app, "GET", "/cds-services", headers=client.headers("/cds-services")).json()
    assert_no_empty(ours)
    assert {s["hook"] for s in ours["services"]} == {"patient-view", "order-select", "order-sign"}
    for service in ours["services"]:
        assert set(example) <= set(service)
        assert all(isinstance(service[key], type(example[key])) for key in example)
        assert service["version"] == "2.0.1" and service["hookVersion"] == "1.0"
        assert service["extension"]["org.spasticity-cds.kbVersion"]
        assert all(isinstance(query, str) for query in service["prefetch"].values())


def test_spec_patient_view_example_with_an_unreachable_server_is_412(loopback_app: LoopbackApp, client: Client) -> None:
    response = _post(loopback_app("http://127.0.0.1:9/fhir"), client, load_fixture("hl7/patient-view-request.json"))
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"


def test_spec_patient_view_example_against_a_real_fhir_server(loopback_app: LoopbackApp, client: Client) -> None:
    body = load_fixture("hl7/patient-view-request.json")
    meds = [baclofen_order(status="active") | {"subject": {"reference": f"Patient/{body['context']['patientId']}"}}]
    behaviour = Behaviour(resources=_record_for(body["context"]["patientId"]) | {"MedicationRequest": meds})
    with fhir_server(behaviour) as server:
        response = _post(loopback_app(server), client, body | {"fhirServer": server})
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert cards
    for card in cards:
        assert_valid_card(card)
    assert {auth for _, auth in behaviour.requests} == {"Bearer some-opaque-fhir-access-token"}


def test_spec_example_with_extension_lacks_patient_id(app: FastAPI, client: Client) -> None:
    response = _post(app, client, load_fixture("hl7/request-with-extension.json"))
    assert response.status_code == 400
    assert "patientId" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("name", ["order_select_hook_request.json", "order_sign_hook_request.json"])
def test_inferno_order_examples_are_silent_for_non_antispastics(app: FastAPI, client: Client, name: str) -> None:
    response = _post(app, client, load_fixture(f"inferno/{name}"))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


@pytest.mark.parametrize("name", ["order_select_hook_request.json", "order_sign_hook_request.json"])
def test_inferno_order_examples_with_an_antispastic_draft(loopback_app: LoopbackApp, client: Client, name: str) -> None:
    body = load_fixture(f"inferno/{name}")
    entries = body["context"]["draftOrders"]["entry"]
    medication = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "MedicationRequest")
    draft = baclofen_order(medication["id"]) | {"subject": {"reference": "Patient/example"}}
    entries[entries.index(next(e for e in entries if e["resource"] is medication))] = {"resource": draft}
    with fhir_server(Behaviour(resources=_record_for("example"))) as server:
        response = _post(loopback_app(server), client, body | {"fhirServer": server})
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert [c["extension"]["org.spasticity-cds.rule"]["id"] for c in cards] == ["BACLOFEN-DOSE-ABOVE-CEILING"]
    assert_valid_card(cards[0])


def _quirky_request(**changes: Any) -> dict[str, Any]:
    draft = baclofen_order(value=2, unit="{pill}", code="202109", intent=None)
    body = hook_request(
        "order-select", prefetch_data=prefetch(), drafts=[draft], selections=[f"MedicationRequest/{draft['id']}"]
    )
    del body["context"]["draftOrders"]["type"]
    return body


def test_sandbox_quirks_are_tolerated(app: FastAPI, client: Client) -> None:
    """draftOrders without type, MedicationRequest without intent, dose unit {pill}, no encounterId."""
    body = _quirky_request()
    assert (
        "encounterId" not in body["context"] and "intent" not in body["context"]["draftOrders"]["entry"][0]["resource"]
    )
    response = _post(app, client, body)
    assert response.status_code == 200
    (card,) = response.json()["cards"]
    assert_valid_card(card)
    (suggestion,) = card["suggestions"]
    updated = suggestion["actions"][0]["resource"]
    quantity = updated["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert quantity == {"value": 1, "unit": "{pill}", "system": "http://unitsofmeasure.org", "code": "{pill}"}
    assert suggestion["label"] == "Reduce to 1 tablet per dose (10 mg; 30 mg/day, ceiling 40 mg/day)"


def test_an_update_of_a_draft_without_intent_is_an_order_and_otherwise_the_draft_as_sent(
    app: FastAPI, client: Client
) -> None:
    """FHIR R4 requires MedicationRequest.intent; the sandbox leaves it out of a draft still being written."""
    body = _quirky_request()
    sent = copy.deepcopy(body["context"]["draftOrders"]["entry"][0]["resource"])
    (card,) = _post(app, client, body).json()["cards"]
    updated = card["suggestions"][0]["actions"][0]["resource"]
    expected = sent | {"intent": "order"}
    dosage = expected["dosageInstruction"][0]
    dosage["doseAndRate"][0]["doseQuantity"]["value"] = 1
    dosage["text"] = "1 tablet 3 times a day (kidney-adjusted dose)"  # not the UCUM annotation
    assert updated == expected


@pytest.mark.parametrize(
    "dosage",
    [
        {"doseAndRate": {"doseQuantity": {"value": 2, "unit": "mg"}}, "timing": {"repeat": {"frequency": 3}}},
        {"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg"}}], "timing": [{"repeat": {"frequency": 3}}]},
        {"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg"}}], "timing": "three times a day"},
        {"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg"}}], "timing": {"repeat": [{"frequency": 3}]}},
        {
            "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 3, "period": 0, "periodUnit": "d"}},
        },
        {
            "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 3, "period": 1e-320, "periodUnit": "h"}},
        },
        {
            "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": ["d"]}},
        },
    ],
)
def test_a_draft_dose_of_an_odd_shape_is_read_as_no_structured_dose(
    app: FastAPI, client: Client, dosage: dict[str, Any]
) -> None:
    body = _quirky_request()
    body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"] = [dosage]
    response = _post(app, client, body)
    assert response.status_code == 200, response.text
    assert_no_empty(response.json())


def test_sandbox_feedback_without_display_is_stored(app: FastAPI, client: Client, hook_store: SqlFeedbackStore) -> None:
    card = _post(app, client, _quirky_request()).json()["cards"][0]
    path = f"/cds-services/{SELECT}/feedback"
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-24T14:31:00.000Z",
                "overrideReason": {
                    "reason": {"code": "risk-benefit-ratio", "system": card["overrideReasons"][0]["system"]}
                },
            }
        ]
    }
    assert call(app, "POST", path, json=feedback, headers=client.headers(path)).json() == {}
    (stored,) = hook_store.list_hook_feedback()
    assert stored.override_reason_code == "risk-benefit-ratio" and stored.override_reason_display is None
    assert (
        stored.rule_id == "BACLOFEN-DOSE-ABOVE-CEILING"
        and stored.rule_version == card["extension"]["org.spasticity-cds.rule"]["version"]
    )


def test_feedback_on_another_service_s_card_is_400(app: FastAPI, client: Client, hook_store: SqlFeedbackStore) -> None:
    card = _post(app, client, _quirky_request()).json()["cards"][0]  # issued by order-select
    path = f"/cds-services/{REVIEW}/feedback"
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-24T14:31:00Z"}
    response = call(app, "POST", path, json={"feedback": [item]}, headers=client.headers(path))
    assert response.status_code == 400
    assert f"/cds-services/{SELECT}/feedback" in response.json()["issue"][0]["diagnostics"]
    assert hook_store.counts().hook_feedback == 0


@pytest.mark.parametrize(
    "name", ["feedback-accepted.json", "feedback-overridden.json", "feedback-overridden-with-reason.json"]
)
def test_spec_feedback_examples_are_accepted_once(
    app: FastAPI, client: Client, hook_store: SqlFeedbackStore, name: str
) -> None:
    path = f"/cds-services/{REVIEW}/feedback"
    body = load_fixture(f"hl7/{name}")
    for _ in range(2):
        response = call(app, "POST", path, json=body, headers=client.headers(path))
        assert response.status_code == 200 and response.json() == {}
    assert hook_store.counts().hook_feedback == len(body["feedback"])
    stored = hook_store.list_hook_feedback()[0]
    assert stored.rule_id is None  # the spec's cards were not issued by us


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"outcome": "ignored"}, "outcome"),
        ({"outcome": "accepted", "acceptedSuggestions": None}, "cds-fb-2"),
        ({"overrideReason": {}}, "cds-fb-3"),
        ({"outcomeTimestamp": "yesterday"}, "RFC 3339"),
        ({"outcomeTimestamp": "2026-11-24T10:00:00"}, "UTC offset"),
        ({"outcomeTimestamp": "9999-12-31T23:59:59-05:00"}, "years 1 to 9999"),
        ({"outcomeTimestamp": "0001-01-01T00:00:00+05:00"}, "years 1 to 9999"),
        ({"outcomeTimestamp": "2026-11-25T06:00Z"}, "RFC 3339"),
        ({"outcomeTimestamp": "2026-W48-3T06:00:00Z"}, "RFC 3339"),
        ({"outcomeTimestamp": "20261125T060000Z"}, "RFC 3339"),
        ({"card": "c" * 129}, "at most 128"),
        ({"card": "c\x00d"}, "NUL"),
        ({"overrideReason": {"reason": {"code": "x" * 256}}}, "at most 255"),
        ({"overrideReason": {"reason": {"code": "x", "system": "http://" + "s" * 2048}}}, "at most 2048"),
        ({"overrideReason": {"userComment": "a\x00b"}}, "NUL"),
    ],
)
def test_invalid_feedback_is_400(app: FastAPI, client: Client, change: dict[str, Any], fragment: str) -> None:
    item = copy.deepcopy(load_fixture("hl7/feedback-overridden.json")["feedback"][0]) | change
    item = {k: v for k, v in item.items() if v is not None}
    path = f"/cds-services/{REVIEW}/feedback"
    response = call(app, "POST", path, json={"feedback": [item]}, headers=client.headers(path))
    assert response.status_code == 400
    assert fragment in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "item",
    [
        {"outcome": "overridden", "acceptedSuggestions": [{"id": "s-1"}]},
        {"outcome": "accepted", "acceptedSuggestions": [{"id": "s-1"}], "overrideReason": {"userComment": "partly"}},
        {"outcome": "overridden", "acceptedSuggestions": [{"id": "s-1"}], "overrideReason": {"userComment": "no"}},
    ],
)
def test_feedback_the_invariants_allow_is_stored_as_sent_with_the_rest_of_its_report(
    app: FastAPI, client: Client, hook_store: SqlFeedbackStore, item: dict[str, Any]
) -> None:
    """cds-fb-1..3 are all the spec asks of an item: nothing forbids an overridden card naming suggestions."""
    plain = {"card": "c-plain", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T14:31:00Z"}
    odd = {"card": "c-odd", "outcomeTimestamp": "2026-11-24T14:32:00Z"} | item
    path = f"/cds-services/{REVIEW}/feedback"
    response = call(app, "POST", path, json={"feedback": [plain, odd]}, headers=client.headers(path))
    assert response.status_code == 200, response.text
    stored = {record.card_uuid: record for record in hook_store.list_hook_feedback()}
    assert set(stored) == {"c-plain", "c-odd"}
    assert stored["c-odd"].outcome.value == item["outcome"] and stored["c-odd"].accepted_suggestions == ("s-1",)
    assert stored["c-odd"].user_comment == item.get("overrideReason", {}).get("userComment")


def test_a_report_of_more_than_100_items_is_400(app: FastAPI, client: Client) -> None:
    item = load_fixture("hl7/feedback-overridden.json")["feedback"][0]
    path = f"/cds-services/{REVIEW}/feedback"
    response = call(app, "POST", path, json={"feedback": [item] * 101}, headers=client.headers(path))
    assert response.status_code == 400
    assert "1 to 100 items" in response.json()["issue"][0]["diagnostics"]


def test_unknown_cards_wait_once_per_report_not_once_per_card(
    app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spasticity_cds.interfaces.web import hooks_routes

    pauses: list[float] = []
    monkeypatch.setattr(hooks_routes, "sleep", pauses.append)  # this module's pause only, not other threads'
    item = load_fixture("hl7/feedback-overridden.json")["feedback"][0]
    items = [item | {"card": f"unknown-{n}"} for n in range(20)]
    path = f"/cds-services/{REVIEW}/feedback"
    assert call(app, "POST", path, json={"feedback": items}, headers=client.headers(path)).status_code == 200
    assert pauses == [hooks_routes.JOIN_RETRY_S]


def test_override_reasons_come_from_the_hl7_code_system(app: FastAPI, client: Client) -> None:
    system = load_fixture("hl7/CodeSystem-non-adherence-reason-codes.json")
    displays = {c["code"]: c["display"] for cat in system["concept"] for c in cat.get("concept", [])}
    card = _post(app, client, _quirky_request()).json()["cards"][0]
    for reason in card["overrideReasons"]:  # the display as written, without the CodeSystem's footnote mark
        assert reason["system"] == system["url"] and displays[reason["code"]].rstrip("*") == reason["display"]
        assert not reason["display"].endswith("*")


def test_card_links_and_source_are_absolute_under_the_public_base(
    settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock, client: Client
) -> None:
    app = create_app(dataclasses.replace(settings, smart_allow_any_iss=True), store=hook_store, clock=hook_clock)
    card = _post(app, client, _quirky_request()).json()["cards"][0]
    smart = next(link for link in card["links"] if link["type"] == "smart")
    assert smart["url"] == f"{BASE}/smart/launch" and card["uuid"] in smart["appContext"]
    absolute = next(link for link in card["links"] if link["type"] == "absolute")
    assert absolute["url"] == f"{BASE}/kb/rules/BACLOFEN-DOSE-ABOVE-CEILING" == card["source"]["url"]


OWN_LAUNCH = f"{BASE}/smart/launch"


@pytest.mark.parametrize(
    ("changes", "launch"),
    [
        ({}, None),  # serve says "SMART launch is off": the launch would answer 400
        ({"smart_launch_url": OWN_LAUNCH}, None),
        ({"smart_clients_file": "clients"}, OWN_LAUNCH),
        ({"fhir_server_allowlist": ("https://fhir.example.org/",)}, OWN_LAUNCH),
        ({"smart_allow_any_iss": True}, OWN_LAUNCH),
        ({"smart_launch_url": "https://launcher.example.org/launch"}, "https://launcher.example.org/launch"),
    ],
)
def test_a_card_links_the_smart_launch_only_when_it_would_be_accepted(
    settings: WebSettings,
    hook_store: SqlFeedbackStore,
    hook_clock: FrozenClock,
    client: Client,
    tmp_path: Path,
    changes: dict[str, Any],
    launch: str | None,
) -> None:
    if "smart_clients_file" in changes:
        clients = tmp_path / "smart-clients.toml"
        clients.write_text('[[clients]]\niss = "https://fhir.example.org/r4"\nclient_id = "c"\n', "utf-8")
        changes = {"smart_clients_file": clients}
    app = create_app(dataclasses.replace(settings, **changes), store=hook_store, clock=hook_clock)
    (card,) = _post(app, client, _quirky_request()).json()["cards"]
    assert [link["url"] for link in card["links"] if link["type"] == "smart"] == ([launch] if launch else [])
    assert [link["type"] for link in card["links"] if link["type"] == "absolute"] == ["absolute"]


def test_spec_prefetch_templates_render_with_spec_tokens() -> None:
    from spasticity_cds.cds_hooks.prefetch import render

    templates = load_fixture("hl7/prefetch-templates.json")["prefetch"]
    context = {"patientId": "1288992", "userId": "PractitionerRole/123"}
    rendered = {key: render(query, context) for key, query in templates.items()}
    assert rendered["patient"] == "Patient/1288992"
    assert rendered["user"] == "PractitionerRole?_id=123"
    assert rendered["hemoglobin-a1c"] is not None and rendered["hemoglobin-a1c"].startswith(
        "Observation?patient=1288992&"
    )


def test_spec_prefetch_data_is_sorted_by_value_kind() -> None:
    from spasticity_cds.cds_hooks.prefetch import Template, plan_prefetch

    data = load_fixture("hl7/prefetch-data.json")["prefetch"]
    templates = [Template(key, "Patient/{{context.patientId}}", True, key) for key in data]
    plan = plan_prefetch(templates, data, {"patientId": "1288992"})
    assert [r["resourceType"] for r in plan.resources] == ["Patient", "Bundle"]
    assert set(plan.failed) == {"user"}  # the spec's "user": "123" is not a FHIR resource


def test_spec_fhir_authorization_is_read_and_never_shown() -> None:
    import json

    from spasticity_cds.cds_hooks.models import decode_hook_request

    body = hook_request("patient-view", fhirServer="https://fhir.example.org") | load_fixture(
        "hl7/fhir-authorization.json"
    )
    request = decode_hook_request(json.dumps(body).encode())
    assert request.fhirAuthorization is not None
    assert request.fhirAuthorization.access_token == "some-opaque-fhir-access-token"
    assert "some-opaque" not in repr(request)
