"""CDS Hooks 2.0 routes: discovery, service calls and feedback, each behind the client JWT check."""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from time import sleep
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route

from spasticity_cds.cds_hooks.cards import IssuedCardInfo
from spasticity_cds.cds_hooks.fhir_client import FhirFetcher
from spasticity_cds.cds_hooks.models import FeedbackItem, decode_feedback, decode_hook_request, parse_timestamp
from spasticity_cds.cds_hooks.runner import Fetcher, HookRunner, RunnerConfig
from spasticity_cds.cds_hooks.security import JsonObject, JwtVerifier, KeyFetchNeeded
from spasticity_cds.cds_hooks.services import ServiceCatalogue, ServiceSpec
from spasticity_cds.cds_hooks.writer import BatchWriter
from spasticity_cds.errors import AuthenticationError, HookRequestError
from spasticity_cds.interfaces.web.config import WebSettings, load_trusted_issuers
from spasticity_cds.interfaces.web.deps import AppState, app_state
from spasticity_cds.interfaces.web.errors import JSON_HEADERS
from spasticity_cds.store import FeedbackOutcome, HookFeedback, IssuedCard, hash_patient_ref

logger = logging.getLogger("spasticity_cds.cds_hooks")
router = APIRouter()
JWKS_TIMEOUT_S = 2.0
JOIN_RETRY_S = 0.2
TOKEN_CHECK_THREADS = 32
DISCOVERY_PATH = "/cds-services"
FEEDBACK_PATH = "/cds-services/{service_id}/feedback"
#: The media types a POST body is read as: JSON, plain or with a structured-syntax suffix (application/fhir+json).
JSON_MEDIA_TYPE = re.compile(r"application/(?:[^\s/;]+\+)?json", re.IGNORECASE)
NOT_JSON = (
    "the body must be JSON, sent with the Content-Type application/json, application/fhir+json "
    "or another application/*+json type"
)
#: The threads for the I/O of token checks (the replay write; a check that must fetch a JWKS): enough for every call
#: in flight, so one never queues behind others (threads start on first use).
_TOKEN_CHECKERS = ThreadPoolExecutor(TOKEN_CHECK_THREADS, thread_name_prefix="jwt-check")


@dataclass
class HooksState:
    """The CDS Hooks parts of one app: services, the runner and the JWT verifier (None when auth is off)."""

    catalogue: ServiceCatalogue
    runner: HookRunner
    verifier: JwtVerifier | None
    cards: BatchWriter[IssuedCard]
    #: Hook calls this worker is answering now (read and written on its event loop only).
    calls_in_flight: int = 0


def build_hooks_state(state: AppState, fetcher: Fetcher | None = None) -> HooksState:
    """Services from the engine, a runner with the outbound FHIR fetcher, and the verifier from the settings."""
    settings = state.settings
    catalogue = ServiceCatalogue(state.engine)
    config = RunnerConfig(
        base_url=settings.base_url,
        smart_launch_url=settings.card_launch_url,
        kb_settings=dict(settings.kb_settings),
        fhir_server_allowlist=settings.fhir_server_allowlist,
    )
    runner = HookRunner(catalogue, fetcher or FhirFetcher(budget_s=settings.fhir_timeout_s), config)
    writer: BatchWriter[IssuedCard] = BatchWriter(state.store.record_issued_cards)
    return HooksState(catalogue, runner, _verifier(state, settings), writer)


def _verifier(state: AppState, settings: WebSettings) -> JwtVerifier | None:
    if not settings.auth_required:
        logger.warning(
            "CDS HOOKS AUTHENTICATION IS OFF (auth_required = false): any caller can use the service. "
            "Never run like this with real patient data."
        )
        return None
    issuers = load_trusted_issuers(settings.trusted_issuers_file) if settings.trusted_issuers_file else []
    if not issuers:
        logger.warning("no trusted CDS clients configured (trusted_issuers_file): every hook call will get 401")

    def remember_jti(issuer: str, jti: str, keep_until: datetime) -> bool:
        return bool(state.store.remember_jti(issuer, jti, keep_until))

    def remember_jti_at_once(issuer: str, jti: str, keep_until: datetime) -> bool | None:
        new: bool | None = state.store.remember_jti_at_once(issuer, jti, keep_until)
        return new

    return JwtVerifier(issuers, remember_jti, state.clock, replay_at_once=remember_jti_at_once, fetch_jwks=_fetch_jwks)


def _fetch_jwks(url: str) -> JsonObject:
    response = httpx.get(url, timeout=JWKS_TIMEOUT_S, follow_redirects=False)
    response.raise_for_status()
    document: JsonObject = response.json()
    return document


