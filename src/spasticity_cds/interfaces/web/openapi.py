"""The OpenAPI document as the app answers: the hook operations in full, their client JWT, 400 for FastAPI's 422."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from spasticity_cds.cds_hooks.models import FeedbackRequest, HookRequest
from spasticity_cds.interfaces.web.errors import FHIR_JSON
from spasticity_cds.interfaces.web.hooks_routes import DISCOVERY_PATH, FEEDBACK_PATH, service_route

SCHEMA_REF: Final = "#/components/schemas/{name}"
#: The name of the hook operations' security scheme.
CLIENT_JWT: Final = "cdsClientJwt"
#: The schemas FastAPI adds for the 422 it documents, which the app never answers (`_validation_failures_as_400`).
FASTAPI_VALIDATION_SCHEMAS: Final = ("HTTPValidationError", "ValidationError")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(name=name)}


def _array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _string_enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


#: The answer of a service call as this service writes it (CDS Hooks 2.0 "CDS Service Response" and "Card"); the
#: parts it never sends (systemActions, icons) are left out. The request's schemas come from its wire model, whose
#: Coding (feedback's override reason) this Coding stands for: both are a FHIR Coding that needs only a code.
RESPONSE_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "CdsServiceResponse": {
        "type": "object",
        "description": "The cards for the decision at hand; an empty list when there is nothing to say.",
        "required": ["cards"],
        "properties": {"cards": _array_of("Card")},
    },
    "Card": {
        "type": "object",
        "description": "One decision: a finding of the knowledge base with its basis, sources and suggestions.",
        "required": ["uuid", "summary", "indicator", "source"],
        "properties": {
            "uuid": {"type": "string", "description": "Named by feedback on this card."},
            "summary": {"type": "string", "maxLength": 139},
            "detail": {"type": "string", "description": "GitHub-flavoured Markdown."},
            "indicator": _string_enum("info", "warning", "critical"),
            "source": _ref("CardSource"),
            "suggestions": _array_of("Suggestion"),
            "selectionBehavior": _string_enum("at-most-one", "any"),
            "overrideReasons": _array_of("Coding"),
            "links": _array_of("Link"),
            "extension": {"type": "object", "description": "The rules behind the card and the knowledge base."},
        },
    },
    "CardSource": {
        "type": "object",
        "required": ["label"],
        "properties": {"label": {"type": "string"}, "url": {"type": "string"}, "topic": _ref("Coding")},
    },
    "Coding": {
        "type": "object",
        "required": ["code"],
        "properties": {"system": {"type": "string"}, "code": {"type": "string"}, "display": {"type": "string"}},
    },
    "Suggestion": {
        "type": "object",
        "required": ["label", "uuid"],
        "properties": {
            "label": {"type": "string"},
            "uuid": {"type": "string", "description": "Named by feedback that accepts this suggestion."},
            "isRecommended": {"type": "boolean"},
            "actions": _array_of("Action"),
        },
    },
    "Action": {
        "type": "object",
        "description": "A create or update carries the whole FHIR resource; a delete names its draft by resourceId.",
        "required": ["type", "description"],
        "properties": {
            "type": _string_enum("create", "update", "delete"),
            "description": {"type": "string"},
            "resource": {"type": "object", "description": "A FHIR resource."},
            "resourceId": {"type": "string", "description": "A relative reference, such as MedicationRequest/1."},
        },
    },
    "Link": {
        "type": "object",
        "required": ["label", "url", "type"],
        "properties": {
            "label": {"type": "string"},
            "url": {"type": "string"},
            "type": _string_enum("absolute", "smart"),
            "appContext": {"type": "string", "description": "Only on smart links."},
        },
    },
    "OperationOutcome": {
        "type": "object",
        "description": "A FHIR OperationOutcome with one issue.",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": _string_enum("fatal", "error"),
                        "code": {"type": "string"},
                        "diagnostics": {"type": "string"},
                    },
                },
            },
        },
    },
}
#: The errors every hook operation can answer, each an OperationOutcome.
HOOK_ERRORS: Final = {
    401: "The client JWT (Authorization: Bearer) is missing or fails verification; no detail is given.",
    500: "The service failed; the reason stays in its log.",
    503: "The store cannot be read or written now: the record of JWT ids already used, or the feedback itself.",
}
#: The errors of the two operations that send one service a JSON body.
SERVICE_BODY_ERRORS: Final = HOOK_ERRORS | {
    404: "There is no service with this id.",
    413: "The body is larger than the configured limit.",
    415: "The body is declared as something other than application/json or another application/*+json type.",
}
SERVICE_CALL_ERRORS: Final = SERVICE_BODY_ERRORS | {
    400: "The body does not follow CDS Hooks 2.0, or its hook is not this service's.",
    412: "Data the service needs was neither prefetched nor obtainable from fhirServer.",
}
FEEDBACK_ERRORS: Final = SERVICE_BODY_ERRORS | {
    400: "The body does not follow CDS Hooks 2.0 feedback (cds-fb-1 to 3), or names a card another service issued.",
}
VALIDATION_ERROR: Final = "A parameter or the body does not have the expected form (FastAPI's validation)."
SERVICE_CALL_DESCRIPTION: Final = (
    "One hook call: the cards for the decision at hand. The body is a CDS Hooks 2.0 request; the service ids and "
    "their hooks and prefetch templates are in the discovery document (GET /cds-services). Every call carries the "
    "client's JWT, whose aud is this endpoint's URL."
)
SERVICE_ID_PARAMETER: Final = {
    "name": "service_id",
    "in": "path",
    "required": True,
    "description": "A service id from the discovery document.",
    "schema": {"type": "string"},
}
FEEDBACK_STORED: Final = {
    "description": "The outcomes are stored, idempotently; the body is an empty object (CDS Hooks 2.0 defines none).",
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}
CLIENT_JWT_SCHEME: Final = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": (
        "The CDS client's signed JWT, which CDS Hooks 2.0 requires on every call (discovery, service call, "
        "feedback): signed with ES384 or RS384 by an issuer this deployment trusts, with aud the URL of the endpoint "
        "called ({base}/cds-services, {base}/cds-services/{id} or {base}/cds-services/{id}/feedback), exp, iat and "
        "a jti used only once. A token that fails any check gets 401 with no detail. A deployment may turn the check "
        "off (auth_required = false) only for a local demo, never with patient data."
    ),
}


def as_served(document: dict[str, Any]) -> dict[str, Any]:
    """The generated document completed as the app answers: every 422 made the 400 it is, the service call added,
    the feedback body and answers written, and the client JWT required on the hook operations."""
    _validation_failures_as_400(document)
    (hook_request, feedback_request), wire_schemas = msgspec.json.schema_components(
        [HookRequest, FeedbackRequest], ref_template=SCHEMA_REF
    )
    document["components"]["schemas"].update(wire_schemas | RESPONSE_SCHEMAS)
    paths: dict[str, dict[str, Any]] = document["paths"]
    paths.setdefault(service_route.path, {})["post"] = _service_call(hook_request)
    _describe_feedback(paths[FEEDBACK_PATH]["post"], feedback_request)
    paths[DISCOVERY_PATH]["get"]["responses"].update(_outcome_answers(HOOK_ERRORS))
    _require_client_jwt(document)
    return document


def _validation_failures_as_400(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 on every route with parameters, but the app's handler of validation failures answers
    them with a 400 OperationOutcome (`errors._validation_error`, for every route); a route's own 422 would stay."""
    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            if _is_fastapi_validation_answer(responses.get("422", {})):
                del responses["422"]
                responses.setdefault("400", _outcome_answer(VALIDATION_ERROR))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)


