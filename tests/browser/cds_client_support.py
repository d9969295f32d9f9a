"""Browser CDS clients' surroundings: an open FHIR R4 server with CORS, our service on a real clock, a test patient."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from browser_support import support
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from tests.cds_hooks.fhir_server import matches_token_search

from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import open_store

PATIENT_ID = "als-kidney-1"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
#: Where scripts/sandbox-check leaves the built cds-hooks/sandbox (``npm run build`` output).
SANDBOX_BUILD = Path(
    os.environ.get(
        "SPASTICITY_CDS_SANDBOX_BUILD",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "spasticity-cds"
        / "cds-hooks-sandbox"
        / "build",
    )
)
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()


def _observation(rid: str, code: str, value: float, unit: str, category: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": _day(7),
        "valueQuantity": {"value": value, "unit": unit},
    }


def current_baclofen() -> dict[str, Any]:
    """An active order of oral baclofen 10 mg three times a day: patient-view speaks only of the drugs a patient
    takes, so its "avoid oral baclofen" card needs the patient on baclofen."""
    return {
        "resourceType": "MedicationRequest",
        "id": "baclofen-current",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1292"}],
            "text": "Baclofen",
        },
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": _day(60),
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 10, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
                ],
            }
        ],
    }


def kidney_patient(egfr: float = 20.0) -> list[dict[str, Any]]:
    """An ALS patient with severely reduced kidney function (eGFR 20 by default) and otherwise recent data."""
    return [
        {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "name": [{"given": ["Kim"], "family": "Example"}],
            "gender": "female",
            "birthDate": "1961-03-04",
        },
        {
            "resourceType": "Condition",
            "id": "als",
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {
                "coding": [{"system": "http://snomed.info/sct", "code": "86044005"}],
                "text": "Amyotrophic lateral sclerosis",
            },
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
        },
        _observation("egfr", "98979-8", egfr, "mL/min/{1.73_m2}", "laboratory"),
        _observation("alt", "1742-6", 20, "U/L", "laboratory"),
        _observation("fvc", "19872-1", 85, "%", "procedure"),
        _observation("sbp-lying", "8461-6", 130, "mm[Hg]", "vital-signs"),
        _observation("sbp-standing", "8460-8", 126, "mm[Hg]", "vital-signs"),
        _observation("dbp-lying", "8455-8", 80, "mm[Hg]", "vital-signs"),
        _observation("dbp-standing", "8454-1", 78, "mm[Hg]", "vital-signs"),
    ]


def _matches(resource: dict[str, Any], params: dict[str, str]) -> bool:
    """Search on ``patient``, and token search on ``code`` and ``category``."""
    patient = params.get("patient")
    if patient and resource.get("subject", {}).get("reference") not in (f"Patient/{patient}", patient):
        return False
    return matches_token_search(resource, params)


def open_fhir(resources: list[dict[str, Any]]) -> FastAPI:
    """An open (no auth) FHIR R4 server with CORS: metadata, read, GET search and POST ``_search``."""
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    app.state.requests = []

    def bundle(kind: str, params: dict[str, str]) -> dict[str, Any]:
        found = [r for r in resources if r["resourceType"] == kind and _matches(r, params)]
        found = found[: int(params.get("_count", "1000"))]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r} for r in found],
        }

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1"}

    @app.get("/{kind}/{rid}")
    def read(kind: str, rid: str) -> Response:
        app.state.requests.append(f"GET {kind}/{rid}")
        found = [r for r in resources if r["resourceType"] == kind and r["id"] == rid]
        return JSONResponse(found[0]) if found else JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)

    @app.get("/{kind}")
    def search(kind: str, request: Request) -> dict[str, Any]:
        app.state.requests.append(f"GET {kind}?{request.url.query}")
        return bundle(kind, dict(request.query_params))

    @app.post("/{kind}/_search")
    async def post_search(kind: str, request: Request) -> dict[str, Any]:
        form = await request.form()
        app.state.requests.append(f"POST {kind}/_search {form}")
        return bundle(kind, {key: str(value) for key, value in form.items()})

    return app


def cds_app(folder: Path, base: str, issuers: Path) -> FastAPI:
    """Our service as deployed: JWT required, the issuers given, a SQLite store, the real clock."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = WebSettings(
        public_base_url=base,
        store_url=f"sqlite:///{folder / 'feedback.sqlite3'}",
        auth_required=True,
        trusted_issuers_file=issuers,
        session_secret="test-secret",
    )
    return create_app(settings, store=open_store(settings.store_url))


class Recorder:
    """An ASGI wrapper that notes the method, path and Origin of every HTTP request before the app answers it."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            origin = dict(scope["headers"]).get(b"origin")
            self.seen.append((scope["method"], scope["path"], origin.decode() if origin else None))
        await self.app(scope, receive, send)


@dataclass
class Stack:
    """The service under test, the FHIR server it and the client read, and the client's static files."""

    cds: str
    fhir: str
    client: str
    cds_app: FastAPI
    fhir_app: FastAPI
    cds_seen: list[tuple[str, str, str | None]]


@contextmanager
def running_stack(folder: Path, issuers: Path, client_files: Path, resources: list[dict[str, Any]]) -> Iterator[Stack]:
    """Our service, an open FHIR server and a static file server for the client, each on its own loopback port."""
    from fastapi.staticfiles import StaticFiles

    cds_sock = support.free_socket()
    cds_base = f"http://127.0.0.1:{cds_sock.getsockname()[1]}"
    service = cds_app(folder, cds_base, issuers)
    fhir_app = open_fhir(resources)
    static = FastAPI()
    static.mount("/", StaticFiles(directory=client_files, html=True))
    recorder = Recorder(service)
    with ExitStack() as stack:
        cds = stack.enter_context(support.serve(recorder, cds_sock))  # type: ignore[arg-type]  # any ASGI app
        fhir = stack.enter_context(support.serve(fhir_app))
        client = stack.enter_context(support.serve(static))
        yield Stack(cds, fhir, client, service, fhir_app, recorder.seen)
