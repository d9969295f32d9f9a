"""SMART App Launch 2 against a loopback authorization and FHIR server: EHR and standalone launch, PKCE, errors."""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds.interfaces.cli import serve_command
from spasticity_cds.interfaces.web.config import ConfigError, settings_from_mapping
from spasticity_cds.interfaces.web.csrf import BadSignatureError, Signer
from spasticity_cds.interfaces.web.smart import load_clients, pkce_pair

CLIENT_ID = "cds-test-client"
PUBLIC = "http://cds.test"
PLAN_URL = re.compile(r"/smart/plan/[A-Za-z0-9_-]{40,}")


@pytest.fixture(scope="module")
def ehr() -> Iterator[support.MockEhr]:
    with support.running_ehr(CLIENT_ID, support.trend_bundle("smart-1", "Launch Patient"), "smart-1") as server:
        yield server


def _client(tmp_path: Path, ehr: support.MockEhr, **settings: object) -> support.PageClient:
    clients = tmp_path / "smart-clients.toml"
    clients.write_text(
        f'[[clients]]\niss = "{ehr.base}/fhir"\nclient_id = "{CLIENT_ID}"\nlabel = "Test EHR"\n', "utf-8"
    )
    options: dict[str, object] = {"public_base_url": PUBLIC, "smart_clients_file": clients}
    options.update(settings)
    return support.PageClient(support.make_app(tmp_path, **options))