def _is_fastapi_validation_answer(answer: dict[str, Any]) -> bool:
    """FastAPI's own 422, which names its HTTPValidationError schema."""
    schema = answer.get("content", {}).get("application/json", {}).get("schema")
    return bool(schema == _ref("HTTPValidationError"))


def _outcome_answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}}}


def _outcome_answers(descriptions: Mapping[int, str]) -> dict[str, Any]:
    return {str(status): _outcome_answer(descriptions[status]) for status in sorted(descriptions)}


def _json_body(schema_ref: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema_ref} for media in ("application/json", FHIR_JSON)}}


def _service_call(request_ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": "Call a CDS service",
        "description": SERVICE_CALL_DESCRIPTION,
        "operationId": "call_service_cds_services__service_id__post",
        "parameters": [SERVICE_ID_PARAMETER],
        "requestBody": _json_body(request_ref),
        "responses": {
            "200": {
                "description": "The cards; an empty list when there is nothing to say.",
                "content": {"application/json": {"schema": _ref("CdsServiceResponse")}},
            },
            **_outcome_answers(SERVICE_CALL_ERRORS),
        },
    }


def _describe_feedback(operation: dict[str, Any], request_ref: dict[str, Any]) -> None:
    """The body FastAPI cannot see (the route reads it itself, to answer as CDS Hooks asks) and the real answers."""
    operation["parameters"] = [SERVICE_ID_PARAMETER]
    operation["requestBody"] = _json_body(request_ref)
    operation["responses"] = {"200": FEEDBACK_STORED, **_outcome_answers(FEEDBACK_ERRORS)}


def _require_client_jwt(document: dict[str, Any]) -> None:
    """The client JWT on the three hook operations; the clinicians' pages and the JSON API take none."""
    document["components"]["securitySchemes"] = {CLIENT_JWT: CLIENT_JWT_SCHEME}
    for path in (DISCOVERY_PATH, service_route.path, FEEDBACK_PATH):
        for operation in document["paths"][path].values():
            operation["security"] = [{CLIENT_JWT: []}]
