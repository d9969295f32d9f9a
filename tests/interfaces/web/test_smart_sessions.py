"""SMART sessions in the shared store: a launch continues on any worker, sealed at rest, single use, 503 on failure."""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds.errors import StoreError
from spasticity_cds.interfaces.web import smart
from spasticity_cds.interfaces.web.smart_sessions import SEAL_FORMAT, SessionSealer, SmartSession
from spasticity_cds.store import SmartSessionStage, hash_session_id, schema

CLIENT_ID = "cds-test-client"
PUBLIC = "http://cds.test"
PENDING, ACTIVE = SmartSessionStage.PENDING, SmartSessionStage.ACTIVE


@pytest.fixture(scope="module")
def ehr() -> Iterator[support.MockEhr]:
    with support.running_ehr(CLIENT_ID, support.trend_bundle("smart-1", "Launch Patient"), "smart-1") as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store for all the "workers" of a test: a SQLite file, or a fresh schema on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    else:
        with support.postgres_schema() as url:
            yield url


class StoreClock:
    """The stores' clock: the real time, moved forward by a test."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@pytest.fixture
def workers(tmp_path: Path, ehr: support.MockEhr, store_url: str) -> Iterator[Callable[..., FastAPI]]:
    """Builds apps as separate workers or hosts would run them: each its own store connection, one database."""
    clients = tmp_path / "smart-clients.toml"
    clients.write_text(
        f'[[clients]]\niss = "{ehr.base}/fhir"\nclient_id = "{CLIENT_ID}"\nlabel = "Test EHR"\n', "utf-8"
    )
    built: list[FastAPI] = []

    def worker(**settings: Any) -> FastAPI:
        options: dict[str, Any] = {"public_base_url": PUBLIC, "smart_clients_file": clients, "store_url": store_url}
        app = support.make_app(tmp_path / f"worker-{len(built)}", **(options | settings))
        built.append(app)
        return app

    yield worker
    for app in built:
        app.state.cds.store.close()


def _start(client: support.PageClient, ehr: support.MockEhr) -> tuple[str, str]:
    """Start a standalone launch; the callback path the EHR sends the browser back to, and the OAuth state."""
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    assert start.status_code == 302, start.text
    answer = httpx.get(start.headers["location"], follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    return f"{back.path}?{back.query}", parse_qs(urlsplit(start.headers["location"]).query)["state"][0]


def test_a_launch_started_on_one_worker_continues_on_another(
    workers: Callable[..., FastAPI], ehr: support.MockEhr
) -> None:
    first, second = workers(), workers()
    client = support.PageClient(first)
    callback, _ = _start(client, ehr)
    client.app = second
    back = client.get(callback)
    assert back.status_code == 303, back.text
    plan = back.headers["location"]
    for app in (first, second, first):
        client.app = app
        page = client.get(plan)
        assert page.status_code == 200 and "Launch Patient" in page.text
    stranger = support.PageClient(second)
    stranger.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})  # a browser cookie of its own
    assert stranger.get(plan).status_code == 401


def test_the_store_holds_no_id_token_verifier_patient_or_browser_in_clear(
    workers: Callable[..., FastAPI], ehr: support.MockEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifiers: list[str] = []
    real_pkce_pair = smart.pkce_pair

    def recorded_pkce_pair() -> tuple[str, str]:
        verifier, challenge = real_pkce_pair()
        verifiers.append(verifier)
        return verifier, challenge

    monkeypatch.setattr(smart, "pkce_pair", recorded_pkce_pair)
    app = workers()
    client = support.PageClient(app)
    launch = ehr.register_launch({"ruleId": "TIZ-LIVER-3X", "cardUuid": "card-sealed-123"})
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir", "launch": launch})
    oauth_state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    browser = client.cookies["cds_session"].split(".")[0]
    pending = _rows(app)
    answer = httpx.get(start.headers["location"], follow_redirects=False)
    back = urlsplit(answer.headers["location"])
    tokens_before = set(ehr.tokens)
    plan = client.get(f"{back.path}?{back.query}").headers["location"]
    [token] = ehr.tokens - tokens_before
    plan_id = plan.rsplit("/", 1)[1]
    active = _rows(app)
    assert [row["key_hash"] for row in pending] == [hash_session_id(oauth_state)]
    assert [(row["key_hash"], row["stage"]) for row in active] == [(hash_session_id(plan_id), "active")]
    secrets_in_clear = [oauth_state, plan_id, verifiers[0], token, browser, "smart-1", "card-sealed-123", CLIENT_ID]
    for row in pending + active:
        dump = repr(dict(row)).encode() + bytes(row["sealed"])
        for value in secrets_in_clear:
            assert value.encode() not in dump, value
    assert 'name="card_uuid" value="card-sealed-123"' in client.get(plan).text


def _rows(app: FastAPI) -> list[Any]:
    with app.state.cds.store.engine.connect() as connection:
        return list(connection.execute(select(schema.smart_sessions)).mappings().all())


def test_concurrent_callbacks_with_one_state_log_in_once(workers: Callable[..., FastAPI], ehr: support.MockEhr) -> None:
    apps = [workers(), workers()]
    for _ in range(3):
        launcher = support.PageClient(apps[0])
        callback, _ = _start(launcher, ehr)
        answers = _race_callbacks(apps, launcher.cookies, callback, 8)
        assert sorted(answer.status_code for answer in answers) == [303] + [400] * 7
        # Refused by our single-use state, not by the EHR's single-use code (that would be a 502 from the token step).
        assert all("state mismatch" in answer.text for answer in answers if answer.status_code == 400)


def _race_callbacks(apps: list[FastAPI], cookies: httpx.Cookies, path: str, count: int) -> list[httpx.Response]:
    """``count`` browsers with the same cookie send the same callback at once, spread over ``apps``."""
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(count)
    # Each app answers its callback route once first, without a state: FastAPI prepares a route on its first call
    # and silences a warning there with warnings.catch_warnings(), which is not thread-safe (pytest's "error"
    # filter then turned it into a 500 in one racing thread, about one run in thirty).
    for app in apps:
        support.PageClient(app).get(path.partition("?")[0])

    def call_back(app: FastAPI) -> None:
        client = support.PageClient(app)
        client.cookies = httpx.Cookies(cookies)
        start.wait()
        answer = client.get(path)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=call_back, args=(apps[n % len(apps)],)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


class FlakyStore:
    """The app's store, whose SMART session calls named in ``failing`` raise StoreError (the database is down)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.failing: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name in self.failing:

            def down(*args: object, **kwargs: object) -> None:
                raise StoreError("could not reach the store: connection refused", where="postgresql://cds:***@db/cds")

            return down
        return getattr(self.store, name)


