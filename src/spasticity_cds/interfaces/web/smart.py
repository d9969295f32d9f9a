"""SMART App Launch 2 (EHR and standalone): discovery, PKCE S256, code exchange, FHIR reads, then the plan page."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from spasticity_cds import api
from spasticity_cds.cds_hooks.fhir_client import url_within
from spasticity_cds.cds_hooks.urls import LOOPBACK_HOSTS, http_url
from spasticity_cds.errors import SpasticityCdsError, StoreError
from spasticity_cds.interfaces.web.config import ConfigError
from spasticity_cds.interfaces.web.csrf import SESSION_COOKIE, BadSignatureError, app_secret, session_signer
from spasticity_cds.interfaces.web.deps import AppState, app_state
from spasticity_cds.interfaces.web.plan_view import build_plan, storable_card_id
from spasticity_cds.interfaces.web.rendering import render, set_app_cookie
from spasticity_cds.interfaces.web.smart_sessions import SmartSession, SmartSessions

logger = logging.getLogger(__name__)
router = APIRouter()
StateDep = Annotated[AppState, Depends(app_state)]

RESOURCE_TYPES = ("Condition", "MedicationRequest", "Observation", "Procedure")
FHIR_SCOPES = " ".join(f"patient/{t}.rs" for t in ("Patient", *RESOURCE_TYPES))
EHR_SCOPE = f"launch openid fhirUser {FHIR_SCOPES}"
STANDALONE_SCOPE = f"launch/patient openid fhirUser {FHIR_SCOPES}"
DEFAULT_CLIENT_ID = "spasticity-cds"
MAX_PAGES = 20
MAX_RESOURCES = 20_000
#: Pending launches kept at most (all workers together); beyond it the oldest goes, a logged-in session never.
MAX_PENDING_LAUNCHES = 10_000
DEFAULT_TOKEN_LIFETIME_S = 300.0
JSON_ACCEPT = {"Accept": "application/json"}
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id datatype
#: Longer than any rule id the knowledge base gives (the page highlights a rule only if the knowledge base has it).
MAX_RULE_ID_CHARS = 255
STORE_DOWN = "Launch sessions cannot be kept or read right now. Try again in a moment."
NOT_SET_UP = (
    "SMART launch is not set up on this server: it needs the EHRs registered (smart_clients_file or "
    "fhir_server_allowlist)"
)
OPEN_LAUNCH_WARNING = (
    "SMART LAUNCH IS OPEN TO ANY FHIR SERVER (smart_allow_any_iss = true): this service will contact and redirect "
    "to whatever server a launch names. Local demo only, never with real patient data."
)


class SmartError(SpasticityCdsError):
    """A SMART launch step failed; the message is safe to show and holds no token or patient data."""

    http_status = 502


class SmartTimeoutError(SmartError):
    """A step of the launch ran out of its time (``smart_step_timeout_s``)."""

    http_status = 504


class SmartLaunchRefusedError(SmartError):
    """The launch names an invalid or unregistered FHIR server (the request is at fault, not the server)."""

    http_status = 400


@dataclass(frozen=True)
class SmartClient:
    """How this app is registered with one EHR (FHIR base URL = issuer)."""

    iss: str
    client_id: str
    client_secret: str | None = None
    scope: str | None = None
    label: str | None = None
    #: False for any server a demo accepts (smart_allow_any_iss): its failures are not described (no probing).
    vetted: bool = True


def _sessions(request: Request, state: AppState) -> SmartSessions:
    """The app's SMART sessions, kept in its store so that every worker and host sees the same ones."""
    sessions: SmartSessions | None = getattr(request.app.state, "smart_sessions", None)
    if sessions is None:
        secret = app_secret(request, state)
        max_age = state.settings.session_max_age_s
        sessions = SmartSessions(state.store, secret, max_age_s=max_age, max_pending=MAX_PENDING_LAUNCHES)
        request.app.state.smart_sessions = sessions
    return sessions


