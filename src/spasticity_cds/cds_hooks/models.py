"""CDS Hooks 2.0 wire models (msgspec): lenient where clients are known to deviate, strict where rules need it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import msgspec

from spasticity_cds.cds_hooks.urls import http_url
from spasticity_cds.errors import HookRequestError
from spasticity_cds.fhir.model import FhirElement, Resource
from spasticity_cds.fhir.parse import UTF8_BOM

#: Longest hookInstance or card uuid (both are uuids on the wire): the feedback store's column width.
MAX_ID_CHARS = 128
#: Longest override reason code and code system URL: the feedback store's column widths.
MAX_CODE_CHARS = 255
MAX_URL_CHARS = 2048
#: Most card outcomes in one feedback report (an EHR reports one card at a time).
MAX_FEEDBACK_ITEMS = 100
#: FHIR's id datatype (context.patientId and encounterId are ids: they go into the FHIR server's URL paths).
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: RFC 3339 section 5.6 date-time (``datetime.fromisoformat`` alone also takes week dates and missing seconds).
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
#: RFC 6750's b64token, the form of a bearer token: it goes into the Authorization header of our FHIR queries, which
#: carries ASCII only (a token with any other character cannot be sent, so the request cannot be served).
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: A uuid as text (8-4-4-4-12 hex digits), optionally as the ``urn:uuid:`` URI the logical model implies.
UUID_TEXT = re.compile(r"(?:urn:uuid:)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", re.IGNORECASE)
T = TypeVar("T")
CONTEXT_REQUIRED: dict[str, tuple[str, ...]] = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
}


class FhirAuthorization(msgspec.Struct, frozen=True):
    """The bearer token a client lends the service for its own FHIR queries; never logged or stored."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None

    def __repr__(self) -> str:
        return "FhirAuthorization(<redacted>)"


class HookRequest(msgspec.Struct, frozen=True):
    """The body of a service call (CDS Hooks 2.0 "HTTP Request")."""

    hook: str
    hookInstance: str  # noqa: N815 - the wire name
    context: dict[str, Any]
    fhirServer: str | None = None  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @property
    def patient_id(self) -> str:
        value: str = self.context["patientId"]
        return value


class BundleLink(FhirElement):
    """Bundle.link: the ``next`` page of a prefetched searchset."""

    relation: str | None = None
    url: str | None = None


class PrefetchResource(Resource):
    """A prefetch value decoded straight into the reader's typed view, plus Bundle.link for paging."""

    link: list[BundleLink] | None = None


class TypedHookRequest(HookRequest, frozen=True):
    """A service call whose prefetch values decoded into typed resources (the common case, and the fast one)."""

    prefetch: dict[str, PrefetchResource | None] | None = None


class Coding(msgspec.Struct, frozen=True):
    """A FHIR Coding as feedback carries it; the sandbox sends no display."""

    code: str
    system: str | None = None
    display: str | None = None


class OverrideReason(msgspec.Struct, frozen=True):
    """Why the clinician overrode a card: a coded reason, a comment, or both (cds-fb-3)."""

    reason: Coding | None = None
    userComment: str | None = None  # noqa: N815


class AcceptedSuggestion(msgspec.Struct, frozen=True):
    """The uuid of a suggestion the clinician accepted."""

    id: str


class FeedbackItem(msgspec.Struct, frozen=True):
    """One card's outcome."""

    card: str
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: str  # noqa: N815
    acceptedSuggestions: list[AcceptedSuggestion] | None = None  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815


class FeedbackRequest(msgspec.Struct, frozen=True):
    """The body of a feedback call: one or more card outcomes."""

    feedback: list[FeedbackItem]


