"""The service call in the OpenAPI document: a plain Starlette route, which FastAPI's generated document misses."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from spasticity_cds.cds_hooks.models import HookRequest
from spasticity_cds.interfaces.web.errors import FHIR_JSON
from spasticity_cds.interfaces.web.hooks_routes import service_route

SCHEMA_REF: Final = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(name=name)}


def _array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _string_enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


#: The answer of a service call as this service writes it (CDS Hooks 2.0 "CDS Service Response" and "Card"); the
#: parts it never sends (systemActions, icons) are left out. The request's schemas come from its wire model.
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
ERROR_ANSWERS: Final = {
    400: "The body does not follow CDS Hooks 2.0, or its hook is not this service's.",
    401: "The client JWT (Authorization: Bearer) is missing or fails verification; no detail is given.",
    404: "There is no service with this id.",
    412: "Data the service needs was neither prefetched nor obtainable from fhirServer.",
    413: "The body is larger than the configured limit.",
    415: "The body is declared as something other than application/json or another application/*+json type.",
    500: "The service failed; the reason stays in its log.",
}
SERVICE_CALL_DESCRIPTION: Final = (
    "One hook call: the cards for the decision at hand. The body is a CDS Hooks 2.0 request; the service ids and "
    "their hooks and prefetch templates are in the discovery document (GET /cds-services). Every call carries the "
    "client's JWT, whose aud is this endpoint's URL."
)


def with_service_call(schema: dict[str, Any]) -> dict[str, Any]:
    """The generated document with the service call in it (added once: FastAPI keeps the document it built)."""
    operations = schema["paths"].setdefault(service_route.path, {})
    if "post" not in operations:
        (request_ref,), request_schemas = msgspec.json.schema_components([HookRequest], ref_template=SCHEMA_REF)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(request_schemas | RESPONSE_SCHEMAS)
        operations["post"] = _service_call(request_ref)
    return schema


def _service_call(request_ref: dict[str, Any]) -> dict[str, Any]:
    errors = {
        str(status): {"description": text, "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}}}
        for status, text in ERROR_ANSWERS.items()
    }
    return {
        "summary": "Call a CDS service",
        "description": SERVICE_CALL_DESCRIPTION,
        "operationId": "call_service_cds_services__service_id__post",
        "parameters": [
            {
                "name": "service_id",
                "in": "path",
                "required": True,
                "description": "A service id from the discovery document.",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {media: {"schema": request_ref} for media in ("application/json", FHIR_JSON)},
        },
        "responses": {
            "200": {
                "description": "The cards; an empty list when there is nothing to say.",
                "content": {"application/json": {"schema": _ref("CdsServiceResponse")}},
            },
            **errors,
        },
    }
