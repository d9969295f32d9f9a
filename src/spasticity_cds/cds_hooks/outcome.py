"""FHIR OperationOutcome bodies for every 4xx and 5xx answer (CDS Hooks 3.0 asks for them; 2.0 allows them)."""

from __future__ import annotations

from typing import Any

ISSUE_CODES = {
    400: "invalid",
    401: "login",
    404: "not-found",
    405: "not-supported",
    412: "processing",
    413: "too-costly",
    415: "not-supported",
}


def operation_outcome(status: int, diagnostics: str | None = None) -> dict[str, Any]:
    """An OperationOutcome with one error issue for an HTTP status; no diagnostics when there is nothing to say."""
    issue: dict[str, Any] = {
        "severity": "error" if status < 500 else "fatal",
        "code": ISSUE_CODES.get(status, "processing" if status < 500 else "exception"),
    }
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}
