"""Knowledge-base browser, JSON API and the feedback report."""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds import api
from spasticity_cds.store import (
    FeedbackOutcome,
    HookFeedback,
    IssuedCard,
    PageContext,
    PageFeedback,
    hash_patient_ref,
)


@pytest.fixture
def client(tmp_path: Path) -> support.PageClient:
    return support.PageClient(support.make_app(tmp_path))


def test_every_rule_has_a_page_at_the_url_cards_link_to(client: support.PageClient) -> None:
    kb = client.app.state.cds.engine.kb
    index = client.get("/kb").text
    for rule in kb.rules.values():
        assert f'href="/kb/rules/{rule.id}"' in index
        page = client.get(f"/kb/rules/{rule.id}")
        assert page.status_code == 200
        assert f"Rule {rule.id}" in page.text
        assert "Change log" in page.text and f"v{rule.version}:" in page.text
        for ref in rule.citations:
            assert f'href="/kb/citations#{ref.id}"' in page.text


def test_unknown_rule_and_drug_are_404_pages(client: support.PageClient) -> None:
    for path in ("/kb/rules/NOPE", "/kb/drugs/nope", "/kb/rules/%3Cscript%3E"):
        response = client.get(path)
        assert response.status_code == 404
        assert "<script>" not in response.text


def test_drug_pages_citations_and_versions(client: support.PageClient) -> None:
    kb = client.app.state.cds.engine.kb
    for monograph in kb.monographs.values():
        assert client.get(f"/kb/drugs/{monograph.id}").status_code == 200
    citations = client.get("/kb/citations").text
    for citation in kb.citations.values():
        assert f'id="{citation.id}"' in citations
    assert client.get("/kb/drugs").headers["location"] == "/kb#drugs"
    versions = client.get("/kb/versions").text
    for release in kb.manifest.releases:
        assert release.version in versions
    assert "Rule change logs" in versions