def _decode(body: bytes, kind: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise HookRequestError(f"{what} does not follow CDS Hooks 2.0: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HookRequestError(f"{what} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise HookRequestError(f"{what} is not valid UTF-8") from None
    except RecursionError:
        raise HookRequestError(f"{what} is nested too deeply") from None


_TYPED_REQUEST = msgspec.json.Decoder(TypedHookRequest)


def decode_hook_request(body: bytes) -> HookRequest:
    """Parse and check a service-call body; HookRequestError (HTTP 400) names what is wrong.

    Prefetch values decode straight into typed resources; a body that does not fit that view (an odd field shape
    anywhere, a value that is not a resource, or an invalid request) is decoded again as plain JSON, which keeps
    the lenient reading of odd resources and names what is wrong with an invalid request.
    """
    body = body.removeprefix(UTF8_BOM)  # JSON forbids one; some clients write it, as some FHIR servers do
    try:
        request: HookRequest = _TYPED_REQUEST.decode(body)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        request = _decode(body, HookRequest, "the hook request")
    _check_text("hookInstance", request.hookInstance)
    if request.fhirAuthorization is not None and not request.fhirServer:
        raise HookRequestError("fhirAuthorization is present but fhirServer is not (cds-r-1)")
    if request.fhirAuthorization is not None:
        _check_authorization(request.fhirAuthorization)
    if request.fhirServer is not None:
        _check_fhir_server(request.fhirServer)
    _check_context(request.hook, request.context)
    return request


def _check_authorization(authorization: FhirAuthorization) -> None:
    if authorization.token_type != "Bearer":
        raise HookRequestError("fhirAuthorization.token_type must be Bearer")
    if not B64TOKEN.fullmatch(authorization.access_token):  # the message never quotes the token
        raise HookRequestError(
            "fhirAuthorization.access_token must be a bearer token (RFC 6750 b64token: ASCII letters, digits "
            "and -._~+/ with optional trailing =)"
        )


def _check_fhir_server(server: str) -> None:
    """An http(s) URL with a host, as the outbound client reads it: a URL it cannot read (a host that is no valid
    internationalised name, such as ``xn--a.invalid``) is the client's error, found before any work is done."""
    parsed = http_url(server) if server.startswith(("https://", "http://")) else None
    if parsed is None or not parsed.host:
        raise HookRequestError("fhirServer must be an http(s) URL with a valid host name")


def _check_text(name: str, value: str, limit: int = MAX_ID_CHARS) -> None:
    if not value.strip() or len(value) > limit:
        raise HookRequestError(f"{name} must be a non-empty string of at most {limit} characters")
    _check_no_nul(name, value)


def _check_no_nul(name: str, value: str | None) -> None:
    if value is not None and "\x00" in value:
        raise HookRequestError(f"{name} holds a NUL character")


def _check_context(hook: str, context: dict[str, Any]) -> None:
    for name in CONTEXT_REQUIRED.get(hook, ("patientId",)):
        if name not in context:
            raise HookRequestError(f"context.{name} is required for {hook}")
    if "userId" in context and (not isinstance(context["userId"], str) or not context["userId"].strip()):
        raise HookRequestError("context.userId must be a non-empty string")
    for name in ("patientId", "encounterId"):
        if name in context and (not isinstance(context[name], str) or not FHIR_ID.fullmatch(context[name])):
            raise HookRequestError(f"context.{name} must be a FHIR id (1 to 64 letters, digits, '-' or '.')")
    if "draftOrders" in context:
        orders = context["draftOrders"]
        if not isinstance(orders, dict) or orders.get("resourceType") != "Bundle":
            raise HookRequestError("context.draftOrders must be a FHIR Bundle")
        if not isinstance(orders.get("entry", []), list):
            raise HookRequestError("context.draftOrders.entry must be an array")
    if "selections" in context:
        selections = context["selections"]
        if not isinstance(selections, list) or not all(isinstance(s, str) and s for s in selections):
            raise HookRequestError("context.selections must be an array of references")
        drafts = _draft_references(context.get("draftOrders"))
        missing = [s for s in selections if s not in drafts]
        if missing:  # else nothing is checked and the client hears nothing of it
            raise HookRequestError(f"context.selections names {missing[0][:200]!r}, which is not in draftOrders")


def _draft_references(orders: object) -> set[str]:
    """``Type/id`` of every resource in draftOrders (what order-select's selections point at)."""
    entries = orders.get("entry") if isinstance(orders, dict) else None
    resources = [entry.get("resource") for entry in entries or () if isinstance(entry, dict)]
    return {
        f"{resource['resourceType']}/{resource['id']}"
        for resource in resources
        if isinstance(resource, dict)
        and isinstance(resource.get("resourceType"), str)
        and isinstance(resource.get("id"), str)
    }


def decode_feedback(body: bytes) -> FeedbackRequest:
    """Parse and check a feedback body (cds-fb-1/2/3 and what the store can keep); HookRequestError (HTTP 400) names
    what is wrong."""
    request = _decode(body.removeprefix(UTF8_BOM), FeedbackRequest, "the feedback")
    request = FeedbackRequest([_canonical_ids(item) for item in request.feedback])
    if not request.feedback or len(request.feedback) > MAX_FEEDBACK_ITEMS:
        raise HookRequestError(f"feedback must hold 1 to {MAX_FEEDBACK_ITEMS} items")
    for index, item in enumerate(request.feedback):
        where = f"feedback[{index}]"
        _check_text(f"{where}.card", item.card)
        parse_timestamp(item.outcomeTimestamp, f"{where}.outcomeTimestamp")
        if item.outcome == "accepted" and not item.acceptedSuggestions:
            raise HookRequestError(f"{where}: an accepted outcome needs acceptedSuggestions (cds-fb-2)")
        # Only cds-fb-1..3 bind a client: an overridden card that names suggestions, or an accepted one with a
        # reason, is stored as sent (refusing it would lose the report's other items with it).
        for at, suggestion in enumerate(item.acceptedSuggestions or ()):
            _check_text(f"{where}.acceptedSuggestions[{at}].id", suggestion.id)
        reason = item.overrideReason
        if reason is not None:
            _check_override_reason(f"{where}.overrideReason", reason)
    return request


def canonical_id(value: str) -> str:
    """A card or suggestion id as we issue it: a uuid in lower case without a ``urn:uuid:`` prefix (uuid hex is
    case-insensitive, and a client may send one upper-cased); any other id as sent."""
    found = UUID_TEXT.fullmatch(value)
    return found.group(1).lower() if found else value


def _canonical_ids(item: FeedbackItem) -> FeedbackItem:
    accepted = item.acceptedSuggestions
    return msgspec.structs.replace(
        item,
        card=canonical_id(item.card),
        acceptedSuggestions=None if accepted is None else [AcceptedSuggestion(canonical_id(s.id)) for s in accepted],
    )


def _check_override_reason(where: str, reason: OverrideReason) -> None:
    if reason.reason is None and not reason.userComment:
        raise HookRequestError(f"{where} needs a reason or a userComment (cds-fb-3)")
    _check_no_nul(f"{where}.userComment", reason.userComment)
    if reason.reason is not None:
        _check_text(f"{where}.reason.code", reason.reason.code, MAX_CODE_CHARS)
        if reason.reason.system is not None:
            _check_text(f"{where}.reason.system", reason.reason.system, MAX_URL_CHARS)
        _check_no_nul(f"{where}.reason.display", reason.reason.display)


def parse_timestamp(value: str, where: str) -> datetime:
    """An RFC 3339 instant with an offset, as a timezone-aware datetime."""
    if not RFC3339.fullmatch(value):
        raise HookRequestError(f"{where} is not an RFC 3339 date-time with a UTC offset (such as 2026-11-25T06:00:00Z)")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HookRequestError(f"{where} is not an RFC 3339 date-time") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-05:00 is past the last instant a datetime holds
        raise HookRequestError(f"{where} is outside the years 1 to 9999 in UTC") from None
