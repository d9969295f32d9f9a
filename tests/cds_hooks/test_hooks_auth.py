"""Client JWT on every CDS Hooks call: each way a token fails gives a bare 401; auth off only when asked."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from spasticity_cds.interfaces.web import hooks_routes
from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import SqlFeedbackStore

from .helpers import BASE, REVIEW, Client, FrozenClock, call, hook_request, prefetch

SERVICE = f"/cds-services/{REVIEW}"
FEEDBACK = f"{SERVICE}/feedback"
DISCOVERY = "/cds-services"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _post(app: FastAPI, token: str | None, path: str = SERVICE, scheme: str = "Bearer") -> Any:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    body = hook_request("patient-view", prefetch_data=prefetch())
    return call(app, "POST", path, json=body, headers=headers)


def _stranger_token(client: Client) -> str:
    other = ec.generate_private_key(ec.SECP384R1())
    issued = int(client.clock().timestamp())
    claims = {"iss": client.iss, "aud": BASE + SERVICE, "iat": issued, "exp": issued + 300, "jti": "x-1"}
    return jwt.encode(claims, other, algorithm="ES384", headers={"kid": "ec-1", "typ": "JWT"})


FAILURES: dict[str, Callable[[Client], str | None]] = {
    "no token": lambda c: None,
    "not a JWT": lambda c: "not-a-jwt",
    "wrong audience": lambda c: c.token(BASE + "/cds-services/other"),
    "audience of the feedback endpoint": lambda c: c.token(BASE + FEEDBACK),
    "audience from another host": lambda c: c.token("https://evil.example.org" + SERVICE),
    "expired": lambda c: c.token(
        BASE + SERVICE, iat=int(c.clock().timestamp()) - 900, exp=int(c.clock().timestamp()) - 600
    ),
    "issued in the future": lambda c: c.token(
        BASE + SERVICE, iat=int(c.clock().timestamp()) + 600, exp=int(c.clock().timestamp()) + 900
    ),
    "not yet valid": lambda c: c.token(BASE + SERVICE, nbf=int(c.clock().timestamp()) + 600),
    "no exp": lambda c: c.token(BASE + SERVICE, exp=None),
    "no jti": lambda c: c.token(BASE + SERVICE, jti=None),
    "untrusted issuer": lambda c: c.token(BASE + SERVICE, iss="https://other-ehr.example.org"),
    "unknown kid": lambda c: c.token(BASE + SERVICE, header={"kid": "nope"}),
    "jku not allowed": lambda c: c.token(BASE + SERVICE, header={"jku": "https://evil.example.org/jwks"}),
    "signed by another key": _stranger_token,
    "alg none": lambda c: (
        f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'ec-1'})}.{_b64({'iss': c.iss, 'aud': BASE + SERVICE})}."
    ),
    "HS256 with the public key": lambda c: jwt.encode(
        {"iss": c.iss, "aud": BASE + SERVICE},
        "secret-key-of-32-bytes-or-more!!",
        algorithm="HS256",
        headers={"kid": "ec-1"},
    ),
    "lifetime too long": lambda c: c.token(BASE + SERVICE, exp=int(c.clock().timestamp()) + 7200),
    "exp NaN": lambda c: c.token(BASE + SERVICE, exp=float("nan")),
    "exp beyond any date": lambda c: c.token(BASE + SERVICE, exp=10**400),
    "nbf NaN": lambda c: c.token(BASE + SERVICE, nbf=float("nan")),
    "NUL in jti": lambda c: c.token(BASE + SERVICE, jti="a\x00b"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_every_failure_is_a_bare_401(app: FastAPI, client: Client, case: str, caplog: pytest.LogCaptureFixture) -> None:
    token = FAILURES[case](client)
    response = _post(app, token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}
    if token:
        assert token not in caplog.text


def test_basic_scheme_is_refused(app: FastAPI, client: Client) -> None:
    assert _post(app, client.token(BASE + SERVICE), scheme="Basic").status_code == 401


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_es384_and_rs384_are_accepted(app: FastAPI, client: Client, alg: str) -> None:
    assert _post(app, client.token(BASE + SERVICE, alg=alg)).status_code == 200


def test_array_audience_of_one_is_accepted(app: FastAPI, client: Client) -> None:
    assert _post(app, client.token([BASE + SERVICE])).status_code == 200


def test_replayed_token_is_refused(app: FastAPI, client: Client) -> None:
    token = client.token(BASE + SERVICE)
    assert _post(app, token).status_code == 200
    assert _post(app, token).status_code == 401


def test_replay_cache_is_the_shared_store(
    app: FastAPI, client: Client, settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock
) -> None:
    token = client.token(BASE + SERVICE)
    assert _post(app, token).status_code == 200
    second_worker = create_app(settings, store=hook_store, clock=hook_clock)
    assert _post(second_worker, token).status_code == 401


def test_token_slightly_expired_is_within_leeway(app: FastAPI, client: Client) -> None:
    now = int(client.clock().timestamp())
    assert _post(app, client.token(BASE + SERVICE, iat=now - 310, exp=now - 10)).status_code == 200


def test_discovery_and_feedback_need_a_token(app: FastAPI, client: Client) -> None:
    assert call(app, "GET", DISCOVERY).status_code == 401
    assert call(app, "GET", DISCOVERY, headers=client.headers(DISCOVERY)).status_code == 200
    assert call(app, "GET", DISCOVERY, headers=client.headers(SERVICE)).status_code == 401
    body = {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T14:30:00Z"}]}
    assert call(app, "POST", FEEDBACK, json=body).status_code == 401
    assert call(app, "POST", FEEDBACK, json=body, headers=client.headers(SERVICE)).status_code == 401
    assert call(app, "POST", FEEDBACK, json=body, headers=client.headers(FEEDBACK)).status_code == 200


def test_unknown_service_is_not_revealed_before_authentication(app: FastAPI) -> None:
    assert call(app, "POST", "/cds-services/nope", json={}).status_code == 401


def test_clock_moves_make_tokens_expire(app: FastAPI, client: Client, hook_clock: FrozenClock) -> None:
    token = client.token(BASE + SERVICE)
    hook_clock.now += timedelta(minutes=10)
    assert _post(app, token).status_code == 401


def test_auth_off_only_by_setting_and_loudly(
    settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app(dataclasses.replace(settings, auth_required=False), store=hook_store, clock=hook_clock)
    assert "AUTHENTICATION IS OFF" in caplog.text
    assert _post(app, None).status_code == 200


def test_no_trusted_clients_means_every_call_is_refused(
    settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock, client: Client
) -> None:
    app = create_app(dataclasses.replace(settings, trusted_issuers_file=None), store=hook_store, clock=hook_clock)
    assert _post(app, client.token(BASE + SERVICE)).status_code == 401


def test_spec_example_token_verifies_against_spec_jwks() -> None:
    """The ES384 test vector of the CDS Hooks 2.0.1 specification (expired in 2015, so the clock is set back)."""
    from datetime import UTC, datetime

    from spasticity_cds.cds_hooks.security import JwtVerifier, TrustedIssuer

    from .helpers import FIXTURES, load_fixture

    token = (FIXTURES / "hl7" / "jwt.txt").read_text(encoding="utf-8").strip()
    payload = load_fixture("hl7/jwt-payload.json")
    header = load_fixture("hl7/jwt-header.json")
    issuer = TrustedIssuer(iss=payload["iss"], jwks=load_fixture("hl7/jwks.json"), jku_allowlist=(header["jku"],))
    clock = lambda: datetime.fromtimestamp(payload["iat"] + 60, UTC)  # noqa: E731
    verifier = JwtVerifier([issuer], lambda iss, jti, until: True, clock, max_lifetime_s=None)
    verified = verifier.verify(token, payload["aud"])
    assert verified.jti == payload["jti"] and verified.tenant == payload["tenant"]


def test_replayed_token_gets_401_even_with_a_bad_body(app: FastAPI, client: Client) -> None:
    token = client.token(BASE + SERVICE)
    assert _post(app, token).status_code == 200
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    assert call(app, "POST", SERVICE, content=b"{broken", headers=headers).status_code == 401


def test_replayed_token_never_reaches_the_fhir_server(app: FastAPI, client: Client) -> None:
    from .fhir_server import Behaviour, fhir_server

    token = client.token(BASE + SERVICE)
    assert _post(app, token).status_code == 200
    behaviour = Behaviour()
    with fhir_server(behaviour) as server:
        body = hook_request("patient-view", fhirServer=server)
        response = call(app, "POST", SERVICE, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and behaviour.requests == []


@pytest.mark.parametrize("case", ["signed by another key", "expired", "wrong audience"])
def test_a_token_failing_the_checks_beside_the_evaluation_gets_401_and_reaches_nothing(
    app: FastAPI, client: Client, case: str
) -> None:
    from .fhir_server import Behaviour, fhir_server

    headers = {"Authorization": f"Bearer {FAILURES[case](client)}", "Content-Type": "application/json"}
    assert call(app, "POST", SERVICE, content=b"{broken", headers=headers).status_code == 401
    assert _post(app, FAILURES[case](client)).status_code == 401
    behaviour = Behaviour()
    with fhir_server(behaviour) as server:
        body = hook_request("patient-view", fhirServer=server)
        assert call(app, "POST", SERVICE, json=body, headers=headers).status_code == 401
    assert behaviour.requests == []
    app.state.hooks.cards.flush()
    assert app.state.cds.store.counts().issued_cards == 0


def test_a_token_that_fails_verification_writes_nothing(
    app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    store = app.state.cds.store
    monkeypatch.setattr(store, "remember_jti", lambda iss, jti, until: writes.append(jti) or True)
    monkeypatch.setattr(store, "remember_jti_at_once", lambda iss, jti, until: writes.append(jti) or True)
    assert _post(app, _stranger_token(client)).status_code == 401
    assert _post(app, client.token(BASE + DISCOVERY)).status_code == 401  # signed, but for another endpoint
    assert writes == []
    assert _post(app, client.token(BASE + SERVICE)).status_code == 200 and len(writes) == 1


def test_replay_cache_failure_is_503_without_cards(
    app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spasticity_cds.errors import StoreError

    def broken(issuer: str, jti: str, until: object) -> bool:
        raise StoreError("cannot write", where="postgresql://user:***@db/x")

    monkeypatch.setattr(app.state.cds.store, "remember_jti", broken)
    monkeypatch.setattr(app.state.cds.store, "remember_jti_at_once", broken)
    response = _post(app, client.token(BASE + SERVICE))
    assert response.status_code == 503 and "cards" not in response.json() and "postgresql" not in response.text


def _on_event_loop() -> bool:
    """Whether the calling thread is running an event loop (the thread serving the app's calls)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@contextmanager
def _jwks_server(jwks: dict[str, Any]) -> Iterator[str]:
    """Serve `jwks` on a free loopback port, as a CDS client publishes its keys; yields the JWKS URL."""
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        """Answers every GET with the JWKS."""

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclasses.dataclass
class JkuApp:
    """An app trusting the client only through the JWKS at `jku`; `fetches` says, per fetch, if it ran on the loop."""

    app: FastAPI
    jku: str
    fetches: list[bool]


@pytest.fixture
def jku_app(
    tmp_path: Path,
    settings: WebSettings,
    client: Client,
    hook_store: SqlFeedbackStore,
    hook_clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[JkuApp]:
    """The app, with the JWKS served over HTTP and fetched by the app's own fetcher (each fetch recorded)."""
    fetches: list[bool] = []
    fetch_jwks = hooks_routes._fetch_jwks

    def recording_fetch(url: str) -> Any:
        fetches.append(_on_event_loop())
        return fetch_jwks(url)

    monkeypatch.setattr(hooks_routes, "_fetch_jwks", recording_fetch)
    with _jwks_server(client.jwks()) as jku:
        trust = tmp_path / "jku-issuers.toml"
        trust.write_text(f'[[issuer]]\niss = "{client.iss}"\njku_allowlist = ["{jku}"]\n', encoding="utf-8")
        app = create_app(dataclasses.replace(settings, trusted_issuers_file=trust), store=hook_store, clock=hook_clock)
        yield JkuApp(app, jku, fetches)


def test_signature_is_checked_on_the_event_loop_and_the_jti_written_there_only_when_it_need_not_wait(
    app: FastAPI, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, store = app.state.hooks.verifier, app.state.cds.store
    check, remember_jti, remember_jti_at_once = verifier.check, store.remember_jti, store.remember_jti_at_once
    checks: list[bool] = []
    writes: list[tuple[str, bool]] = []
    monkeypatch.setattr(verifier, "check", lambda token, aud: checks.append(_on_event_loop()) or check(token, aud))
    monkeypatch.setattr(
        store, "remember_jti", lambda *args: writes.append(("waiting", _on_event_loop())) or remember_jti(*args)
    )

    busy = threading.Event()  # another writer holds the store (the store's own tests hold its lock for this)

    def at_once(*args: Any) -> bool | None:
        new = None if busy.is_set() else remember_jti_at_once(*args)
        writes.append((f"at once: {new}", _on_event_loop()))
        return new

    monkeypatch.setattr(store, "remember_jti_at_once", at_once)

    for _ in range(2):
        assert _post(app, client.token(BASE + SERVICE)).status_code == 200
    busy.set()
    assert _post(app, client.token(BASE + SERVICE)).status_code == 200
    busy.clear()
    app.state.hooks.calls_in_flight = 1  # another call is being answered: its work and this fsync overlap
    assert _post(app, client.token(BASE + SERVICE)).status_code == 200
    assert app.state.hooks.calls_in_flight == 1
    assert checks == [True, True, True, True]
    assert writes == [
        ("at once: None", True),  # the first write of a worker purges expired ids: in a thread
        ("waiting", False),
        ("at once: True", True),
        ("at once: None", True),
        ("waiting", False),
        ("waiting", False),  # not tried at once
    ]


def test_a_jku_key_not_cached_yet_is_fetched_in_a_thread_then_used_from_the_cache(
    jku_app: JkuApp, client: Client
) -> None:
    assert _post(jku_app.app, client.token(BASE + SERVICE, header={"jku": jku_app.jku})).status_code == 200
    assert _post(jku_app.app, client.token(BASE + SERVICE, alg="RS384", header={"jku": jku_app.jku})).status_code == 200

    assert jku_app.fetches == [False]


def test_replay_is_refused_whether_the_jku_key_is_cached_or_fetched(
    jku_app: JkuApp, client: Client, hook_clock: FrozenClock
) -> None:
    token = client.token(BASE + SERVICE, header={"jku": jku_app.jku}, exp=int(hook_clock().timestamp()) + 3600)
    assert _post(jku_app.app, token).status_code == 200
    assert _post(jku_app.app, token).status_code == 401  # key cached: the replay write refuses it

    hook_clock.now += timedelta(seconds=601)  # the cached JWKS is due for a refresh: the whole check runs in a thread
    assert _post(jku_app.app, token).status_code == 401
    assert jku_app.fetches == [False, False]
