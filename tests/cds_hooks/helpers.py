"""Shared test data for the CDS Hooks tests: a frozen non-UTC clock, a signing client, patients and requests."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
BASE = "https://cds.example.org"
ISS = "https://ehr.example.org"
FIXTURES = Path(__file__).parent / "fixtures"
PATIENT_ID = "pt-1"
REVIEW = "als-spasticity-review"
SELECT = "als-spasticity-order-select"
SIGN = "als-spasticity-order-sign"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


class FrozenClock:
    """A clock that always says NOW (or whatever a test moves it to)."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Client:
    """A CDS client with an ES384 and an RS384 key, trusted through a JWKS file."""

    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    clock: Callable[[], datetime]
    iss: str = ISS

    def jwks(self) -> dict[str, Any]:
        ec_jwk = ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True)
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True)
        return {
            "keys": [
                {**ec_jwk, "kid": "ec-1", "alg": "ES384", "use": "sig"},
                {**rsa_jwk, "kid": "rsa-1", "alg": "RS384", "use": "sig"},
            ]
        }

    def token(
        self, aud: str | list[str], *, alg: str = "ES384", header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        issued = int(self.clock().timestamp())
        payload = {"iss": self.iss, "aud": aud, "iat": issued, "exp": issued + 300, "jti": str(uuid.uuid4())}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        key = self.ec_key if alg.startswith("ES") else self.rsa_key
        headers = {"kid": "ec-1" if alg.startswith("ES") else "rsa-1", "typ": "JWT", **(header or {})}
        return jwt.encode(payload, key, algorithm=alg, headers=headers)

    def headers(self, path: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(BASE + path, **claims)}"}

    def write_trust(self, folder: Path) -> Path:
        (folder / "client-jwks.json").write_text(json.dumps(self.jwks()), encoding="utf-8")
        issuers = folder / "issuers.toml"
        issuers.write_text(f'[[issuer]]\niss = "{self.iss}"\njwks_file = "client-jwks.json"\n', encoding="utf-8")
        return issuers


def new_client(clock: Callable[[], datetime]) -> Client:
    return Client(
        ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(public_exponent=65537, key_size=2048), clock
    )


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to the app in-process (ASGI), background tasks included."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.request(method, path, **kwargs)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(max_workers=1) as pool:  # a session fixture (sync Playwright) holds this thread's loop
        return pool.submit(lambda: asyncio.run(run())).result()


def days_ago(days: int) -> str:
    return (NOW - timedelta(days=days)).date().isoformat()


def observation(
    obs_id: str, code: str, value: float, unit: str, days: int = 10, system: str = LOINC, category: str = "laboratory"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": days_ago(days),
        "valueQuantity": {"value": value, "unit": unit},
    }


def flag(obs_id: str, code: str, value: bool) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "exam"}]}],
        "code": {"coding": [{"system": "http://spasticity-cds.org/fhir/CodeSystem/local", "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": days_ago(10),
        "valueBoolean": value,
    }


def patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT_ID, "gender": "male", "birthDate": "1962-04-02"}


def als() -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "cond-als",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "86044005", "display": "Amyotrophic lateral sclerosis"}
            ]
        },
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }


def observations(egfr: float = 45.0) -> list[dict[str, Any]]:
    """A fairly complete record: kidney, liver, blood pressure, breathing, tone reliance, spasticity score."""
    return [
        observation("egfr", "98979-8", egfr, "mL/min/{1.73_m2}"),
        observation("alt", "1742-6", 20, "U/L"),
        observation("ast", "1920-8", 22, "U/L"),
        observation("bili", "1975-2", 0.6, "mg/dL"),
        observation("fvc", "19872-1", 85, "%"),
        observation("sbp", "8480-6", 128, "mm[Hg]", category="vital-signs"),
        observation("dbp", "8462-4", 78, "mm[Hg]", category="vital-signs"),
        observation("sbp-lying", "8461-6", 130, "mm[Hg]", category="vital-signs"),
        observation("sbp-standing", "8460-8", 126, "mm[Hg]", category="vital-signs"),
        observation("dbp-lying", "8455-8", 80, "mm[Hg]", category="vital-signs"),
        observation("dbp-standing", "8454-1", 78, "mm[Hg]", category="vital-signs"),
        flag("tone", "relies-on-tone", False),
        observation("mas", "765771006", 2, "{score}", system="http://snomed.info/sct", category="exam"),
    ]


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