def load_clients(path: Path | None) -> list[SmartClient] | None:
    """Registered clients from a TOML or JSON file (``[[clients]]`` with iss and client_id); None when unset.

    ConfigError if the file cannot be read or is malformed: ``serve`` checks it before it starts.
    """
    if path is None:
        return None
    try:
        text = path.read_text("utf-8")
        raw: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"cannot read the SMART clients: {exc}", where=str(path)) from None
    clients = raw.get("clients") if isinstance(raw, dict) else None
    if not isinstance(clients, list):
        raise ConfigError("the SMART clients file needs a list named clients", where=str(path))
    return [_client(item, path) for item in clients]


def _client(item: Any, path: Path) -> SmartClient:
    if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in ("iss", "client_id")):
        raise ConfigError("each SMART client needs iss and client_id strings", where=str(path))
    if not _is_base_url(item["iss"]):
        raise ConfigError(f"SMART client iss {item['iss']!r} is not an http(s) URL", where=str(path))
    secret, scope, label = optional = [item.get(key) for key in ("client_secret", "scope", "label")]
    if not all(value is None or isinstance(value, str) for value in optional):
        raise ConfigError("a SMART client's client_secret, scope and label must be strings", where=str(path))
    return SmartClient(normalized_iss(item["iss"]), item["client_id"], secret, scope, label)


def _is_base_url(url: str) -> bool:
    """An http(s) URL with a host, as the outbound client reads it (an ``iss`` it cannot read, such as a host of
    ``xn--a.invalid`` or an unclosed ``[``, is refused, never a 500)."""
    parsed = http_url(url)
    return parsed is not None and parsed.scheme in ("http", "https") and bool(parsed.host)


def normalized_iss(iss: str) -> str:
    """``iss`` as compared with the registrations: scheme and host in lower case (they are case-insensitive), no
    trailing slash; the path is kept as is (FHIR paths are case-sensitive)."""
    parts = urlsplit(iss.strip())
    return parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()).geturl().rstrip("/")


@dataclass(frozen=True)
class Registrations:
    """The SMART clients file as read once per process, or why it could not be."""

    clients: list[SmartClient] | None
    problem: str = ""


def registrations(request: Request, state: AppState) -> Registrations:
    """The SMART clients file, read (and a broken one logged) once per app."""
    cached: Registrations | None = getattr(request.app.state, "smart_registrations", None)
    if cached is None:
        try:
            cached = Registrations(load_clients(state.settings.smart_clients_file))
        except ConfigError as error:
            logger.error("SMART clients file unusable: %s (%s)", error.message, error.where or "-")
            cached = Registrations(None, "SMART launch is unavailable: its configuration is broken (logged).")
        if cached.clients is None and not state.settings.fhir_server_allowlist and state.settings.smart_allow_any_iss:
            logger.warning(OPEN_LAUNCH_WARNING)
        request.app.state.smart_registrations = cached
    return cached


