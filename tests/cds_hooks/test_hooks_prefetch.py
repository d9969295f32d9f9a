"""Prefetch semantics: templates and tokens, absent/null/OperationOutcome/paginated values, FHIR fallback."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import pytest
from fastapi import FastAPI

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.cds_hooks.fhir_client import FhirFetcher, url_within
from spasticity_cds.cds_hooks.prefetch import plan_prefetch, render, templates_for
from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import SqlFeedbackStore

from .fhir_server import Behaviour, fhir_server
from .helpers import (
    PATIENT_ID,
    REVIEW,
    SIGN,
    Client,
    FrozenClock,
    als,
    baclofen_order,
    call,
    hook_request,
    observations,
    patient,
    post_hook,
    prefetch,
    searchset,
)

ALLOWED_SEARCH = re.compile(
    r"^(patient=\{\{context\.patientId\}\}|code=[^&=]+|category=[a-z-]+(,[a-z-]+)*|_sort=-date|_count=\d+)$"
)
TOKEN = "fhir-access-token-not-for-logs"


def test_templates_stay_within_the_query_restrictions() -> None:
    for order_checks in (False, True):
        for template in templates_for(load_knowledge_base(), order_checks=order_checks):
            kind, _, query = template.query.partition("?")
            if not query:
                assert re.fullmatch(r"[A-Z][A-Za-z]+/\{\{context\.patientId\}\}", template.query)
                continue
            assert re.fullmatch(r"[A-Z][A-Za-z]+", kind)
            assert all(ALLOWED_SEARCH.match(part) for part in query.split("&")), template.query


def test_templates_follow_the_facts_the_rules_read() -> None:
    keys = {t.key: t for t in templates_for(load_knowledge_base(), order_checks=True)}
    assert {"patient", "conditions", "medications", "observations"} <= set(keys)
    assert "http://loinc.org|98979-8" in keys["observations"].query  # eGFR, for the kidney dose rules
    assert keys["patient"].required and keys["medications"].required and not keys["observations"].required


def test_tokens_render_from_context_and_user() -> None:
    context = {"patientId": "p1", "userId": "Practitioner/u9"}
    assert render("Patient/{{context.patientId}}", context) == "Patient/p1"
    assert render("Practitioner/{{userPractitionerId}}", context) == "Practitioner/u9"
    assert render("Encounter/{{context.encounterId}}", context) is None
    assert render("PractitionerRole/{{userPractitionerRoleId}}", context) is None


def test_plan_sorts_absent_null_outcome_and_paged_values() -> None:
    templates = templates_for(load_knowledge_base(), order_checks=False)
    paged = searchset([als()]) | {"link": [{"relation": "next", "url": "http://fhir/Condition?page=2"}]}
    given = {
        "patient": patient(),
        "conditions": paged,
        "medications": None,
        "observations": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]},
    }
    plan = plan_prefetch(templates, given, {"patientId": PATIENT_ID})
    assert plan.absent_data == ["medications"]
    assert plan.next_pages == {"conditions": "http://fhir/Condition?page=2"}
    assert set(plan.to_fetch) == {"statements", "observations", "recentObservations", "procedures", "devices"}
    assert "observations" in plan.failed
    assert plan.to_fetch["statements"] == f"MedicationStatement?patient={PATIENT_ID}"


def _record(meds: list[dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    return {
        "Patient": [patient()],
        "Condition": [als()],
        "MedicationRequest": meds or [],
        "Observation": observations(),
    }


def _app(base_app_settings: WebSettings, store: SqlFeedbackStore, clock: FrozenClock, **changes: Any) -> FastAPI:
    return create_app(dataclasses.replace(base_app_settings, **changes), store=store, clock=clock)


def _fallback_request(server: str, **extra: Any) -> dict[str, Any]:
    body = hook_request(
        "patient-view",
        fhirServer=server,
        fhirAuthorization={
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "cds",
        },
    )
    body.update(extra)
    return body


def test_absent_keys_are_fetched_with_the_bearer_token(
    app: FastAPI, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    behaviour = Behaviour(resources=_record([baclofen_order(status="active")]))
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 200
    assert any("BACLOFEN-DOSE-ABOVE-CEILING" in card["source"]["url"] for card in response.json()["cards"])
    paths = [path for path, _ in behaviour.requests]
    assert f"/fhir/Patient/{PATIENT_ID}" in paths and any(p.startswith("/fhir/Observation?patient=") for p in paths)
    assert {auth for _, auth in behaviour.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text


def test_searchset_pages_are_followed(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record([baclofen_order(status="active")]), page_size=3)
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 200
    assert any("_offset=3" in path for path, _ in behaviour.requests)
    assert any("BACLOFEN-DOSE-ABOVE-CEILING" in card["source"]["url"] for card in response.json()["cards"])


def test_prefetched_page_with_next_link_is_completed_from_the_server(app: FastAPI, client: Client) -> None:
    record = _record()
    behaviour = Behaviour(resources=record, page_size=5)
    with fhir_server(behaviour) as server:
        data = prefetch()
        data["observations"] = searchset(record["Observation"][:5]) | {
            "link": [{"relation": "next", "url": f"{server}/Observation?_offset=5"}]
        }
        response = post_hook(app, client, REVIEW, _fallback_request(server, prefetch=data))
    assert response.status_code == 200
    assert [path for path, _ in behaviour.requests] == ["/fhir/Observation?_offset=5", "/fhir/Observation?_offset=10"]


def test_null_means_no_data_and_is_not_queried_again(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record())
    data = prefetch() | {"medications": None, "procedures": None}
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server, prefetch=data))
    assert response.status_code == 200
    assert behaviour.requests == []


def test_operation_outcome_in_place_of_data_is_an_error_then_fetched(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record([baclofen_order(status="active")]))
    data = prefetch() | {
        "medications": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    }
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server, prefetch=data))
    assert response.status_code == 200
    assert [path for path, _ in behaviour.requests] == [f"/fhir/MedicationRequest?patient={PATIENT_ID}"]
    assert any("BACLOFEN" in card["source"]["url"] for card in response.json()["cards"])


def test_operation_outcome_without_a_server_is_412(app: FastAPI, client: Client) -> None:
    data = prefetch() | {
        "medications": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    }
    response = post_hook(app, client, REVIEW, hook_request("patient-view", prefetch_data=data))
    assert response.status_code == 412
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and "medications" in body["issue"][0]["diagnostics"]
    assert (
        "reported an error (OperationOutcome) for this prefetch, and the request names no fhirServer"
        in (body["issue"][0]["diagnostics"])
    )
    assert "not prefetched" not in body["issue"][0]["diagnostics"]


def test_a_prefetched_bundle_whose_entry_is_not_an_array_is_never_read_as_empty(app: FastAPI, client: Client) -> None:
    data = prefetch()
    data["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": data["conditions"]["entry"][0]}
    response = post_hook(app, client, REVIEW, hook_request("patient-view", prefetch_data=data))
    assert response.status_code == 412
    assert "entry is not an array" in response.json()["issue"][0]["diagnostics"]


def test_a_fhir_server_url_that_cannot_be_used_is_a_plain_412(app: FastAPI, client: Client) -> None:
    response = post_hook(app, client, REVIEW, _fallback_request("http://127.0.0.1:99999/fhir"))
    assert response.status_code == 412
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert diagnostics.endswith("the query failed")  # no library class names (ExceptionGroup) in the answer


def test_a_fhir_server_url_with_credentials_is_never_called_and_said_so(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record())
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server.replace("http://", "http://u:pw@")))
    assert response.status_code == 412 and behaviour.requests == []
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "the fhirServer URL cannot be used (credentials in it" in diagnostics and "next link" not in diagnostics


def test_a_next_link_relative_to_its_page_is_followed(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record([baclofen_order(status="active")]), page_size=3, relative_next=True)
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 200
    assert any("_offset=3" in path for path, _ in behaviour.requests)


def test_required_data_unobtainable_is_412(app: FastAPI, client: Client) -> None:
    response = post_hook(app, client, REVIEW, hook_request("patient-view"))
    assert response.status_code == 412
    assert response.json()["issue"][0]["code"] == "processing"


def test_failing_server_is_412(app: FastAPI, client: Client) -> None:
    with fhir_server(Behaviour(resources=_record(), fail_status=500)) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 412
    assert "HTTP 500" in response.json()["issue"][0]["diagnostics"]


def test_an_answer_over_the_size_limit_is_refused_while_it_arrives(
    app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spasticity_cds.cds_hooks import fhir_client

    monkeypatch.setattr(fhir_client, "MAX_RESPONSE_BYTES", 200)
    with fhir_server(Behaviour(resources=_record())) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 412
    assert "more than 200 bytes" in response.json()["issue"][0]["diagnostics"]


def test_slow_server_is_cut_off_by_the_time_budget(
    settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock, client: Client
) -> None:
    app = _app(settings, hook_store, hook_clock, fhir_timeout_s=0.3)
    with fhir_server(Behaviour(resources=_record(), delay_s=1.5)) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 412
    assert "0.3 s" in response.json()["issue"][0]["diagnostics"]


def test_missing_optional_data_degrades_and_is_named_in_the_card(app: FastAPI, client: Client) -> None:
    data = prefetch(meds=[baclofen_order(status="active")])
    del data["procedures"], data["devices"]
    response = post_hook(app, client, REVIEW, hook_request("patient-view", prefetch_data=data))
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert cards and all("procedures: not obtained" in card["detail"] for card in cards)


def test_fhir_server_outside_the_allow_list_is_never_called(
    settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock, client: Client
) -> None:
    app = _app(settings, hook_store, hook_clock, fhir_server_allowlist=("https://fhir.example.org/",))
    behaviour = Behaviour(resources=_record())
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 412 and behaviour.requests == []


def test_next_link_to_another_host_is_not_followed(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record())
    with fhir_server(behaviour) as server:
        data = prefetch()
        data["medications"] = searchset([]) | {"link": [{"relation": "next", "url": "http://169.254.169.254/latest"}]}
        response = post_hook(app, client, REVIEW, _fallback_request(server, prefetch=data))
    assert response.status_code == 412
    assert "outside the FHIR server" in response.json()["issue"][0]["diagnostics"]


def test_order_hook_for_an_unrelated_drug_needs_no_data(app: FastAPI, client: Client) -> None:
    amoxicillin = baclofen_order() | {
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "617993"}],
            "text": "Amoxicillin",
        }
    }
    response = call(
        app,
        "POST",
        f"/cds-services/{SIGN}",
        json=hook_request("order-sign", drafts=[amoxicillin]),
        headers=client.headers(f"/cds-services/{SIGN}"),
    )
    assert response.status_code == 200 and response.json() == {"cards": []}


def _text_only_egfr(value: float, category: str | None = "laboratory") -> dict[str, Any]:
    """An eGFR result that carries only text, as free-text lab interfaces send it: no code search can find it."""
    coded = next(o for o in observations() if o["id"] == "egfr")
    text_only = {
        **coded,
        "id": "egfr-text",
        "code": {"text": "eGFR"},
        "valueQuantity": {"value": value, "unit": "mL/min"},
    }
    if category is None:
        del text_only["category"]
    return text_only


def _record_with_text_only_egfr(category: str | None = "laboratory") -> dict[str, list[dict[str, Any]]]:
    record = _record([baclofen_order(status="active", value=5)])
    record["Observation"] = [o for o in record["Observation"] if o["id"] != "egfr"] + [_text_only_egfr(20, category)]
    return record


def _review_rules(app: FastAPI, client: Client, body: dict[str, Any]) -> list[str]:
    path = f"/cds-services/{REVIEW}"
    response = call(app, "POST", path, json=body, headers=client.headers(path))
    assert response.status_code == 200, response.text
    return [card["source"]["topic"]["code"] for card in response.json()["cards"]]


def test_discovery_offers_a_bounded_category_search_beside_the_code_search() -> None:
    keys = {t.key: t for t in templates_for(load_knowledge_base(), order_checks=False)}
    recent = keys["recentObservations"]
    assert recent.query == (
        "Observation?patient={{context.patientId}}&category=laboratory,vital-signs,survey,exam,therapy,procedure"
        "&_sort=-date&_count=100"
    )
    assert not recent.required and not recent.follow_next and keys["observations"].follow_next


def test_fallback_finds_a_text_only_observation_through_its_category(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record_with_text_only_egfr())
    with fhir_server(behaviour) as server:
        rules = _review_rules(app, client, _fallback_request(server))
    assert "BACLOFEN-KIDNEY-FAILURE-AVOID" in rules  # eGFR 20, read from the text-only result
    searches = [path for path, _ in behaviour.requests if path.startswith("/fhir/Observation?")]
    assert len(searches) == 2 and any("category=laboratory" in path for path in searches)


def test_a_text_only_observation_without_category_stays_out_of_reach(app: FastAPI, client: Client) -> None:
    """The control: the code search alone never returns it, so eGFR is missing (the documented limit)."""
    with fhir_server(Behaviour(resources=_record_with_text_only_egfr(category=None))) as server:
        rules = _review_rules(app, client, _fallback_request(server))
    assert "BACLOFEN-KIDNEY-FAILURE-AVOID" not in rules and "BACLOFEN-RENAL-BAND" in rules  # its eGFR data gap


def test_prefetched_text_only_observation_is_used(app: FastAPI, client: Client) -> None:
    data = prefetch(meds=[baclofen_order(status="active", value=5)])
    data["observations"] = searchset([o for o in observations() if o["id"] != "egfr"])
    data["recentObservations"] = searchset([_text_only_egfr(20)])
    assert "BACLOFEN-KIDNEY-FAILURE-AVOID" in _review_rules(
        app, client, hook_request("patient-view", prefetch_data=data)
    )


def test_the_category_search_reads_one_page_only(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record_with_text_only_egfr(), page_size=4)
    with fhir_server(behaviour) as server:
        data = prefetch(meds=[baclofen_order(status="active", value=5)])
        del data["observations"], data["recentObservations"]
        _review_rules(app, client, _fallback_request(server, prefetch=data))
        data["recentObservations"] = searchset(observations()[:4]) | {
            "link": [{"relation": "next", "url": f"{server}/Observation?_offset=4"}]
        }
        _review_rules(app, client, _fallback_request(server, prefetch=data))
    category_pages = [p for p, _ in behaviour.requests if "category=" in p]
    code_pages = [p for p, _ in behaviour.requests if "code=" in p]
    assert len(category_pages) == 1 and "_offset" not in category_pages[0]
    assert len(code_pages) > 2 and any("_offset=4" in p for p in code_pages)  # the code search is followed
    assert not any(p == "/fhir/Observation?_offset=4" for p, _ in behaviour.requests)


def test_a_bounded_search_reads_its_first_page_whatever_the_page_limit() -> None:
    observations = [{"resourceType": "Observation", "id": f"o{n}", "status": "final"} for n in range(3)]
    behaviour = Behaviour(resources={"Observation": observations}, page_size=1)
    with fhir_server(behaviour) as server:
        fetcher = FhirFetcher(budget_s=5.0, max_pages=1)
        queries = {"recent": "Observation?patient=p", "all": "Observation?patient=p"}
        outcome = asyncio.run(fetcher.fetch(server, None, queries, {}, frozenset({"recent"})))
    assert [r["id"] for r in outcome.resources["recent"]] == ["o0"]
    assert "more than 1 pages" in outcome.failed["all"]


def test_an_answer_with_a_byte_order_mark_is_read() -> None:
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'\xef\xbb\xbf{"resourceType": "Patient", "id": "p"}')

    fetcher = FhirFetcher(budget_s=5.0, transport=httpx.MockTransport(answer))
    outcome = asyncio.run(fetcher.fetch("https://fhir.example.org/r4", None, {"patient": "Patient/p"}, {}))
    assert outcome.failed == {} and outcome.resources["patient"][0]["id"] == "p"


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://fhir.example.org/r4/Patient/1", True),
        ("https://fhir.example.org/r4", True),
        ("https://FHIR.example.org:443/r4/Observation?patient=1", True),
        ("https://fhir.example.org/r4/../admin/x", False),
        ("https://fhir.example.org/r4/%2e%2e/admin/x", False),
        ("https://fhir.example.org/r42/Patient/1", False),
        ("https://fhir.example.org.evil.example/r4/Patient/1", False),
        ("http://fhir.example.org/r4/Patient/1", False),
        ("https://fhir.example.org:8443/r4/Patient/1", False),
        ("not a url", False),
        ("https://fhir.example.org/r4/..;/admin", False),
        ("https://fhir.example.org/r4/%2e%2e%3b/admin", False),
        ("https://fhir.example.org/r4%2Fadmin", False),
        ("https://fhir.example.org/r4/..%5Cadmin", False),
        ("https://user@fhir.example.org/r4/Patient/1", False),
        ("https://fhir.example.org/r4/Observation?code=a%2Fb", True),
        ("https://xn--a.invalid/r4/Patient/1", False),  # parses, but reading its host raises idna's error
        ("https://[::1/r4/Patient/1", False),
    ],
)
def test_a_url_is_within_a_base_only_under_its_path_on_the_same_origin(url: str, inside: bool) -> None:
    assert url_within(url, "https://fhir.example.org/r4/") is inside


def test_another_patient_in_a_searchset_is_left_out_not_a_412(app: FastAPI, client: Client) -> None:
    data = prefetch(meds=[baclofen_order(status="active")])
    other = {"resourceType": "Patient", "id": "linked-record", "gender": "male", "birthDate": "1950-01-01"}
    data["conditions"]["entry"].append({"resource": other})
    response = post_hook(app, client, REVIEW, hook_request("patient-view", prefetch_data=data))
    assert response.status_code == 200, response.text
    assert any("BACLOFEN" in card["source"]["url"] for card in response.json()["cards"])


def test_a_patient_other_than_context_patient_id_is_a_412_that_names_the_id(app: FastAPI, client: Client) -> None:
    data = prefetch()
    data["patient"] = data["patient"] | {"id": "someone-else"}
    response = post_hook(app, client, REVIEW, hook_request("patient-view", prefetch_data=data))
    assert response.status_code == 412
    assert f"no Patient resource with id {PATIENT_ID!r}" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("token", ["t\u00f8ken", "key-\U0001f511", "two words", "line\r\nX-Injected: 1", ""])
def test_an_access_token_that_is_no_bearer_token_is_400_and_never_quoted(
    app: FastAPI, client: Client, token: str
) -> None:
    body = _fallback_request("https://fhir.example.org/r4")
    body["fhirAuthorization"]["access_token"] = token
    response = post_hook(app, client, REVIEW, body)
    assert response.status_code == 400
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "access_token must be a bearer token (RFC 6750 b64token" in diagnostics
    assert not token or token not in response.text


@pytest.mark.parametrize("server", ["http://xn--a.invalid/fhir", "https://[::1/fhir", "https://\u2603.example/fhir"])
def test_a_fhir_server_the_http_client_cannot_read_is_400(app: FastAPI, client: Client, server: str) -> None:
    response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 400
    assert "fhirServer must be an http(s) URL with a valid host name" in response.json()["issue"][0]["diagnostics"]


def test_a_next_link_to_a_host_that_is_no_valid_name_is_not_followed(app: FastAPI, client: Client) -> None:
    data = prefetch()
    data["medications"] = searchset([]) | {"link": [{"relation": "next", "url": "http://xn--a.invalid/fhir/M?p=2"}]}
    behaviour = Behaviour(resources=_record())
    with fhir_server(behaviour) as server:
        response = post_hook(app, client, REVIEW, _fallback_request(server, prefetch=data))
    assert response.status_code == 412 and behaviour.requests == []
    assert "a next link points outside the FHIR server" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("server", ["http://fhir.example.org/r4", "http://10.0.0.7:8080/fhir"])
def test_a_plain_http_fhir_server_elsewhere_is_never_called_unless_listed(
    app: FastAPI,
    client: Client,
    settings: WebSettings,
    hook_store: SqlFeedbackStore,
    hook_clock: FrozenClock,
    server: str,
) -> None:
    refused = post_hook(app, client, REVIEW, _fallback_request(server))
    assert refused.status_code == 412
    assert "plain http" in refused.json()["issue"][0]["diagnostics"]

    listed = _app(settings, hook_store, hook_clock, fhir_server_allowlist=(server,), fhir_timeout_s=0.2)
    tried = post_hook(listed, client, REVIEW, _fallback_request(server))
    assert tried.status_code == 412  # the operator chose it: it was tried (nothing answers here)
    assert "plain http" not in tried.json()["issue"][0]["diagnostics"]


def test_a_plain_http_fhir_server_on_this_machine_is_used(app: FastAPI, client: Client) -> None:
    behaviour = Behaviour(resources=_record())
    with fhir_server(behaviour) as server:
        assert server.startswith("http://127.0.0.1:")
        response = post_hook(app, client, REVIEW, _fallback_request(server))
    assert response.status_code == 200 and behaviour.requests