def test_api_kb_lists_identity_rules_drugs_and_citations(client: support.PageClient) -> None:
    body = client.get("/api/kb", headers={"Host": "attacker.example"}).json()
    kb = client.app.state.cds.engine.kb
    assert body["version"] == kb.version and body["digest"] == kb.digest
    assert {r["id"] for r in body["rules"]} == set(kb.rules)
    base = client.app.state.cds.settings.base_url  # the configured public URL, never the Host header
    assert body["rules"][0]["url"].startswith(f"{base}/kb/rules/")
    assert all(item["url"].startswith(base) for item in body["rules"] + body["drugs"])
    assert {d["id"] for d in body["drugs"]} == set(kb.monographs)
    assert len(body["evidence_gaps"]) == len(kb.manifest.evidence_gaps)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("/api/evaluate", json.dumps(support.trend_bundle()), "application/fhir+json", 200),
        ("/api/evaluate", "{", "application/fhir+json", 400),
        ("/api/evaluate", "x", "text/plain", 415),
        ("/nowhere", "", "text/plain", 404),
    ],
)
def test_json_answers_are_not_cached_or_sniffed(
    client: support.PageClient, path: str, body: str, content_type: str, status: int
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_api_evaluate_matches_the_library(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    response = client.post(
        "/api/evaluate", content=json.dumps(bundle), headers={"Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 200
    assert response.json() == json.loads(api.to_json(api.evaluate(bundle, now=support.FROZEN_NOW)))


def test_api_evaluate_ndjson_and_now(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    ndjson = "\n".join(json.dumps(e["resource"]) for e in bundle["entry"])
    later = support.FROZEN_NOW + timedelta(days=400)
    response = client.post(
        "/api/evaluate",
        params={"now": later.isoformat()},
        content=ndjson,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    assert response.json()["evaluated_at"] == later.isoformat()


@pytest.mark.parametrize(
    ("body", "content_type", "params", "status"),
    [
        (b"{broken", "application/json", {}, 400),
        (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', "application/json", {}, 400),
        (b"{}", "text/plain", {}, 415),
        (b"{}", "application/json", {"now": "2026-11-24T09:30:00"}, 400),
        (b"{}", "application/json", {"now": "yesterday"}, 400),
        (b"{}", "application/json", {"now": "9999-12-31T23:59:59+00:00"}, 400),
    ],
)
def test_api_evaluate_errors_are_operation_outcomes(
    client: support.PageClient, body: bytes, content_type: str, params: dict[str, str], status: int
) -> None:
    response = client.post("/api/evaluate", content=body, params=params, headers={"Content-Type": content_type})
    assert response.status_code == status
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Traceback" not in response.text


def test_api_evaluate_body_limit(tmp_path: Path) -> None:
    client = support.PageClient(support.make_app(tmp_path, max_body_bytes=1000))
    response = client.post("/api/evaluate", content=b" " * 5000, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_feedback_report_shows_hook_and_page_rates_per_rule(client: support.PageClient) -> None:
    store = client.app.state.cds.store
    now = support.FROZEN_NOW
    cards = [
        IssuedCard(
            str(uuid.uuid4()),
            "spasticity-patient-view",
            "hook-1",
            "TIZ-LIVER-3X",
            1,
            "1.0.0",
            hash_patient_ref("Patient/1"),
            now,
        )
        for _ in range(4)
    ]
    store.record_issued_cards(cards)
    outcomes = [
        FeedbackOutcome.ACCEPTED,
        FeedbackOutcome.ACCEPTED,
        FeedbackOutcome.ACCEPTED,
        FeedbackOutcome.OVERRIDDEN,
    ]
    store.record_hook_feedback(
        HookFeedback(
            "spasticity-patient-view",
            card.card_uuid,
            outcome,
            now,
            now,
            rule_id="TIZ-LIVER-3X",
            rule_version=1,
            override_reason_code="patient-refuses" if outcome is FeedbackOutcome.OVERRIDDEN else None,
        )
        for card, outcome in zip(cards, outcomes, strict=True)
    )
    store.record_page_feedback(
        PageFeedback(
            uuid.uuid4(),
            PageContext.FINDING,
            now,
            useful=False,
            rule_id="TIZ-LIVER-3X",
            rule_version=1,
            override_reason_code="risk-benefit-ratio",
            comment="tolerated <it> for years",
        )
    )
    store.record_page_feedback(PageFeedback(uuid.uuid4(), PageContext.ANSWER_PAGE, now, answered=True))
    page = client.get("/reports/feedback", auth=support.REPORT_AUTH).text
    row = page.split('href="/kb/rules/TIZ-LIVER-3X"')[1].split("</tr>")[0]
    cells = [c.split("</td>")[0] for c in re.split(r"<td[^>]*>", row)[1:]]  # a cell's attributes: role, data-label
    assert cells[:7] == ["1", "4", "3", "0", "1", "75%", "25%"]  # version, issued, accepted, not ours, overridden
    assert cells[7].strip() == "0 / 1" and cells[9].strip() == "1"
    assert cells[10].strip() == "patient-refuses (1)"
    assert "1 yes, 0 no" in page
    comments = page.split('id="comments"')[1]
    assert "tolerated &lt;it&gt; for years" in comments and "reason: risk-benefit-ratio" in comments


def test_the_code_page_lists_every_concept_s_codes_with_status_and_source(client: support.PageClient) -> None:
    page = client.get("/kb/codes")
    assert page.status_code == 200
    text = page.text
    engine = client.app.state.cds.engine
    for concept in engine.kb.valuesets.concepts:
        assert f'id="concept-{concept.id}"' in text
    assert "<code>3105</code>" in text and "<code>3228</code>" not in text
    assert '<a href="/kb/citations#rxnav-ingredient-names">' in text
    assert '<span class="ev ev-UNCONFIRMED">UNCONFIRMED</span>' in text  # ALSFRS-R total, SNIP, MIP
    assert 'href="/kb/codes"' in client.get("/kb").text


def test_kb_pages_fill_placeholders_and_link_only_existing_drugs(client: support.PageClient) -> None:
    drug = client.get("/kb/drugs/baclofen").text
    assert "{med.baclofen.daily_dose}" not in drug and "[" in drug
    rule = client.get("/kb/rules/LADDER-NONDRUG-FIRST").text
    assert 'href="/kb/drugs/non-drug"' not in rule
    assert "When an out-of-date value counts" not in rule


def test_a_rule_page_shows_what_it_says_when_an_out_of_date_value_counts(client: support.PageClient) -> None:
    page = client.get("/kb/rules/BACLOFEN-KIDNEY-FAILURE-AVOID").text
    assert "When an out-of-date value counts" in page and "is out of date but showed" in page


def test_pages_may_be_framed_only_by_this_app_and_the_configured_ehrs(tmp_path: Path) -> None:
    page = support.PageClient(support.make_app(tmp_path / "a")).get("/kb")
    assert page.headers["content-security-policy"].endswith("frame-ancestors 'self'")
    app = support.make_app(tmp_path / "b", frame_ancestors=("https://ehr.example.org",))
    framed = support.PageClient(app).get("/kb")
    assert framed.headers["content-security-policy"].endswith("frame-ancestors 'self' https://ehr.example.org")


@pytest.mark.parametrize("path", ["/", "/patients", "/kb", "/reports/feedback", "/patients/demo/ada"])
def test_pages_answer_no_other_origin(client: support.PageClient, path: str) -> None:
    response = client.get(path, headers={"Origin": "https://evil.example"}, auth=support.REPORT_AUTH)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/api/kb", "/cds-services"])
def test_the_api_and_the_hook_service_answer_other_origins(client: support.PageClient, path: str) -> None:
    response = client.get(path, headers={"Origin": "https://ehr.example"})
    assert response.headers["access-control-allow-origin"] == "*"


def test_the_feedback_report_is_off_without_a_report_token(tmp_path: Path) -> None:
    client = support.PageClient(support.make_app(tmp_path, report_token=None))
    response = client.get("/reports/feedback", auth=support.REPORT_AUTH)
    assert response.status_code == 403 and "report_token" in response.text


@pytest.mark.parametrize("auth", [None, ("reviewer", "wrong-token-of-length"), (support.REPORT_TOKEN, "")])
def test_the_feedback_report_needs_the_report_token(client: support.PageClient, auth: tuple[str, str] | None) -> None:
    store = client.app.state.cds.store
    store.record_page_feedback(
        PageFeedback(uuid.uuid4(), PageContext.ANSWER_PAGE, support.frozen_clock(), comment="Mrs Example, MRN 123")
    )
    response = client.get("/reports/feedback", auth=auth)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic ")
    assert "MRN 123" not in response.text
    assert "MRN 123" in client.get("/reports/feedback", auth=support.REPORT_AUTH).text


def test_an_unknown_address_is_a_page_for_browsers_and_an_outcome_for_api_clients(
    client: support.PageClient,
) -> None:
    page = client.get("/no/such/page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text and page.headers["x-content-type-options"] == "nosniff"
    for path, accept in (("/no/such/page", "application/json"), ("/api/nothing", "text/html")):
        response = client.get(path, headers={"Accept": accept})
        assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"


def test_the_upload_limit_reads_as_a_round_number(client: support.PageClient) -> None:
    assert "up to 4.9 MB</label>" in client.get("/patients").text
    token = client.csrf("/patients")
    big = b"{" + b" " * 5_200_000 + b"}"
    response = client.post("/patients/upload", data={"csrf_token": token}, files={"bundle": ("b.json", big)})
    assert response.status_code == 413 and "The file is larger than the limit of 4.9 MB." in response.text


def test_a_file_that_is_not_utf8_gets_a_plain_message(client: support.PageClient) -> None:
    token = client.csrf("/patients")
    latin1 = '{"resourceType": "Patient", "name": [{"text": "Zoë"}]}'.encode("latin-1")
    response = client.post("/patients/upload", data={"csrf_token": token}, files={"bundle": ("p.json", latin1)})
    assert response.status_code == 400 and "not valid UTF-8" in response.text and "surrogates" not in response.text


def test_the_plan_page_is_titled_with_the_patient_and_hides_script_only_buttons(client: support.PageClient) -> None:
    page = client.get("/patients/demo/ada").text
    assert "<title>Plan for Ada Example - spasticity-cds</title>" in page
    assert '<p class="noprint js-only" hidden><button type="button" class="js-print">' in page