def client_for(iss: str, state: AppState, registered: list[SmartClient] | None) -> SmartClient:
    """The registration for ``iss``: from the clients file, else a public client for an allow-listed server (or any
    server, if ``smart_allow_any_iss`` says this is a demo); SmartLaunchRefusedError otherwise."""
    if not _is_base_url(iss):
        raise SmartLaunchRefusedError("the launch did not name a valid FHIR server (iss)")
    wanted = normalized_iss(iss)
    if registered is not None:
        for client in registered:
            if client.iss == wanted:
                return client
        raise SmartLaunchRefusedError("this FHIR server is not registered for SMART launch")
    allowed = state.settings.fhir_server_allowlist
    if allowed:
        if not any(url_within(wanted, entry) for entry in allowed):  # as the hooks' fhirServer
            raise SmartLaunchRefusedError("this FHIR server is not registered for SMART launch")
        return SmartClient(iss=wanted, client_id=DEFAULT_CLIENT_ID)
    if not state.settings.smart_allow_any_iss:
        raise SmartLaunchRefusedError(NOT_SET_UP)
    return SmartClient(iss=wanted, client_id=DEFAULT_CLIENT_ID, vetted=False)


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@asynccontextmanager
async def _step(state: AppState, what: str) -> AsyncIterator[Outbound]:
    """HTTP for one launch step (discovery, token, the patient reads), which must end within its overall deadline.

    A per-read timeout alone let a server that trickles a byte at a time hold the launch for ever.
    """
    budget = state.settings.smart_step_timeout_s
    try:
        async with asyncio.timeout(budget), httpx.AsyncClient(timeout=budget) as http:
            yield Outbound(http, state.settings.smart_max_response_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise SmartTimeoutError(f"{what} did not answer within {budget:g} seconds; try again later") from None


@dataclass(frozen=True)
class Answer:
    """A response read whole (within the byte cap)."""

    status: int
    body: bytes

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None if it is not one."""
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None


@dataclass(frozen=True)
class Outbound:
    """An HTTP client that reads at most ``max_bytes`` of any answer."""

    http: httpx.AsyncClient
    max_bytes: int

    async def fetch(self, what: str, method: str, url: str, **options: Any) -> Answer:
        """The whole answer; SmartError if ``what`` cannot be reached or sends more than the cap."""
        try:
            async with self.http.stream(method, url, **options) as response:
                return Answer(response.status_code, await self._capped_body(what, response))
        except httpx.TimeoutException:
            raise  # the step's deadline reports it
        except httpx.HTTPError:
            raise SmartError(f"{what} could not be reached") from None

    async def _capped_body(self, what: str, response: httpx.Response) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise SmartError(f"{what} sent more than {self.max_bytes} bytes")
        return bytes(body)


async def discover(outbound: Outbound, iss: str) -> dict[str, Any]:
    """``{iss}/.well-known/smart-configuration``, checked for the endpoints and S256 support."""
    what = "the FHIR server's SMART configuration"
    answer = await outbound.fetch(what, "GET", f"{iss}/.well-known/smart-configuration", headers=JSON_ACCEPT)
    if answer.status != 200:
        raise SmartError(f"{what} answered HTTP {answer.status}")
    config = answer.json_object()
    if config is None:
        raise SmartError(f"{what} is not a JSON object")
    for key in ("authorization_endpoint", "token_endpoint"):
        value = config.get(key)
        if not isinstance(value, str) or not _is_base_url(value):  # one httpx cannot read would fail later, a 500
            raise SmartError(f"the SMART configuration has no usable {key}")
    if not _may_use_plain_http(config["token_endpoint"], iss):
        raise SmartError("the token endpoint is not https (the code and the token would cross the network in clear)")
    methods = config.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise SmartError("the authorization server does not offer PKCE S256, which SMART App Launch 2 requires")
    return config


def _issuers(config: dict[str, Any], iss: str) -> frozenset[str]:
    issuer = config.get("issuer")
    # The EHR's own text: one that is no URL is left out (urlsplit raises on some, such as an unclosed "[").
    named = [issuer] if isinstance(issuer, str) and _is_base_url(issuer) else []
    return frozenset(normalized_iss(url) for url in (iss, *named))


def _may_use_plain_http(endpoint: str, iss: str) -> bool:
    """An https endpoint; plain http only on this machine, for a FHIR server that is itself plain http here."""
    if urlsplit(endpoint).scheme == "https":
        return True
    return all(urlsplit(url).scheme == "http" and urlsplit(url).hostname in LOOPBACK_HOSTS for url in (endpoint, iss))


@router.get("/smart/launch", response_model=None)
async def smart_launch(request: Request, state: StateDep) -> Response:
    """EHR launch (``iss`` and ``launch``) or standalone launch (``iss`` only); without ``iss`` a chooser page."""
    iss = request.query_params.get("iss", "").strip()
    launch = request.query_params.get("launch", "").strip()
    registered = registrations(request, state)
    if registered.problem:
        return _error(request, state, registered.problem, 500)
    if not iss:
        return _chooser(request, state, registered.clients)
    try:
        client = client_for(iss, state, registered.clients)
        config = await _discovered(state, client)
    except SmartError as error:
        return _error(request, state, error.message, error.http_status)
    browser = _browser_id(request, state) or secrets.token_urlsafe(24)
    verifier, challenge = pkce_pair()
    session = SmartSession(
        iss=client.iss,
        client_id=client.client_id,
        browser=browser,
        verifier=verifier,
        token_endpoint=config["token_endpoint"],
        issuers=_issuers(config, client.iss),
    )
    # The pending launch is found again by its OAuth state: each launch is its own entry, so a second launch in
    # the same browser leaves the first one (and its plan tab) alone.
    try:
        oauth_state = await _sessions(request, state).start(session)
    except StoreError as error:
        return _store_down(request, state, "launch", error)
    scope = client.scope or (EHR_SCOPE if launch else STANDALONE_SCOPE)
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri(state),
        "scope": scope,
        "state": oauth_state,
        "aud": iss,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch
    separator = "&" if "?" in config["authorization_endpoint"] else "?"
    response = RedirectResponse(config["authorization_endpoint"] + separator + urlencode(params), status_code=302)
    _set_browser_cookie(response, request, state, browser)
    return response


def _chooser(request: Request, state: AppState, clients: list[SmartClient] | None) -> HTMLResponse:
    settings = state.settings
    context = {
        "title": "Open a patient from an EHR",
        "clients": clients or [],
        "set_up": settings.smart_launch_on,
    }
    # The form's GET is answered with a redirect to the EHR's authorization server, wherever that is.
    return render(request, state, "smart_launch.html", context, form_targets="https: http:")


async def _discovered(state: AppState, client: SmartClient) -> dict[str, Any]:
    what = "the FHIR server's SMART configuration"
    try:
        async with _step(state, what) as outbound:
            return await discover(outbound, client.iss)
    except SmartError as error:
        raise _as_shown(error, client, what) from None


def _as_shown(error: SmartError, client: SmartClient, what: str) -> SmartError:
    """The error in full for a registered server; for any server a demo accepts, one message per step whatever
    went wrong, so the page does not tell whether a host inside the network answered (no probing through the app:
    such a server's configuration also names the token endpoint)."""
    if client.vetted:
        return error
    logger.info("SMART launch failed toward an unregistered server: %s", error.message)
    return SmartError(f"{what} could not be used")


def redirect_uri(state: AppState) -> str:
    """Where the authorization server sends the browser back to."""
    return state.settings.public_base_url.rstrip("/") + "/smart/callback"


def _set_browser_cookie(response: Response, request: Request, state: AppState, browser: str) -> None:
    """(Re)sign the browser's id: the same value, so sessions launched earlier in this browser stay its own."""
    set_app_cookie(response, state, SESSION_COOKIE, session_signer(request, state).sign(browser))


def _browser_id(request: Request, state: AppState) -> str | None:
    """The random id this browser got on its first launch (signed cookie), or None."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    try:
        return session_signer(request, state).unsign(cookie, max_age_s=state.settings.session_max_age_s)
    except BadSignatureError:
        return None


def _store_down(request: Request, state: AppState, step: str, error: StoreError) -> HTMLResponse:
    """503: the store did not answer; nothing was half-kept (each store call is one transaction)."""
    logger.error("SMART %s: the session store failed: %s", step, error.message)
    return _error(request, state, STORE_DOWN, 503)


def _owned(session: SmartSession | None, browser: str) -> SmartSession | None:
    """The session if this browser started it: its id in a URL is not enough on its own."""
    if session is None or not hmac.compare_digest(session.browser.encode(), browser.encode()):
        return None
    return session


@router.get("/smart/callback", response_model=None)
async def smart_callback(request: Request, state: StateDep) -> Response:
    """Check ``state``, exchange the code (with the PKCE verifier) for a token and the patient context."""
    browser = _browser_id(request, state)
    if browser is None:
        return _error(
            request, state, "This launch has expired or was started in another browser. Launch the app again.", 401
        )
    # Taken whatever happens next: a state is good for one callback only, in whichever worker or host it lands.
    try:
        taken = await _sessions(request, state).take_pending(request.query_params.get("state", ""))
    except StoreError as error:
        return _store_down(request, state, "callback", error)
    session = _owned(taken, browser)
    if session is None:
        return _error(request, state, "The launch could not be verified (state mismatch). Launch the app again.", 400)
    registered = registrations(request, state)
    if registered.problem:
        return _error(request, state, registered.problem, 500)
    client = _registered_client(state, registered, session)
    if client is None:
        return _error(request, state, "This EHR's registration changed during the launch. Launch the app again.", 400)
    returned_iss = request.query_params.get("iss")
    if returned_iss is not None and normalized_iss(returned_iss) not in session.issuers:  # RFC 9207: mix-up attack
        return _error(request, state, "The answer came from another authorization server. Launch the app again.", 400)
    if request.query_params.get("error"):
        code = request.query_params.get("error", "")[:60]
        return _error(request, state, f"The EHR did not authorise the app ({code}).", 401)
    code = request.query_params.get("code", "")
    if not code:
        return _error(request, state, "The EHR returned no authorisation code.", 400)
    try:
        async with _step(state, "The EHR's token endpoint") as outbound:
            token = await exchange_code(outbound, session, client, code, redirect_uri(state))
    except SmartError as error:
        shown = _as_shown(error, client, "The EHR's token endpoint")
        return _error(request, state, shown.message, shown.http_status)
    patient = token.get("patient")
    if not isinstance(patient, str) or not patient:
        return _error(request, state, "The EHR gave no patient context; open the app from a patient's chart.", 400)
    if not FHIR_ID.fullmatch(patient):  # it goes into the FHIR URLs we read: no path, query or odd characters
        return _error(request, state, "The EHR gave a patient id that is not a valid FHIR id.", 502)
    session.verifier = ""
    session.access_token = token["access_token"]
    session.patient = patient
    context = token.get("appContext")
    if isinstance(context, dict):
        context = json.dumps(context)
    card_uuid, rule_id = _card_context(context if isinstance(context, str) else "")
    # Only what the page uses, within the store's sizes: an id too long to store with feedback is left off the page.
    session.card_uuid = card_uuid if card_uuid and storable_card_id(card_uuid) else None
    session.rule_id = rule_id if rule_id and len(rule_id) <= MAX_RULE_ID_CHARS else None
    lifetime = token_lifetime_s(token.get("expires_in"), state.settings.session_max_age_s)
    # A new id once logged in (the state travelled through the EHR and its logs): no fixation, no replay.
    try:
        plan_id = await _sessions(request, state).log_in(session, timedelta(seconds=lifetime))
    except StoreError as error:
        return _store_down(request, state, "login", error)
    return RedirectResponse(f"/smart/plan/{plan_id}", status_code=303)


def _registered_client(state: AppState, registered: Registrations, session: SmartSession) -> SmartClient | None:
    """The launch's registration, looked up again (its secret is never stored with the session); None if the
    worker or host that took the callback does not register that client for that server (any longer)."""
    try:
        client = client_for(session.iss, state, registered.clients)
    except SmartError:
        return None
    return client if client.client_id == session.client_id else None


def token_lifetime_s(expires_in: Any, longest_s: int) -> float:
    """The token's lifetime: ``expires_in`` if it is a sane number of seconds (not NaN, a bool, negative or
    absurd), capped at the session's; else 5 minutes."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not math.isfinite(expires_in):
        return DEFAULT_TOKEN_LIFETIME_S
    return min(float(expires_in), float(longest_s)) if expires_in > 0 else DEFAULT_TOKEN_LIFETIME_S


async def exchange_code(
    outbound: Outbound, session: SmartSession, client: SmartClient, code: str, callback_url: str
) -> dict[str, Any]:
    """The token response for ``code``, sent with the PKCE verifier (and the secret of a confidential client)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": callback_url,
        "code_verifier": session.verifier,
        "client_id": client.client_id,
    }
    options: dict[str, Any] = {"data": form, "headers": JSON_ACCEPT}
    if client.client_secret:
        options["auth"] = httpx.BasicAuth(client.client_id, client.client_secret)
    answer = await outbound.fetch("The EHR's token endpoint", "POST", session.token_endpoint, **options)
    token = answer.json_object() if answer.status == 200 else None
    if token is None or not isinstance(token.get("access_token"), str):
        raise SmartError(f"The EHR refused the token request (HTTP {answer.status}).")
    return token


async def read_patient_resources(
    outbound: Outbound, base: str, patient_id: str, access_token: str
) -> list[dict[str, Any]]:
    """The Patient and its Condition, MedicationRequest, Observation and Procedure resources (paged searches)."""
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}
    patient = await _get_json(outbound, f"{base}/Patient/{patient_id}", headers)
    if patient.get("resourceType") != "Patient" or patient.get("id") != patient_id:
        raise SmartError("the FHIR server did not return the launch's Patient")
    resources: list[dict[str, Any]] = [patient]
    for resource_type in RESOURCE_TYPES:
        url: str | None = f"{base}/{resource_type}?{urlencode({'patient': patient_id, '_count': 200})}"
        read: set[str] = set()
        # A next link to a page already read (itself, or an earlier one) ends the search: no paging loop.
        while url and url not in read and len(read) < MAX_PAGES and len(resources) < MAX_RESOURCES:
            bundle = await _get_json(outbound, url, headers)
            read.add(url)
            for entry in bundle.get("entry") or ():
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType") == resource_type:
                    resources.append(resource)
            url = _next_link(bundle, base)
    return resources


def _next_link(bundle: dict[str, Any], base: str) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            # Never send the token to another host: follow only links under the same FHIR base.
            return link["url"] if url_within(link["url"], base) and link["url"] != base else None
    return None


async def _get_json(outbound: Outbound, url: str, headers: dict[str, str]) -> dict[str, Any]:
    answer = await outbound.fetch("the FHIR server", "GET", url, headers=headers)
    if answer.status in (401, 403):
        raise SmartError("the FHIR server refused access (the session may have expired); launch the app again")
    if answer.status != 200:
        raise SmartError(f"the FHIR server answered HTTP {answer.status}")
    body = answer.json_object()
    if body is None:
        raise SmartError("the FHIR server's answer is not a JSON object")
    return body


def _card_context(app_context: str) -> tuple[str | None, str | None]:
    """The card uuid and rule id a CDS Hooks ``smart`` link put in ``appContext`` (``cardUuid``, ``ruleId``)."""
    try:
        parsed = json.loads(app_context) if app_context else None
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    card = parsed.get("cardUuid", parsed.get("card"))
    rule = parsed.get("ruleId", parsed.get("rule"))
    return (card if isinstance(card, str) else None), (rule if isinstance(rule, str) else None)


@router.get("/smart/plan/{session_id}", response_class=HTMLResponse)
async def smart_plan(session_id: str, request: Request, state: StateDep) -> HTMLResponse:
    """The launched patient's plan, read fresh from the EHR with the token of the session named in the URL."""
    browser = _browser_id(request, state)
    try:
        # Without a valid browser cookie the store is not asked at all.
        session = _owned(await _sessions(request, state).find_active(session_id), browser) if browser else None
    except StoreError as error:
        return _store_down(request, state, "plan", error)
    if session is None or not session.access_token:  # the store keeps it only until it expires
        return _error(request, state, "Your session has expired. Launch the app again from the EHR.", 401)
    try:
        async with _step(state, "the FHIR server") as outbound:
            resources = await read_patient_resources(outbound, session.iss, session.patient, session.access_token)
        record = api.read_patient(resources, source="SMART launch")
    except SpasticityCdsError as error:
        return _error(request, state, error.message, error.http_status if error.http_status != 500 else 502)
    card_uuid, rule_id = session.card_uuid, session.rule_id
    now = state.clock()
    try:
        plan = await run_in_threadpool(
            partial(
                build_plan,
                record,
                state.engine,
                now,
                state.settings.kb_settings or None,
                highlight_rule=rule_id if rule_id in state.engine.kb.rules else None,
                card_uuid=card_uuid,
                source_label="Opened from the EHR (SMART launch)",
            )
        )
    except SpasticityCdsError as error:
        logger.error("SMART plan: %s at %s", type(error).__name__, error.where or "-")
        return _error(request, state, "The plan could not be computed for this record; the error has been logged.", 500)
    context = {
        "title": f"Plan for {plan.patient['name']}",
        "plan": plan,
        "return_to": f"/smart/plan/{session_id}",
        "fact_boundaries": plan.fact_boundaries,
    }
    return render(request, state, "plan.html", context)


def _error(request: Request, state: AppState, message: str, status: int) -> HTMLResponse:
    return render(
        request, state, "error.html", {"title": "Could not open the patient", "message": message}, status_code=status
    )
