"""Shared helpers for the web page tests: frozen clock, test bundles, the app with the page router, a mock EHR."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from tests.postgres import fresh_schema

from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.interfaces.web.pages import router as pages_router
from spasticity_cds.store import open_store

FROZEN_NOW = datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SCRIPT_NAME = "<script>alert('x')</script>"
#: The feedback report's password in the test apps, and the HTTP Basic credentials that carry it.
REPORT_TOKEN = "report-token-for-tests"
REPORT_AUTH = ("reviewer", REPORT_TOKEN)


def frozen_clock() -> datetime:
    return FROZEN_NOW


def observation(
    rid: str, patient: str, code: str, value: float, unit: str, when: str, system: str = LOINC
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit},
    }


def trend_bundle(patient: str = "demo-trend", name: str = "Ada Example") -> dict[str, Any]:
    """An ALS patient on baclofen with falling FVC and eGFR, rising ALT and an orthostatic drop."""
    subject = {"reference": f"Patient/{patient}"}
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": patient,
            "name": [{"text": name}],
            "gender": "female",
            "birthDate": "1960-05-01",
        },
        {
            "resourceType": "Condition",
            "id": "als",
            "subject": subject,
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "bac",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "authoredOn": "2026-06-01",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197391"}]},
            "dosageInstruction": [
                {
                    "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
                }
            ],
        },
        {
            "resourceType": "MedicationRequest",
            "id": "tiz",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "authoredOn": "2026-09-15",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "57258"}], "text": "tizanidine"},
        },
    ]
    series = [("2026-03-01", 78, 55, 30, 128), ("2026-06-01", 70, 50, 60, 122), ("2026-09-01", 62, 44, 130, 118)]
    for i, (when, fvc, egfr, alt, sbp) in enumerate(series):
        resources += [
            observation(f"fvc{i}", patient, "19872-1", fvc, "%", when),
            observation(f"egfr{i}", patient, "98979-8", egfr, "mL/min/1.73m2", when),
            observation(f"alt{i}", patient, "1742-6", alt, "U/L", when),
            observation(f"sbp{i}", patient, "8480-6", sbp, "mm[Hg]", when),
        ]
    resources += [
        observation("lying", patient, "8461-6", 124, "mm[Hg]", "2026-11-01"),
        observation("standing", patient, "8460-8", 98, "mm[Hg]", "2026-11-01"),
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def script_bundle() -> dict[str, Any]:
    """A patient whose name and a medication text are script tags, to prove every value is escaped."""
    bundle = trend_bundle("evil", SCRIPT_NAME)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            resource["medicationCodeableConcept"]["text"] = SCRIPT_NAME
        if resource.get("id") == "alt2":  # a hostile id: it reaches the page as evidence and chart sources
            resource["id"] = 'x"><script>alert(2)</script>'
            resource["bodySite"] = {"text": SCRIPT_NAME}
    return bundle


def write_demo_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ada.json").write_text(json.dumps(trend_bundle()), "utf-8")
    (folder / "evil.json").write_text(json.dumps(script_bundle()), "utf-8")
    return folder


def make_app(tmp_path: Path, *, store_clock: Callable[[], datetime] | None = None, **settings: Any) -> FastAPI:
    """The real app from the factory, with a SQLite store, frozen clock, test demo bundles and the page router.

    ``store_clock`` is the store's (when replay entries and SMART sessions expire); by default the system clock.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "store_url": f"sqlite:///{tmp_path / 'feedback.sqlite3'}",
        "session_secret": "test-secret",
        "report_token": REPORT_TOKEN,
    }
    options.update(settings)
    web_settings = WebSettings(**options)
    store = open_store(web_settings.store_url, clock=store_clock)
    app = create_app(web_settings, store=store, clock=frozen_clock)
    if not any(getattr(route, "path", None) == "/kb" for route in app.routes):
        app.include_router(pages_router)
    app.state.demo_data_dir = write_demo_dir(tmp_path / "demo")
    return app


