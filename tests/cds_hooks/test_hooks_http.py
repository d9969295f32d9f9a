"""HTTP edges: CORS on the service only (preflight too), size limit, OperationOutcome on every error."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from .helpers import REVIEW, SIGN, Client, call, hook_request, prefetch

ORIGIN = "https://sandbox.cds-hooks.org"
SERVICE = f"/cds-services/{REVIEW}"


def _preflight(app: FastAPI, path: str, request_headers: str, method: str = "POST") -> Any:
    """A browser's CORS preflight for a request (a POST) from the sandbox's origin."""
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": request_headers,
    }
    return call(app, "OPTIONS", path, headers=headers)


@pytest.mark.parametrize("path", ["/cds-services", SERVICE, f"{SERVICE}/feedback"])
def test_preflight_is_answered_on_every_route(app: FastAPI, path: str) -> None:
    response = _preflight(app, path, "authorization,content-type")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/cds-services", 200), ("POST", SERVICE, 401), ("GET", "/cds-services/nowhere/x", 404)],
)
def test_cors_headers_on_answers_and_errors(app: FastAPI, client: Client, method: str, path: str, status: int) -> None:
    headers = {"Origin": ORIGIN} | (client.headers(path) if status == 200 else {})
    response = call(app, method, path, headers=headers)
    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == "*"


FEEDBACK = {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T14:30:00Z"}]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/cds-services", None, 200),
        ("POST", SERVICE, hook_request("patient-view", prefetch_data=prefetch()), 200),
        ("POST", f"{SERVICE}/feedback", FEEDBACK, 200),
        ("POST", SERVICE, {"hook": "patient-view"}, 400),
    ],
)
def test_hook_answers_are_not_cached_or_sniffed(
    app: FastAPI, client: Client, method: str, path: str, body: dict[str, Any] | None, status: int
) -> None:
    response = call(app, method, path, json=body, headers=client.headers(path))
    assert response.status_code == status
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_no_cors_beyond_the_service_and_the_api(app: FastAPI) -> None:
    response = call(app, "GET", "/nowhere", headers={"Origin": ORIGIN})
    assert response.status_code == 404 and "access-control-allow-origin" not in response.headers


def test_body_over_the_limit_is_413(app: FastAPI, client: Client) -> None:
    body = b'{"hook": "patient-view", "pad": "' + b"x" * 300_000 + b'"}'
    response = call(
        app,
        "POST",
        SERVICE,
        content=body,
        headers=client.headers(SERVICE) | {"Content-Type": "application/json", "Origin": ORIGIN},
    )
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["access-control-allow-origin"] == "*"


def test_streamed_body_over_the_limit_is_413(app: FastAPI, client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"x" * 10_000

    response = call(app, "POST", SERVICE, content=chunks(), headers=client.headers(SERVICE))
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"hook": "patient-view"}', "hookInstance"),
        (
            b'{"hook": "patient-view", "hookInstance": "a", "context": {"userId": "Practitioner/1"}}',
            "context.patientId",
        ),
        (b'{"hook": "patient-view", "hookInstance": "a", "context": {"userId": "P/1", "patientId": ""}}', "patientId"),
        (
            b'{"hook": "patient-view", "hookInstance": "a", "context": {"userId": "P/1", "patientId": "1"}, '
            b'"fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 1, '
            b'"scope": "s", "subject": "c"}}',
            "cds-r-1",
        ),
        (
            b'{"hook": "order-select", "hookInstance": "a", "context": {"userId": "P/1", "patientId": "1", '
            b'"draftOrders": {"resourceType": "Bundle"}}}',
            "selections",
        ),
        (
            b'{"hook": "order-select", "hookInstance": "a", "context": {"userId": "P/1", "patientId": "1", '
            b'"selections": ["MedicationRequest/elsewhere"], "draftOrders": {"resourceType": "Bundle", "entry": '
            b'[{"resource": {"resourceType": "MedicationRequest", "id": "here"}}]}}}',
            "context.selections names 'MedicationRequest/elsewhere', which is not in draftOrders",
        ),
    ],
)
def test_malformed_requests_are_400_with_an_outcome(app: FastAPI, client: Client, body: bytes, fragment: str) -> None:
    path = f"/cds-services/{REVIEW}" if b"patient-view" in body else "/cds-services/als-spasticity-order-select"
    response = call(
        app, "POST", path, content=body, headers=client.headers(path) | {"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and fragment in outcome["issue"][0]["diagnostics"]


def test_wrong_hook_for_the_service_is_400(app: FastAPI, client: Client) -> None:
    body = hook_request("patient-view", prefetch_data=prefetch())
    response = call(app, "POST", f"/cds-services/{SIGN}", json=body, headers=client.headers(f"/cds-services/{SIGN}"))
    assert response.status_code == 400
    assert "order-sign" in response.json()["issue"][0]["diagnostics"]


def test_unknown_service_is_404_with_an_outcome(app: FastAPI, client: Client) -> None:
    response = call(app, "POST", "/cds-services/nope", json={}, headers=client.headers("/cds-services/nope"))
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-found"


def test_wrong_method_is_405_with_an_outcome(app: FastAPI) -> None:
    response = call(app, "DELETE", "/cds-services")
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


def test_internal_error_is_500_without_a_traceback(
    app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.state.hooks.runner, "run", broken)
    response = call(
        app,
        "POST",
        SERVICE,
        json=hook_request("patient-view", prefetch_data=prefetch()),
        headers=client.headers(SERVICE) | {"Origin": ORIGIN},
    )
    assert response.status_code == 500
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "internal error"}],
    }
    assert "Traceback" not in response.text and "secret" not in response.text
    assert response.headers["access-control-allow-origin"] == "*"


def test_store_failure_on_feedback_is_503(app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from spasticity_cds.errors import StoreError

    def broken(items: object) -> int:
        raise StoreError("cannot write", where="postgresql://user:***@db/x")

    monkeypatch.setattr(app.state.cds.store, "record_hook_feedback", broken)
    body = {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T14:30:00Z"}]}
    path = f"{SERVICE}/feedback"
    response = call(app, "POST", path, json=body, headers=client.headers(path))
    assert response.status_code == 503
    assert "postgresql" not in response.text


def test_a_body_saved_with_a_byte_order_mark_is_read(app: FastAPI, client: Client) -> None:
    body = b"\xef\xbb\xbf" + orjson.dumps(hook_request("patient-view", prefetch_data=prefetch()))
    response = call(
        app, "POST", SERVICE, content=body, headers=client.headers(SERVICE) | {"Content-Type": "application/json"}
    )
    assert response.status_code == 200 and "cards" in response.json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (SERVICE, b'{"hook": "patient-view\xff", "hookInstance": "x", "context": {}}'),
        (f"{SERVICE}/feedback", b'{"feedback": [{"card": "c\xff", "outcome": "overridden"}]}'),
    ],
)
def test_invalid_utf8_in_a_body_is_400(app: FastAPI, client: Client, path: str, body: bytes) -> None:
    response = call(
        app, "POST", path, content=body, headers=client.headers(path) | {"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "UTF-8" in response.json()["issue"][0]["diagnostics"]


def test_a_trailing_slash_is_a_404_outcome_not_a_redirect_built_from_the_host(app: FastAPI, client: Client) -> None:
    path = f"{SERVICE}/"
    response = call(app, "POST", path, json={}, headers=client.headers(path) | {"Host": "evil.example.com"})
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "location" not in response.headers


def test_head_on_discovery_and_a_preflight_with_other_headers(app: FastAPI, client: Client) -> None:
    assert call(app, "HEAD", "/cds-services", headers=client.headers("/cds-services")).status_code == 200
    response = _preflight(app, SERVICE, "authorization,content-type,x-requested-with,cache-control")
    assert response.status_code == 200
    assert "x-requested-with" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers


def test_a_refused_preflight_is_an_operation_outcome(app: FastAPI) -> None:
    response = _preflight(app, SERVICE, "content-type", method="PUT")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert (
        outcome["resourceType"] == "OperationOutcome" and "Disallowed CORS method" in outcome["issue"][0]["diagnostics"]
    )


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH"])
def test_a_405_on_discovery_names_get_not_only_head(app: FastAPI, client: Client, method: str) -> None:
    response = call(app, method, "/cds-services", headers=client.headers("/cds-services"))
    assert response.status_code == 405
    assert "GET" in {m.strip() for m in response.headers["allow"].split(",")}
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("patient_id", ["../../other/x", "pt-1?_format=xml&", "x" * 65, ""])
def test_a_patient_id_that_is_not_a_fhir_id_is_400(app: FastAPI, client: Client, patient_id: str) -> None:
    body = hook_request("patient-view", prefetch_data=prefetch())
    body["context"]["patientId"] = patient_id
    response = call(app, "POST", SERVICE, json=body, headers=client.headers(SERVICE))
    assert response.status_code == 400
    assert "patientId" in response.json()["issue"][0]["diagnostics"]


def test_the_json_api_answers_invalid_utf8_with_400(app: FastAPI) -> None:
    body = b'{"resourceType": "Patient", "id": "p\xff"}'
    response = call(app, "POST", "/api/evaluate", content=body, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 400


def test_the_openapi_document_builds_without_warnings(app: FastAPI) -> None:
    response = call(app, "GET", "/openapi.json")
    assert response.status_code == 200
    assert "/cds-services" in response.json()["paths"]


NOT_JSON_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"]
JSON_TYPES = ["application/json", "Application/JSON; charset=UTF-8", "application/fhir+json;charset=utf-8"]


def _feedback_body() -> dict[str, Any]:
    return copy.deepcopy(FEEDBACK)


def _post_typed(app: FastAPI, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    return call(app, "POST", path, content=orjson.dumps(body), headers=headers)


@pytest.mark.parametrize("media_type", NOT_JSON_TYPES)
@pytest.mark.parametrize(
    ("path", "body"),
    [(SERVICE, hook_request("patient-view", prefetch_data=prefetch())), (f"{SERVICE}/feedback", _feedback_body())],
)
def test_a_body_declared_as_not_json_is_415_with_an_outcome(
    app: FastAPI, client: Client, path: str, body: dict[str, Any], media_type: str
) -> None:
    headers = client.headers(path) | {"Content-Type": media_type, "Origin": ORIGIN}
    response = _post_typed(app, path, body, headers)
    assert response.status_code == 415
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["access-control-allow-origin"] == "*"
    (issue,) = response.json()["issue"]
    assert issue["code"] == "not-supported" and "application/json" in issue["diagnostics"]


@pytest.mark.parametrize("media_type", [*JSON_TYPES, "application/cds-hooks+json", None])
@pytest.mark.parametrize(
    ("path", "body"),
    [(SERVICE, hook_request("patient-view", prefetch_data=prefetch())), (f"{SERVICE}/feedback", _feedback_body())],
)
def test_a_json_body_is_read_whatever_its_json_type_or_with_no_type_at_all(
    app: FastAPI, client: Client, path: str, body: dict[str, Any], media_type: str | None
) -> None:
    content_type = {"Content-Type": media_type} if media_type else {}
    response = _post_typed(app, path, body, client.headers(path) | content_type)
    assert response.request.headers.get("content-type") == media_type
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", [SERVICE, f"{SERVICE}/feedback"])
def test_an_unauthenticated_body_that_is_not_json_is_a_bare_401(app: FastAPI, path: str) -> None:
    response = call(app, "POST", path, content=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 401
    assert response.json() == {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}