def _authorize(location: str) -> str:
    """Follow the authorize redirect on the real loopback server; return where it sends the browser back."""
    answer = httpx.get(location, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def _callback_path(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC
    return f"{parts.path}?{parts.query}"


def test_ehr_launch_reads_the_patient_and_shows_the_card_context(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    launch = ehr.register_launch(
        {"ruleId": "TIZ-LIVER-3X", "ruleVersion": 1, "cardUuid": "card-123", "patientId": "smart-1"}
    )
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir", "launch": launch})
    assert start.status_code == 302
    location = start.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert location.startswith(f"{ehr.base}/auth/authorize?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["aud"] == [f"{ehr.base}/fhir"] and query["launch"] == [launch]
    assert query["redirect_uri"] == [f"{PUBLIC}/smart/callback"] and query["client_id"] == [CLIENT_ID]
    assert "launch" in query["scope"][0].split() and "patient/Observation.rs" in query["scope"][0]
    session_cookie = start.headers["set-cookie"]
    assert "HttpOnly" in session_cookie and "samesite=lax" in session_cookie.lower()
    back = client.get(_callback_path(_authorize(location)))
    assert back.status_code == 303 and PLAN_URL.fullmatch(back.headers["location"])
    plan = client.get(back.headers["location"])
    assert plan.status_code == 200
    assert "Launch Patient" in plan.text and "Opened from the EHR (SMART launch)" in plan.text
    assert "<title>Plan for Launch Patient - spasticity-cds</title>" in plan.text
    assert re.search(r'class="finding finding-[a-z]+ highlight" id="f-TIZ-LIVER-3X"', plan.text)
    assert 'name="card_uuid" value="card-123"' in plan.text
    assert 'id="chart-fvc"' in plan.text  # every page of the Observation search was read
    again = client.get(back.headers["location"])
    assert again.status_code == 200  # the plan re-reads the record with the same token


def _launch(client: support.PageClient, ehr: support.MockEhr) -> tuple[str, str]:
    """A whole standalone launch; the plan's URL and the OAuth state the launch used."""
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    back = client.get(_callback_path(_authorize(start.headers["location"])))
    assert back.status_code == 303, back.text
    return back.headers["location"], parse_qs(urlsplit(start.headers["location"]).query)["state"][0]


def test_each_launch_keeps_its_own_patient(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    first, _ = _launch(client, ehr)
    kept = list(ehr.resources)
    ehr.patient_id, ehr.resources = "smart-2", kept + _resources("smart-2", "Second Patient")  # the EHR's next pick
    try:
        pending = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
        assert pending.status_code == 302
        assert "Launch Patient" in client.get(first).text  # a launch merely started leaves the first tab alone
        second, _ = _launch(client, ehr)
        assert "Second Patient" in client.get(second).text
        assert "Launch Patient" in client.get(first).text and "Second Patient" not in client.get(first).text
    finally:
        ehr.patient_id, ehr.resources = "smart-1", kept


def test_a_plan_url_is_no_use_in_another_browser(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    plan, _ = _launch(client, ehr)
    stranger = support.PageClient(client.app)
    assert stranger.get(plan).status_code == 401
    stranger.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})  # a browser cookie of its own
    assert stranger.get(plan).status_code == 401
    assert client.get(plan).status_code == 200


def test_the_session_id_changes_at_login_and_the_state_is_single_use(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    plan, oauth_state = _launch(client, ehr)
    assert oauth_state not in plan
    assert client.get(f"/smart/plan/{oauth_state}").status_code == 401
    assert client.get(f"/smart/callback?code=x&state={oauth_state}").status_code == 400


def test_feedback_without_javascript_returns_to_the_launched_plan(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    plan, _ = _launch(client, ehr)
    page = client.get(plan).text
    assert f'name="return_to" value="{plan}"' in page
    form = {
        "csrf_token": html.unescape(support.CSRF_INPUT.search(page).group(1)),  # type: ignore[union-attr]
        "feedback_id": html.unescape(support.FEEDBACK_ID.search(page).group(1)),  # type: ignore[union-attr]
        "context": "patient-plan",
        "answered": "yes",
        "return_to": plan,
    }
    sent = client.post("/feedback", data=form)
    assert sent.status_code == 303 and sent.headers["location"].startswith(f"{plan}?feedback=thanks")
    assert "Launch Patient" in client.get(sent.headers["location"]).text


def _resources(patient_id: str, name: str) -> list[dict[str, object]]:
    return [entry["resource"] for entry in support.trend_bundle(patient_id, name)["entry"]]


def test_framed_app_cookies_are_samesite_none_secure_partitioned(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr, frame_ancestors=("https://ehr.example",))
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    page = client.get("/smart/launch")
    for header in (start.headers["set-cookie"], page.headers["set-cookie"]):
        attributes = {part.strip().lower() for part in header.split(";")}
        assert {"samesite=none", "secure", "partitioned", "httponly"} <= attributes, header


def test_frame_ancestors_need_a_public_url_where_secure_cookies_work(tmp_path: Path) -> None:
    framing = {"frame_ancestors": ["https://ehr.example"]}
    with pytest.raises(ConfigError, match="https public_base_url"):
        settings_from_mapping(framing | {"public_base_url": "http://cds.example"}, base_dir=tmp_path, where="t")
    for url in ("https://cds.example", "http://localhost:8000", "http://127.0.0.1:8000"):
        assert settings_from_mapping(framing | {"public_base_url": url}, base_dir=tmp_path, where="t").frame_ancestors


def test_standalone_launch_asks_for_a_patient(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    chooser = client.get("/smart/launch")
    assert chooser.status_code == 200 and "Test EHR" in chooser.text
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert "launch" not in query and "launch/patient" in query["scope"][0].split()
    back = client.get(_callback_path(_authorize(start.headers["location"])))
    assert back.status_code == 303
    assert "Launch Patient" in client.get(back.headers["location"]).text


def test_state_mismatch_is_refused(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    callback = _callback_path(_authorize(start.headers["location"]))
    forged = callback.split("state=")[0] + "state=forged"
    response = client.get(forged)
    assert response.status_code == 400 and "state mismatch" in response.text


def test_wrong_pkce_verifier_is_refused_by_the_token_endpoint(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    _, other_challenge = pkce_pair()
    location = start.headers["location"]
    original = parse_qs(urlsplit(location).query)["code_challenge"][0]
    response = client.get(_callback_path(_authorize(location.replace(original, other_challenge))))
    assert response.status_code == 502 and "refused the token request" in response.text


def test_callback_without_a_session_and_plan_without_a_token(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    assert client.get("/smart/callback?code=x&state=y").status_code == 401
    assert "Launch the app again" in client.get("/smart/plan/unknown").text
    client.cookies.set("cds_session", "forged.1.sig")
    assert client.get("/smart/plan/unknown").status_code == 401


def test_authorization_error_is_reported(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    response = client.get(f"/smart/callback?error=access_denied&state={state}")
    assert response.status_code == 401 and "access_denied" in response.text


@pytest.mark.parametrize(
    "iss", ["http://127.0.0.1:9/other", "ftp://x", "javascript:alert(1)", "http://xn--a.invalid/fhir", "http://[::1/x"]
)
def test_unregistered_or_invalid_issuers_are_refused(tmp_path: Path, ehr: support.MockEhr, iss: str) -> None:
    response = _client(tmp_path, ehr).get("/smart/launch", params={"iss": iss})
    assert response.status_code == 400
    assert "alert(1)" not in response.text


@pytest.mark.parametrize(
    "setting", [{"smart_allow_any_iss": True}, {"fhir_server_allowlist": ("https://only.example/",)}]
)
@pytest.mark.parametrize("iss", ["http://xn--a.invalid/fhir", "http://[::1/fhir"])
def test_an_iss_the_http_client_cannot_read_is_refused_without_a_clients_file(
    tmp_path: Path, setting: dict[str, Any], iss: str
) -> None:
    client = support.PageClient(support.make_app(tmp_path, public_base_url=PUBLIC, **setting))
    response = client.get("/smart/launch", params={"iss": iss})
    assert response.status_code == 400 and "did not name a valid FHIR server" in response.text


def test_allowlist_applies_without_a_clients_file(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = support.PageClient(
        support.make_app(tmp_path, public_base_url=PUBLIC, fhir_server_allowlist=("https://only.example/fhir",))
    )
    response = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    assert response.status_code == 400 and "not registered" in response.text


def test_server_without_s256_is_refused(tmp_path: Path, ehr: support.MockEhr) -> None:
    ehr.challenge_methods = ["plain"]
    try:
        response = _client(tmp_path, ehr).get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    finally:
        ehr.challenge_methods = ["S256"]
    assert response.status_code == 502 and "PKCE S256" in response.text


def _dead_server() -> str:
    sock = support.free_socket()
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    sock.close()
    return dead


def test_unreachable_registered_fhir_server(tmp_path: Path) -> None:
    dead = _dead_server()
    client = support.PageClient(support.make_app(tmp_path, public_base_url=PUBLIC, fhir_server_allowlist=(dead,)))
    response = client.get("/smart/launch", params={"iss": dead})
    assert response.status_code == 502 and "could not be reached" in response.text


def test_without_registered_ehrs_smart_launch_is_refused(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = support.PageClient(support.make_app(tmp_path, public_base_url=PUBLIC))
    before = len(ehr.authorize_requests)
    response = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    assert response.status_code == 400 and "not set up" in response.text
    assert "location" not in response.headers and len(ehr.authorize_requests) == before
    chooser = client.get("/smart/launch")
    assert "not set up on this server" in chooser.text and 'name="iss"' not in chooser.text


def test_the_demo_setting_opens_launch_but_hides_what_an_unregistered_host_said(
    tmp_path: Path, ehr: support.MockEhr, caplog: pytest.LogCaptureFixture
) -> None:
    client = support.PageClient(support.make_app(tmp_path, public_base_url=PUBLIC, smart_allow_any_iss=True))
    with caplog.at_level("WARNING"):
        start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    assert start.status_code == 302  # the EHR's own client id is not ours: it only has to be redirected to
    assert "SMART LAUNCH IS OPEN TO ANY FHIR SERVER" in caplog.text
    unreachable = client.get("/smart/launch", params={"iss": _dead_server()})
    answered_404 = client.get("/smart/launch", params={"iss": f"{ehr.base}/not-fhir"})
    ehr.challenge_methods = ["plain"]
    try:
        no_s256 = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    finally:
        ehr.challenge_methods = ["S256"]
    pages = [_main_text(r.text) for r in (unreachable, answered_404, no_s256)]
    assert {r.status_code for r in (unreachable, answered_404, no_s256)} == {502}
    assert pages[0] == pages[1] == pages[2] and "could not be used" in pages[0]


def _main_text(page: str) -> str:
    return re.sub(r'value="[^"]*"', "", page.split("<main", 1)[1].split("</main>", 1)[0])


@pytest.mark.parametrize(
    "content",
    [
        "not = [toml",
        "clients = 3",
        '[[clients]]\niss = "https://ehr.example/fhir"',
        '[[clients]]\niss = "ftp://ehr.example/fhir"\nclient_id = "a"',
        '[[clients]]\niss = "https://ehr.example/fhir"\nclient_id = "a"\nlabel = 3',
    ],
)
def test_a_broken_clients_file_stops_serve_and_gives_an_error_page(tmp_path: Path, content: str) -> None:
    clients = tmp_path / "clients.toml"
    clients.write_text(content, "utf-8")
    config = tmp_path / "web.toml"
    config.write_text(f'smart_clients_file = "{clients}"\n', "utf-8")
    args = argparse.Namespace(config=config, host=None, port=None, workers=None, log_level="info")
    with pytest.raises(ConfigError, match="SMART client"):
        serve_command.run(args, Console(file=io.StringIO()))
    client = support.PageClient(support.make_app(tmp_path, public_base_url=PUBLIC, smart_clients_file=clients))
    for _ in range(2):
        page = client.get("/smart/launch", params={"iss": "https://ehr.example/fhir"})
        assert page.status_code == 500 and "configuration is broken" in page.text and "Traceback" not in page.text


def test_the_clients_file_is_read_once(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    assert client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"}).status_code == 302
    (tmp_path / "smart-clients.toml").write_text("broken = [", "utf-8")
    assert client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"}).status_code == 302


def test_issuers_match_whatever_the_case_of_scheme_and_host(tmp_path: Path, ehr: support.MockEhr) -> None:
    client = _client(tmp_path, ehr)
    shouted = ehr.base.replace("http://", "HTTP://") + "/fhir/"
    assert client.get("/smart/launch", params={"iss": shouted}).status_code == 302
    assert client.get("/smart/launch", params={"iss": f"{ehr.base}/FHIR"}).status_code == 400  # paths are exact


def test_clients_file_formats(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text(
        '{"clients": [{"iss": "https://EHR.example/fhir/", "client_id": "a", "client_secret": "s"}]}', "utf-8"
    )
    [client] = load_clients(path) or []
    assert (client.iss, client.client_id, client.client_secret) == ("https://ehr.example/fhir", "a", "s")
    assert load_clients(None) is None


def test_signed_values_expire_and_resist_tampering() -> None:
    now = [1000.0]
    signer = Signer(b"secret", purpose="session", clock=lambda: now[0])
    signed = signer.sign("abc")
    assert signer.unsign(signed, max_age_s=60) == "abc"
    now[0] += 61
    with pytest.raises(BadSignatureError):
        signer.unsign(signed, max_age_s=60)
    now[0] = 1000.0
    for bad in (signed.replace("abc", "abd"), signed + "x", "abc", signed.replace("1000", "9999")):
        with pytest.raises(BadSignatureError):
            signer.unsign(bad, max_age_s=60)
    with pytest.raises(BadSignatureError):
        Signer(b"other", purpose="session").unsign(signed, max_age_s=60)
    with pytest.raises(BadSignatureError):
        Signer(b"secret", purpose="csrf", clock=lambda: 1000.0).unsign(signed, max_age_s=60)


def test_csrf_token_is_renewed_in_the_second_half_of_its_life(tmp_path: Path) -> None:
    from spasticity_cds.interfaces.web.csrf import CSRF_COOKIE

    client = support.PageClient(support.make_app(tmp_path, session_max_age_s=100))
    signer = Signer(b"test-secret", purpose="csrf", clock=lambda: time.time() - 60)
    old = signer.sign("oldtoken")
    client.cookies.set(CSRF_COOKIE, old)
    fresh = client.csrf("/")
    assert fresh != old and "oldtoken" not in fresh
    young = Signer(b"test-secret", purpose="csrf").sign("youngtoken")
    client.cookies = httpx.Cookies()
    client.cookies.set(CSRF_COOKIE, young)
    assert client.csrf("/") == young


def test_a_real_cds_hooks_card_opens_its_finding(tmp_path: Path, ehr: support.MockEhr) -> None:
    """The card's smart link (cds_hooks.cards) carries an appContext the page understands."""
    from spasticity_cds import api
    from spasticity_cds.cds_hooks.cards import CardBuilder, CardContext

    client = _client(tmp_path, ehr)
    engine = client.app.state.cds.engine
    result = api.evaluate(support.trend_bundle("smart-1", "Launch Patient"), now=support.FROZEN_NOW, engine=engine)
    context = CardContext(
        service_id="spasticity-patient-view",
        hook="patient-view",
        hook_instance="hook-1",
        patient_id="smart-1",
        user_id=None,
        base_url=PUBLIC,
        smart_launch_url=f"{PUBLIC}/smart/launch",
        now=support.FROZEN_NOW,
    )
    cards, _ = CardBuilder(engine).build(result, context)
    smart_links = [link for card in cards for link in card.get("links", []) if link["type"] == "smart"]
    assert smart_links, "the hooks service issues a smart link on its cards"
    link = smart_links[0]
    assert link["url"] == f"{PUBLIC}/smart/launch"
    app_context = json.loads(link["appContext"])
    launch = ehr.register_launch(app_context)
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir", "launch": launch})
    back = client.get(_callback_path(_authorize(start.headers["location"])))
    plan = client.get(back.headers["location"]).text
    assert re.search(rf'class="finding finding-[a-z]+ highlight" id="f-{re.escape(app_context["ruleId"])}"', plan)
    assert f'name="card_uuid" value="{app_context["cardUuid"]}"' in plan
    for other in (link for card in cards for link in card.get("links", []) if link["type"] == "absolute"):
        path = urlsplit(other["url"]).path
        if path.startswith("/kb/rules/"):
            assert client.get(path).status_code == 200


@pytest.mark.parametrize(("secret", "warned"), [(None, True), ("a-long-random-shared-secret-0123456789", False)])
def test_an_app_with_smart_launch_and_no_session_secret_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, secret: str | None, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="spasticity_cds.web"):
        support.make_app(tmp_path, public_base_url=PUBLIC, smart_allow_any_iss=True, session_secret=secret)
    said = [record.getMessage() for record in caplog.records if "without session_secret" in record.getMessage()]
    assert bool(said) is warned