async def hooks_state(request: Request) -> HooksState:
    """FastAPI dependency: the HooksState the app was created with."""
    hooks: HooksState = request.app.state.hooks
    return hooks


def _json(body: Any) -> Response:
    """A hook answer: cards and discovery are about one patient or this service, so never cached or sniffed."""
    return Response(orjson.dumps(body), media_type="application/json", headers=JSON_HEADERS)


async def _authenticate(request: Request, hooks: HooksState, audience: str) -> None:
    """Verify the client JWT and remember its jti before anything else is done; AuthenticationError if it fails.

    The checks up to the signature and claims run inline on the event loop: they are CPU only, and running them
    there was measured faster than in a thread (p50 at 1 client 2.44-2.58 ms against 2.79-2.91 ms, p99 at 16
    concurrent clients 51-68 ms against 71-79 ms), the thread hop and GIL contention costing more than the overlap.
    The replay write runs on the loop too when this is the only call in flight and the store can do it without
    waiting (`remember_jti_at_once`: a SQLite file no other thread or process is writing to), for the same reason:
    at one client it was 0.5-0.6 ms faster at the p50. With other calls in flight it goes to a thread, where its
    commit's fsync overlaps their work instead of pausing the loop they share (on the loop the p99 at 16 clients was
    10-40 % longer). Any other I/O stays off the loop,
    in a thread of a pool kept for it: the replay write that would wait (for a lock, or a PostgreSQL round trip),
    or, when the key of an allowed jku is not cached or is due for a refresh (at most once a minute per URL), the
    whole check with its JWKS fetch. Nothing of this runs beside the call's own decoding and evaluation: both need
    the GIL, and that was measured slower, not faster (in-process, PostgreSQL store: 5.4 ms a call against 3.6 ms).
    """
    verifier = hooks.verifier
    if verifier is None:
        return
    token = _bearer_token(request)
    checked = verifier.check(token, audience)
    loop = asyncio.get_running_loop()
    if isinstance(checked, KeyFetchNeeded):
        await loop.run_in_executor(_TOKEN_CHECKERS, verifier.verify, token, audience)
    elif hooks.calls_in_flight > 1 or verifier.check_replay_at_once(checked) is None:
        await loop.run_in_executor(_TOKEN_CHECKERS, verifier.check_replay, checked)