def postgres_schema() -> AbstractContextManager[str]:
    """A store URL whose search_path is a new, empty schema on the test PostgreSQL server (dropped afterwards);
    the test is skipped without a server."""
    return fresh_schema("web_test")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve(app: FastAPI, sock: socket.socket | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn on a loopback port in a thread; yield its base URL."""
    sock = sock or free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class MockEhr:
    """A tiny SMART authorization server and FHIR server: auto-approves, checks PKCE S256, serves one patient."""

    def __init__(self, client_id: str, bundle: dict[str, Any], patient_id: str) -> None:
        self.client_id = client_id
        self.patient_id = patient_id
        self.resources = [entry["resource"] for entry in bundle["entry"]]
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: set[str] = set()
        self.launches: dict[str, dict[str, Any]] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.base = ""
        self.challenge_methods = ["S256"]
        self.app = self._build()

    def register_launch(self, app_context: dict[str, Any] | None = None) -> str:
        launch = secrets.token_urlsafe(8)
        self.launches[launch] = {"appContext": json.dumps(app_context) if app_context else None}
        return launch

    def _build(self) -> FastAPI:
        app = FastAPI()
        ehr = self

        @app.get("/fhir/.well-known/smart-configuration")
        def configuration() -> dict[str, Any]:
            return {
                "authorization_endpoint": f"{ehr.base}/auth/authorize",
                "token_endpoint": f"{ehr.base}/auth/token",
                "capabilities": ["launch-ehr", "launch-standalone", "client-public", "context-ehr-patient"],
                "code_challenge_methods_supported": ehr.challenge_methods,
            }

        @app.get("/auth/authorize")
        def authorize(request: Request) -> Response:
            q = dict(request.query_params)
            ehr.authorize_requests.append(q)
            if (
                q.get("client_id") != ehr.client_id
                or q.get("code_challenge_method") != "S256"
                or q.get("aud") != f"{ehr.base}/fhir"
            ):
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            launch = q.get("launch")
            if launch is not None and launch not in ehr.launches:
                return JSONResponse({"error": "invalid_launch"}, status_code=400)
            code = secrets.token_urlsafe(12)
            ehr.codes[code] = {
                "challenge": q["code_challenge"],
                "redirect_uri": q["redirect_uri"],
                "app_context": ehr.launches.get(launch or "", {}).get("appContext"),
            }
            return RedirectResponse(
                f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", status_code=302
            )

        @app.post("/auth/token")
        async def token(request: Request) -> Response:
            form = await request.form()
            grant = ehr.codes.pop(str(form.get("code")), None)
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            digest = hashlib.sha256(str(form.get("code_verifier")).encode()).digest()
            if base64.urlsafe_b64encode(digest).decode().rstrip("=") != grant["challenge"]:
                return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
            access = secrets.token_urlsafe(16)
            ehr.tokens.add(access)
            body: dict[str, Any] = {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "patient/*.rs",
                "patient": ehr.patient_id,
            }
            if grant["app_context"]:
                body["appContext"] = grant["app_context"]
            return JSONResponse(body)

        def authorised(request: Request) -> bool:
            header = request.headers.get("authorization", "")
            return header.startswith("Bearer ") and header[7:] in ehr.tokens

        @app.get("/fhir/Patient/{pid}")
        def patient(pid: str, request: Request) -> Response:
            if not authorised(request):
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
            found = [r for r in ehr.resources if r["resourceType"] == "Patient" and r["id"] == pid]
            return (
                JSONResponse(found[0]) if found else JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)
            )

        @app.get("/fhir/{resource_type}")
        def search(resource_type: str, request: Request) -> Response:
            if not authorised(request):
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
            patient_id = request.query_params.get("patient")
            matches = [
                r
                for r in ehr.resources
                if r["resourceType"] == resource_type
                and r.get("subject", {}).get("reference") == f"Patient/{patient_id}"
            ]
            # Two pages, to exercise paging: the first half, then a next link to the rest.
            page = request.query_params.get("page", "1")
            half = (len(matches) + 1) // 2
            chunk = matches[:half] if page == "1" else matches[half:]
            bundle: dict[str, Any] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in chunk],
            }
            if page == "1" and len(matches) > half:
                bundle["link"] = [
                    {"relation": "next", "url": f"{ehr.base}/fhir/{resource_type}?patient={patient_id}&page=2"}
                ]
            return JSONResponse(bundle)

        return app


@contextmanager
def running_ehr(client_id: str, bundle: dict[str, Any], patient_id: str) -> Iterator[MockEhr]:
    ehr = MockEhr(client_id, bundle, patient_id)
    sock = free_socket()
    ehr.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with serve(ehr.app, sock):
        yield ehr


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
FEEDBACK_ID = re.compile(r'name="feedback_id" value="([^"]+)"')


class PageClient:
    """A synchronous in-process client (httpx over ASGI) that keeps cookies between requests."""

    def __init__(self, app: FastAPI, base_url: str = "http://testserver") -> None:
        self.app = app
        self.base_url = base_url
        self.cookies = httpx.Cookies()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url, cookies=self.cookies) as client:
                response = await client.request(method, path, **kwargs)
                self.cookies = httpx.Cookies(client.cookies)
                return response

        return asyncio.run(run())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def csrf(self, path: str = "/") -> str:
        """Load a page and return the CSRF token in its forms (the cookie is kept)."""
        match = CSRF_INPUT.search(self.get(path).text)
        assert match is not None, f"no CSRF token on {path}"
        return html.unescape(match.group(1))
