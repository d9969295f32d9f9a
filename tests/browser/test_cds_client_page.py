"""A minimal browser CDS client (static page, WebCrypto ES384 JWT, fetch) on another origin calls our service."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import shot
from cds_client_support import PATIENT_ID, Stack, kidney_patient, running_stack

pytestmark = pytest.mark.browser
CLIENT_FILES = Path(__file__).resolve().parent / "cds_client"
ISS = "https://browser-client.example.org"
KID = "browser-es384"
SERVICE = "als-spasticity-order-sign"


def _private_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    return jwk


@pytest.fixture(scope="module")
def client_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, client_key: ec.EllipticCurvePrivateKey) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("cds-client")
    public = {k: v for k, v in _private_jwk(client_key).items() if k != "d"}
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": KID, "alg": "ES384"}]}), "utf-8")
    issuers = folder / "issuers.toml"
    issuers.write_text(f'[[issuer]]\niss = "{ISS}"\njwks_file = "jwks.json"\n', "utf-8")
    with running_stack(folder, issuers, CLIENT_FILES, kidney_patient(egfr=20.0)) as running:
        yield running


def _config(stack: Stack, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """What the page needs: our base URL, its signing key and an order-sign call that leaves fetching to us."""
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-baclofen",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1292"}],
            "text": "Baclofen",
        },
    }
    request = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": stack.fhir,
        "context": {
            "userId": "Practitioner/dr-1",
            "patientId": PATIENT_ID,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
        },
    }
    return {
        "base": stack.cds,
        "iss": ISS,
        "kid": KID,
        "privateJwk": _private_jwk(key),
        "serviceId": SERVICE,
        "request": request,
    }


def test_browser_client_gets_cards_through_cors_and_a_signed_jwt(
    page: Any, stack: Stack, client_key: ec.EllipticCurvePrivateKey
) -> None:
    page.goto(f"{stack.client}/index.html")
    outcome = page.evaluate("cfg => window.cdsClient.run(cfg)", _config(stack, client_key))
    assert outcome["discovery"] == 200 and outcome["hook"] == 200 and outcome["cards"] >= 1
    assert page.locator("#services li").all_inner_texts() == [
        "als-spasticity-review (patient-view)",
        "als-spasticity-order-select (order-select)",
        "als-spasticity-order-sign (order-sign)",
    ]
    card = page.locator("article.card.critical").filter(has_text="avoid oral baclofen")
    assert card.count() == 1
    remove = card.get_by_role("button", name="Remove the Baclofen order")
    assert remove.get_attribute("data-actions") == "delete MedicationRequest/draft-baclofen"
    shot(page, "cds-client-page")
    remove.click()
    page.get_by_text("feedback 200").wait_for()
    (stored,) = stack.cds_app.state.cds.store.list_hook_feedback()
    assert stored.rule_id == "BACLOFEN-KIDNEY-FAILURE-AVOID"
    origin = stack.client
    for path in ("/cds-services", f"/cds-services/{SERVICE}", f"/cds-services/{SERVICE}/feedback"):
        assert ("OPTIONS", path, origin) in stack.cds_seen, f"no preflight for {path}"  # Authorization needs one
    assert any(method == "GET" and path.startswith("/Observation") for method, path in _fhir_reads(stack))


def _fhir_reads(stack: Stack) -> list[tuple[str, str]]:
    requests: list[str] = stack.fhir_app.state.requests
    return [(entry.split(" ", 1)[0], "/" + entry.split(" ", 1)[1]) for entry in requests]


def test_an_untrusted_key_gets_a_readable_401(browser: Any, stack: Stack) -> None:
    """CORS headers ride on errors too, so the browser can read the 401 instead of failing the fetch."""
    context = browser.new_context()
    tab = context.new_page()
    try:
        tab.goto(f"{stack.client}/index.html")
        stranger = ec.generate_private_key(ec.SECP384R1())
        outcome = tab.evaluate("cfg => window.cdsClient.run(cfg)", _config(stack, stranger))
        assert outcome == {"discovery": 401, "hook": 401, "cards": 0}
        assert tab.locator("#status").inner_text() == "discovery 401, hook 401"
    finally:
        context.close()
