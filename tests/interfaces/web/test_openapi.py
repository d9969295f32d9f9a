"""The OpenAPI document describes the hook operations as the app answers them and is a well-formed document."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.routing import Match

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds.interfaces.web import hooks_routes
from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.interfaces.web.errors import FHIR_JSON
from spasticity_cds.store import open_store

SERVICE_CALL = "/cds-services/{service_id}"
FEEDBACK = "/cds-services/{service_id}/feedback"
HOOK_OPERATIONS = {("get", "/cds-services"), ("post", SERVICE_CALL), ("post", FEEDBACK)}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    store_url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'feedback.sqlite3'}"
    return create_app(WebSettings(store_url=store_url), store=open_store(store_url), clock=support.frozen_clock)


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    response = support.PageClient(app).get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """The value a local JSON-pointer reference (``#/components/schemas/X``) names; KeyError if it names nothing."""
    assert ref.startswith("#/"), ref
    value: Any = document
    for part in ref[2:].split("/"):
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for inner in value.values():
            yield from _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs(inner)


def _schema(document: dict[str, Any], media: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = _resolve(document, media["schema"]["$ref"])
    return schema


def test_the_service_call_is_documented_with_its_request_body(document: dict[str, Any]) -> None:
    operation = document["paths"][SERVICE_CALL]["post"]
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [("service_id", "path", True)]
    body = operation["requestBody"]
    assert body["required"] is True
    request = _schema(document, body["content"]["application/json"])
    assert set(request["required"]) == {"hook", "hookInstance", "context"}
    assert {"prefetch", "fhirServer", "fhirAuthorization"} <= request["properties"].keys()
    authorization = request["properties"]["fhirAuthorization"]["anyOf"][0]
    assert "access_token" in _resolve(document, authorization["$ref"])["required"]


def _assert_outcomes(document: dict[str, Any], responses: dict[str, Any], statuses: set[str]) -> None:
    for status in statuses:
        outcome = _schema(document, responses[status]["content"][FHIR_JSON])
        assert outcome["properties"]["resourceType"] == {"const": "OperationOutcome"}, status


def test_the_service_call_documents_its_cards_and_its_error_outcomes(document: dict[str, Any]) -> None:
    responses = document["paths"][SERVICE_CALL]["post"]["responses"]
    assert {"200", "400", "401", "412", "413", "415", "503"} <= responses.keys()
    cards = _schema(document, responses["200"]["content"]["application/json"])
    assert cards["required"] == ["cards"] and cards["properties"]["cards"]["type"] == "array"
    _assert_outcomes(document, responses, responses.keys() - {"200"})


def test_feedback_is_documented_with_its_request_body_from_the_wire_model(document: dict[str, Any]) -> None:
    body = document["paths"][FEEDBACK]["post"]["requestBody"]
    assert body["required"] is True and body["content"].keys() == {"application/json", FHIR_JSON}
    request = _schema(document, body["content"]["application/json"])
    assert request["required"] == ["feedback"]
    item = _resolve(document, request["properties"]["feedback"]["items"]["$ref"])
    assert set(item["required"]) == {"card", "outcome", "outcomeTimestamp"}
    assert item["properties"]["outcome"]["enum"] == ["accepted", "overridden"]
    reason = _resolve(document, item["properties"]["overrideReason"]["anyOf"][0]["$ref"])
    coding = _resolve(document, reason["properties"]["reason"]["anyOf"][0]["$ref"])
    assert coding["required"] == ["code"] and {"system", "display"} <= coding["properties"].keys()


def test_feedback_documents_the_answers_it_gives_and_no_422(document: dict[str, Any]) -> None:
    responses = document["paths"][FEEDBACK]["post"]["responses"]
    assert responses.keys() == {"200", "400", "401", "404", "413", "415", "500", "503"}
    assert responses["200"]["content"]["application/json"]["schema"] == {"type": "object", "maxProperties": 0}
    _assert_outcomes(document, responses, responses.keys() - {"200"})


def test_no_operation_promises_the_422_the_app_never_answers(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert not {"HTTPValidationError", "ValidationError"} & document["components"]["schemas"].keys()
    for path in ("/kb/rules/{rule_id}", "/patients/demo/{demo_id}", "/static/{name}"):
        _assert_outcomes(document, document["paths"][path]["get"]["responses"], {"400"})


def test_a_validation_failure_is_the_400_outcome_the_document_names(app: FastAPI) -> None:
    probed = create_app(app.state.cds.settings, engine=app.state.cds.engine, store=app.state.cds.store)

    @probed.get("/probe/{number}")
    def probe(number: int) -> dict[str, int]:
        return {"number": number}

    response = support.PageClient(probed).get("/probe/seven")
    assert response.status_code == 400 and response.headers["content-type"] == FHIR_JSON
    assert response.json()["resourceType"] == "OperationOutcome"
    responses = probed.openapi()["paths"]["/probe/{number}"]["get"]["responses"]
    assert responses.keys() == {"200", "400"} and FHIR_JSON in responses["400"]["content"]


def test_the_hook_operations_and_only_they_require_the_client_jwt(document: dict[str, Any]) -> None:
    ((name, scheme),) = document["components"]["securitySchemes"].items()
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert all(word in scheme["description"] for word in ("CDS Hooks 2.0", "ES384", "RS384", "aud", "local demo"))
    secured = {
        (method, path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "security" in operation
    }
    assert secured == HOOK_OPERATIONS
    for method, path in HOOK_OPERATIONS:
        operation = document["paths"][path][method]
        assert operation["security"] == [{name: []}] and "401" in operation["responses"], (method, path)


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert "#/components/schemas/Card" in refs
    for ref in refs:
        _resolve(document, ref)


def test_the_document_is_well_formed(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.") and document["info"]["title"] and document["info"]["version"]
    operation_ids = []
    for path, operations in document["paths"].items():
        assert path.startswith("/") and operations and set(operations) <= METHODS, path
        templated = set(re.findall(r"{([^}]+)}", path))
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert declared == templated, (method, path)
            assert operation["responses"] and all(r["description"] for r in operation["responses"].values())
            operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids))


def test_the_document_is_built_once_and_the_call_stays_on_its_fast_route(app: FastAPI) -> None:
    assert app.openapi() is app.openapi()
    scope = {"type": "http", "method": "POST", "path": "/cds-services/als-spasticity-review"}
    first = next(route for route in app.router.routes if route.matches(scope)[0] is Match.FULL)
    assert first is hooks_routes.service_route