def _bearer_token(request: Request) -> str:
    """The token of the Authorization header; AuthenticationError if there is no bearer token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("no bearer token in the Authorization header")
    return token


def _require_json(request: Request) -> None:
    """415 for a body declared as anything but JSON: a form (what ``curl -d`` sends), multipart, plain text."""
    declared = request.headers.get("content-type")
    # A body without a Content-Type is read as JSON: some EHR clients send none, and the decoder checks the body
    # as JSON whatever it is declared as, so refusing those calls would turn working clients away for nothing.
    if declared and not JSON_MEDIA_TYPE.fullmatch(declared.partition(";")[0].strip()):
        raise HTTPException(415, NOT_JSON)


def _service(hooks: HooksState, service_id: str) -> ServiceSpec:
    service = hooks.catalogue.get(service_id)
    if service is None:
        raise HTTPException(404, f"no CDS service {service_id!r}; see GET /cds-services")
    return service


StateDep = Annotated[AppState, Depends(app_state)]
HooksDep = Annotated[HooksState, Depends(hooks_state)]


# HEAD is registered after GET, so that a 405 names GET (the first route matching the path answers it); one route
# for both methods would give OpenAPI two operations with one id.
@router.head(DISCOVERY_PATH, include_in_schema=False)
@router.get(DISCOVERY_PATH)
async def discovery(request: Request, state: StateDep, hooks: HooksDep) -> Response:
    """The services, their hooks and prefetch templates."""
    await _authenticate(request, hooks, state.settings.base_url + DISCOVERY_PATH)
    return _json(hooks.catalogue.discovery())


async def call_service(request: Request) -> Response:
    """One hook call: cards for the decision at hand, or an empty list when there is nothing to say.

    A plain Starlette route (``service_route``), ahead of FastAPI's routing and dependency solving: EHRs call it on
    every order, and that machinery was a fifth of the cost of a call beyond the evaluation itself.
    """
    hooks: HooksState = request.app.state.hooks
    hooks.calls_in_flight += 1
    try:
        return await _answer_call(request, hooks)
    finally:
        hooks.calls_in_flight -= 1


async def _answer_call(request: Request, hooks: HooksState) -> Response:
    service_id: str = request.path_params["service_id"]
    state: AppState = request.app.state.cds
    await _authenticate(request, hooks, f"{state.settings.base_url}{DISCOVERY_PATH}/{service_id}")
    service = _service(hooks, service_id)
    _require_json(request)
    hook_request = decode_hook_request(await request.body())
    now = state.clock()
    result = await hooks.runner.run(service, hook_request, now)
    if result.issued and result.patient_reference and result.kb_version:
        records = _issued_cards(
            result.issued, service.id, hook_request.hookInstance, result.patient_reference, result.kb_version, now
        )
        hooks.cards.submit(records)
    logger.info(
        "hook %s instance %s: %d cards, %d keys fetched, %s ms",
        service.id,
        hook_request.hookInstance[:64],
        len(result.cards),
        result.fetched,
        result.timings_ms,
    )
    return _json({"cards": result.cards})


#: The service-call route, placed first in the app's routes (`create_app`).
service_route = Route("/cds-services/{service_id}", call_service, methods=["POST"])


def _issued_cards(
    issued: list[IssuedCardInfo], service_id: str, hook_instance: str, patient: str, kb_version: str, now: datetime
) -> list[IssuedCard]:
    patient_hash = hash_patient_ref(patient)
    return [
        IssuedCard(
            card.card_uuid,
            service_id,
            hook_instance,
            card.rule_id,
            card.rule_version,
            kb_version,
            patient_hash,
            now,
            card.suggestion_uuids,
        )
        for card in issued
    ]


@router.post(FEEDBACK_PATH)
async def feedback(
    service_id: str,
    request: Request,
    state: StateDep,
    hooks: HooksDep,
) -> Response:
    """Store what the clinician did with our cards (idempotent; a repeated report is not stored twice)."""
    await _authenticate(request, hooks, state.settings.base_url + FEEDBACK_PATH.format(service_id=service_id))
    service = _service(hooks, service_id)
    _require_json(request)
    body = decode_feedback(await request.body())
    now = state.clock()
    new, items = await run_in_threadpool(_store_feedback, state, hooks, service.id, body.feedback, now)
    logger.info("feedback %s: %d items, %d new", service.id, len(items), new)
    return _json({})


def _store_feedback(
    state: AppState, hooks: HooksState, service_id: str, feedback: list[FeedbackItem], now: datetime
) -> tuple[int, list[HookFeedback]]:
    """Join each item to its issued card and store them all (one transaction); returns (new, items)."""
    hooks.cards.flush()
    issued = _find_cards(state, {item.card for item in feedback})
    items = [_feedback_record(service_id, item, issued.get(item.card), now) for item in feedback]
    return state.store.record_hook_feedback(items), items


def _find_cards(state: AppState, card_uuids: set[str]) -> dict[str, IssuedCard]:
    """The issued cards found; those missing are looked up once more after a pause (one per report, not per
    card), since another worker may still be committing a card it just issued."""
    found = _issued(state, card_uuids)
    if len(found) < len(card_uuids):
        sleep(JOIN_RETRY_S)
        found |= _issued(state, card_uuids - found.keys())
    return found


def _issued(state: AppState, card_uuids: set[str]) -> dict[str, IssuedCard]:
    cards = {card_uuid: state.store.find_issued_card(card_uuid) for card_uuid in card_uuids}
    return {card_uuid: card for card_uuid, card in cards.items() if card is not None}


def _feedback_record(service_id: str, item: FeedbackItem, issued: IssuedCard | None, now: datetime) -> HookFeedback:
    if issued is not None and issued.service_id != service_id:
        raise HookRequestError(
            f"card {item.card} was issued by the service {issued.service_id}: "
            f"send its feedback to /cds-services/{issued.service_id}/feedback"
        )
    reason = item.overrideReason.reason if item.overrideReason else None
    accepted = tuple(s.id for s in item.acceptedSuggestions or ())
    known = issued.suggestion_uuids if issued is not None else None
    unknown = None if known is None else tuple(s for s in accepted if s not in known)
    if unknown:  # stored as sent and flagged: the spec names only the card's own suggestions
        logger.warning("feedback on card %s accepts %d suggestion(s) it did not carry", item.card[:64], len(unknown))
    return HookFeedback(
        service_id=service_id,
        card_uuid=item.card,
        outcome=FeedbackOutcome(item.outcome),
        outcome_timestamp=parse_timestamp(item.outcomeTimestamp, "outcomeTimestamp"),
        received_at=now,
        hook_instance=issued.hook_instance if issued else None,
        rule_id=issued.rule_id if issued else None,
        rule_version=issued.rule_version if issued else None,
        kb_version=issued.kb_version if issued else None,
        accepted_suggestions=accepted,
        override_reason_code=reason.code if reason else None,
        override_reason_system=reason.system if reason else None,
        override_reason_display=reason.display if reason else None,
        user_comment=item.overrideReason.userComment if item.overrideReason else None,
        unknown_suggestions=unknown,
    )