def prefetch(meds: list[dict[str, Any]] | None = None, egfr: float = 45.0) -> dict[str, Any]:
    return {
        "patient": patient(),
        "conditions": searchset([als()]),
        "medications": searchset(meds or []),
        "statements": searchset([]),
        "observations": searchset(observations(egfr)),
        "recentObservations": searchset(observations(egfr)),  # the same, found by category (overlap by id)
        "procedures": searchset([]),
        "devices": searchset([]),
    }


def baclofen_order(
    order_id: str = "draft-baclofen",
    *,
    value: float = 20,
    unit: str = "mg",
    per_day: int = 3,
    code: str = "1292",
    status: str = "draft",
    intent: str | None = "order",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": status,
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": code, "display": "baclofen"}],
            "text": "Baclofen",
        },
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "dosageInstruction": [
            {
                "text": f"{value:g} {unit} {per_day} times a day",
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": value,
                            "unit": unit,
                            "system": "http://unitsofmeasure.org",
                            "code": unit,
                        }
                    }
                ],
            }
        ],
    }
    if intent:
        resource["intent"] = intent
    return resource


def hook_request(
    hook: str,
    *,
    prefetch_data: dict[str, Any] | None = None,
    drafts: list[dict[str, Any]] | None = None,
    selections: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": PATIENT_ID}
    if drafts is not None:
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    if selections is not None:
        context["selections"] = selections
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch_data is not None:
        body["prefetch"] = prefetch_data
    body.update(extra)
    return body


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def assert_no_empty(value: Any, path: str = "$") -> None:
    """CDS Hooks JSON rule: no null and no empty string, array or object anywhere."""
    assert value not in (None, "", [], {}), f"empty value at {path}"
    if isinstance(value, dict):
        for key, inner in value.items():
            assert_no_empty(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            assert_no_empty(inner, f"{path}[{index}]")


def post_hook(app: FastAPI, client: Client, service: str, body: Any) -> httpx.Response:
    """A service call signed by ``client`` for that exact endpoint."""
    path = f"/cds-services/{service}"
    return call(app, "POST", path, json=body, headers=client.headers(path))


def valid_cards(app: FastAPI, client: Client, body: dict[str, Any], service: str) -> list[dict[str, Any]]:
    """The cards of a successful service call, each checked with ``assert_valid_card``."""
    response = post_hook(app, client, service, body)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    for card in cards:
        assert_valid_card(card)
    return cards


def assert_valid_card(card: dict[str, Any], base: str = BASE) -> None:
    """The card invariants of CDS Hooks 2.0 (cds-resp-1..7) plus our own conventions."""
    assert_no_empty(card)
    uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"] and card["source"]["url"].startswith(f"{base}/kb/rules/")
    assert card["source"]["topic"]["code"]
    for suggestion in card.get("suggestions", ()):
        uuid.UUID(suggestion["uuid"])
        assert card["selectionBehavior"] in ("at-most-one", "any")
        for action in suggestion.get("actions", ()):
            assert action["description"] and action["type"] in ("create", "update", "delete")
            if action["type"] == "delete":  # cds-resp-2: a delete names its targets and carries no resource
                assert isinstance(action["resourceId"], str) and "resource" not in action  # a string in 2.0.1
                assert action["resourceId"].startswith(("MedicationRequest/", "ServiceRequest/"))
            else:
                assert action["resource"]["resourceType"] and "resourceId" not in action
    if card.get("selectionBehavior") == "at-most-one":
        assert sum(1 for s in card.get("suggestions", ()) if s.get("isRecommended")) <= 1
    for reason in card["overrideReasons"]:
        assert reason["display"] and reason["code"] and reason["system"]
    links = card["links"]
    assert [link["type"] for link in links if link["type"] != "smart"] == ["absolute"]  # smart: when launch is on
    for link in links:
        assert link["url"].startswith(("https://", "http://"))
        assert ("appContext" in link) == (link["type"] == "smart")


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