def test_a_store_failure_is_a_503_page_and_no_session_is_lost(
    workers: Callable[..., FastAPI], ehr: support.MockEhr, caplog: pytest.LogCaptureFixture
) -> None:
    app = workers()
    flaky = FlakyStore(app.state.cds.store)
    app.state.cds.store = flaky
    client = support.PageClient(app)

    flaky.failing = {"add_smart_session"}
    refused = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    assert refused.status_code == 503 and "location" not in refused.headers  # no redirect to a launch not kept
    flaky.failing = set()
    callback, _ = _start(client, ehr)
    flaky.failing = {"take_pending_smart_session"}
    with caplog.at_level("ERROR"):
        down = client.get(callback)
    flaky.failing = set()
    back = client.get(callback)  # the launch was not taken: the same callback goes on once the store is back
    assert back.status_code == 303, back.text
    plan = back.headers["location"]
    flaky.failing = {"find_active_smart_session"}
    unreadable = client.get(plan)
    flaky.failing = set()
    assert client.get(plan).status_code == 200
    callback, _ = _start(client, ehr)
    flaky.failing = {"add_smart_session"}
    not_kept = client.get(callback)
    flaky.failing = set()
    for page in (refused, down, unreadable, not_kept):
        assert page.status_code == 503
        assert "Launch sessions cannot be kept or read right now" in page.text
        assert "Traceback" not in page.text and "postgresql" not in page.text
    assert "SMART callback: the session store failed" in caplog.text


def test_a_row_moved_onto_another_session_opens_nothing(
    workers: Callable[..., FastAPI], ehr: support.MockEhr, caplog: pytest.LogCaptureFixture
) -> None:
    app = workers()
    client = support.PageClient(app)
    plans = []
    for _ in range(2):
        callback, _ = _start(client, ehr)
        plans.append(client.get(callback).headers["location"])
    first, second = (hash_session_id(plan.rsplit("/", 1)[1]) for plan in plans)
    table = schema.smart_sessions
    with app.state.cds.store.engine.begin() as connection:
        sealed = connection.execute(select(table.c.sealed).where(table.c.key_hash == first)).scalar_one()
        connection.execute(update(table).where(table.c.key_hash == second).values(sealed=sealed))
    with caplog.at_level("WARNING"):
        assert client.get(plans[1]).status_code == 401  # never the first session's patient under the second's id
    assert "could not be opened" in caplog.text
    assert client.get(plans[0]).status_code == 200


def test_an_end_moved_later_in_the_database_opens_nothing(
    workers: Callable[..., FastAPI], ehr: support.MockEhr, caplog: pytest.LogCaptureFixture
) -> None:
    app = workers()
    client = support.PageClient(app)
    callback, _ = _start(client, ehr)
    plan = client.get(callback).headers["location"]
    assert client.get(plan).status_code == 200
    table = schema.smart_sessions
    with app.state.cds.store.engine.begin() as connection:  # someone who can write the database, not read it
        key_hash, ends = connection.execute(select(table.c.key_hash, table.c.expires_at)).one()
        connection.execute(update(table).where(table.c.key_hash == key_hash).values(expires_at=ends + timedelta(30)))
    with caplog.at_level("WARNING"):
        assert client.get(plan).status_code == 401
    assert "could not be opened" in caplog.text


def test_sessions_end_when_the_store_clock_says_so(workers: Callable[..., FastAPI], ehr: support.MockEhr) -> None:
    clock = StoreClock()
    app = workers(session_max_age_s=600, store_clock=clock)  # the EHR's token lives 3600 s: the session's 600 win
    client = support.PageClient(app)
    callback, _ = _start(client, ehr)
    plan = client.get(callback).headers["location"]
    waiting, _ = _start(client, ehr)
    clock.ahead = timedelta(seconds=590)
    assert client.get(plan).status_code == 200
    clock.ahead = timedelta(seconds=610)
    assert client.get(plan).status_code == 401
    assert client.get(waiting).status_code == 400  # a pending launch ends too


def test_a_callback_on_a_worker_without_the_registration_is_refused(
    workers: Callable[..., FastAPI], ehr: support.MockEhr, tmp_path: Path
) -> None:
    other = tmp_path / "other-clients.toml"
    other.write_text('[[clients]]\niss = "https://other.example/fhir"\nclient_id = "x"\n', "utf-8")
    client = support.PageClient(workers())
    callback, _ = _start(client, ehr)
    client.app = workers(smart_clients_file=other)
    refused = client.get(callback)
    assert refused.status_code == 400 and "registration changed" in refused.text


def test_the_sealer_opens_only_its_own_session_stage_end_and_secret() -> None:
    sealer = SessionSealer(b"s" * 32)
    session_id, other_id = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    ends = datetime(2026, 11, 25, 18, 0, 0, 123456, tzinfo=UTC)
    sealed = sealer.seal(session_id, ACTIVE, ends, b"plaintext")
    assert sealed[:1] == SEAL_FORMAT and sealer.seal(session_id, ACTIVE, ends, b"plaintext") != sealed  # random nonce
    assert sealer.open(session_id, ACTIVE, ends, sealed) == b"plaintext"
    same_instant = ends.astimezone(timezone(timedelta(hours=-5)))  # as a store might hand it back
    assert sealer.open(session_id, ACTIVE, same_instant, sealed) == b"plaintext"
    assert sealer.open(other_id, ACTIVE, ends, sealed) is None
    assert sealer.open(session_id, PENDING, ends, sealed) is None
    assert sealer.open(session_id, ACTIVE, ends + timedelta(hours=8), sealed) is None  # an end moved in the database
    assert SessionSealer(b"t" * 32).open(session_id, ACTIVE, ends, sealed) is None
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert sealer.open(session_id, ACTIVE, ends, tampered) is None
    assert sealer.open(session_id, ACTIVE, ends, b"\x02" + sealed[1:]) is None
    assert sealer.open(session_id, ACTIVE, ends, sealed[:20]) is None
    with pytest.raises(InvalidTag):  # the raw secret is not the key (HKDF derives one per session)
        AESGCM(b"s" * 32).decrypt(sealed[1:13], sealed[13:], ACTIVE.value.encode())


def test_a_session_round_trips_through_its_json() -> None:
    session = SmartSession(
        iss="https://ehr.example/fhir",
        client_id="c",
        browser="b",
        verifier="v",
        token_endpoint="https://ehr.example/token",
        issuers=frozenset({"https://ehr.example/fhir", "https://ehr.example/auth"}),
        access_token="t",
        patient="p",
        card_uuid="card",
        rule_id=None,
    )
    assert SmartSession.from_json(session.to_json()) == session
    for bad in (b"not json", b"[]", b'{"iss": "x"}'):
        assert SmartSession.from_json(bad) is None
