"""SMART launch against a real misbehaving EHR on a loopback port (slow, oversized, odd patient): a clear page."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds.interfaces.web import smart
from spasticity_cds.interfaces.web.smart import token_lifetime_s

STEP_TIMEOUT_S = 1.0
MAX_BYTES = 64 * 1024


class SlowEhr(ThreadingHTTPServer):
    """Answers the SMART configuration, token and Patient read; ``behaviour[path]`` makes one of them misbehave."""

    daemon_threads = True
    behaviour: dict[str, str]
    hits: dict[str, int]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: SlowEhr

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet tests

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer()

    def _answer(self) -> None:
        path = urlsplit(self.path).path
        self.server.hits[path] = self.server.hits.get(path, 0) + 1
        mode = self.server.behaviour.get(path, "")
        if mode == "trickle":
            self._trickle()
        elif mode == "huge":
            self._send(b'{"pad": "' + b"x" * (MAX_BYTES * 4) + b'"}', declared=False)
        else:
            self._send(json.dumps(self._normal(path)).encode())

    def _normal(self, path: str) -> dict[str, object]:
        base = self.server.base
        if path.endswith("/smart-configuration"):
            return {
                "issuer": f"{base}/auth",
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": self.server.behaviour.get("token_endpoint", f"{base}/token"),
                "code_challenge_methods_supported": ["S256"],
            }
        if path == "/token":
            patient = self.server.behaviour.get("patient", "p1")
            return {"access_token": "t", "token_type": "Bearer", "expires_in": 600, "patient": patient}
        if path == "/fhir/Condition":  # a next link back to the page itself
            return {"resourceType": "Bundle", "link": [{"relation": "next", "url": f"{base}{self.path}"}]}
        return {"resourceType": "Patient", "id": self.server.behaviour.get("returned", "p1")}

    def _send(self, body: bytes, *, declared: bool = True) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if declared:
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the app stopped reading: that is the point
            self.wfile.write(body)

    def _trickle(self) -> None:
        """Headers at once, then a byte every 0.1 s: no single read ever times out."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "100000")
        self.end_headers()
        with contextlib.suppress(OSError):  # the app gave up: that is the point
            self.wfile.write(b'{"a":')
            for _ in range(600):
                time.sleep(0.1)
                self.wfile.write(b" ")
                self.wfile.flush()


@pytest.fixture
def slow_ehr() -> Iterator[SlowEhr]:
    server = SlowEhr(("127.0.0.1", 0), Handler)
    server.behaviour, server.hits = {}, {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _client(tmp_path: Path, ehr: SlowEhr) -> support.PageClient:
    clients = tmp_path / "clients.toml"
    clients.write_text(f'[[clients]]\niss = "{ehr.base}/fhir"\nclient_id = "c"\n', "utf-8")
    app = support.make_app(
        tmp_path,
        public_base_url="http://cds.test",
        smart_clients_file=clients,
        smart_step_timeout_s=STEP_TIMEOUT_S,
        smart_max_response_bytes=MAX_BYTES,
    )
    return support.PageClient(app)


def _timed(client: support.PageClient, path: str, **options: object) -> tuple[object, float]:
    began = time.monotonic()
    response = client.get(path, **options)  # type: ignore[arg-type]
    return response, time.monotonic() - began


def _callback(client: support.PageClient, ehr: SlowEhr) -> str:
    start = client.get("/smart/launch", params={"iss": f"{ehr.base}/fhir"})
    assert start.status_code == 302, start.text
    oauth_state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    return f"/smart/callback?code=c1&state={oauth_state}"


def test_a_trickling_smart_configuration_ends_in_a_504(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    slow_ehr.behaviour["/fhir/.well-known/smart-configuration"] = "trickle"
    response, took = _timed(_client(tmp_path, slow_ehr), "/smart/launch", params={"iss": f"{slow_ehr.base}/fhir"})
    assert response.status_code == 504  # type: ignore[attr-defined]
    assert "did not answer within 1 seconds" in response.text  # type: ignore[attr-defined]
    assert took < STEP_TIMEOUT_S + 2


def test_a_trickling_token_endpoint_ends_in_a_504(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    client = _client(tmp_path, slow_ehr)
    slow_ehr.behaviour["/token"] = "trickle"
    response, took = _timed(client, _callback(client, slow_ehr))
    assert response.status_code == 504 and "token endpoint" in response.text  # type: ignore[attr-defined]
    assert took < STEP_TIMEOUT_S + 2


def test_trickling_patient_reads_end_in_a_504(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    client = _client(tmp_path, slow_ehr)
    back = client.get(_callback(client, slow_ehr))
    assert back.status_code == 303, back.text
    slow_ehr.behaviour["/fhir/Patient/p1"] = "trickle"
    response, took = _timed(client, back.headers["location"])
    assert response.status_code == 504 and "Traceback" not in response.text  # type: ignore[attr-defined]
    assert took < STEP_TIMEOUT_S + 2


@pytest.mark.parametrize("path", ["/fhir/.well-known/smart-configuration", "/token"])
def test_an_oversized_answer_is_cut_off(tmp_path: Path, slow_ehr: SlowEhr, path: str) -> None:
    client = _client(tmp_path, slow_ehr)
    target = _callback(client, slow_ehr) if path == "/token" else ""
    slow_ehr.behaviour[path] = "huge"
    response = client.get(target) if target else client.get("/smart/launch", params={"iss": f"{slow_ehr.base}/fhir"})
    assert response.status_code == 502 and f"more than {MAX_BYTES} bytes" in response.text


@pytest.mark.parametrize("patient", ["../Observation", "p1?_count=1", "p 1", "x" * 65, "p1#", "é"])
def test_a_patient_id_that_is_no_fhir_id_is_refused(tmp_path: Path, slow_ehr: SlowEhr, patient: str) -> None:
    client = _client(tmp_path, slow_ehr)
    slow_ehr.behaviour["patient"] = patient
    response = client.get(_callback(client, slow_ehr))
    assert response.status_code == 502 and "not a valid FHIR id" in response.text


def test_another_patient_than_the_launchs_is_refused(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    client = _client(tmp_path, slow_ehr)
    back = client.get(_callback(client, slow_ehr))
    slow_ehr.behaviour["returned"] = "p2"
    response = client.get(back.headers["location"])
    assert response.status_code == 502 and "did not return the launch&#39;s Patient" in response.text


def test_rfc9207_iss_on_the_callback_must_be_the_servers(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    client = _client(tmp_path, slow_ehr)
    mixed_up = client.get(_callback(client, slow_ehr) + "&iss=https%3A%2F%2Fevil.example")
    assert mixed_up.status_code == 400 and "another authorization server" in mixed_up.text
    for issuer in (f"{slow_ehr.base}/auth", f"{slow_ehr.base.upper()}/fhir/"):
        assert client.get(_callback(client, slow_ehr) + f"&iss={issuer}").status_code == 303


def test_a_plain_http_token_endpoint_off_this_machine_is_refused(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    slow_ehr.behaviour["token_endpoint"] = "http://ehr.example/token"
    response = _client(tmp_path, slow_ehr).get("/smart/launch", params={"iss": f"{slow_ehr.base}/fhir"})
    assert response.status_code == 502 and "not https" in response.text


@pytest.mark.parametrize("endpoint", ["https://xn--a.invalid/token", "https://[::1/token"])
def test_a_token_endpoint_the_http_client_cannot_read_is_refused(
    tmp_path: Path, slow_ehr: SlowEhr, endpoint: str
) -> None:
    slow_ehr.behaviour["token_endpoint"] = endpoint
    response = _client(tmp_path, slow_ehr).get("/smart/launch", params={"iss": f"{slow_ehr.base}/fhir"})
    assert response.status_code == 502 and "no usable token_endpoint" in response.text


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(600, 600.0), (10**9, 3600.0), (float("nan"), 300.0), (float("inf"), 300.0), (-5, 300.0), (True, 300.0)],
)
def test_odd_expires_in_gives_a_bounded_lifetime(expires_in: object, lifetime: float) -> None:
    assert token_lifetime_s(expires_in, 3600) == lifetime


def test_a_next_link_to_the_same_page_is_not_followed_again(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    client = _client(tmp_path, slow_ehr)
    back = client.get(_callback(client, slow_ehr))
    assert client.get(back.headers["location"]).status_code == 200
    assert slow_ehr.hits["/fhir/Condition"] == 1


def test_toward_an_unregistered_demo_server_the_token_step_says_nothing_more(tmp_path: Path, slow_ehr: SlowEhr) -> None:
    app = support.make_app(tmp_path, public_base_url="http://cds.test", smart_allow_any_iss=True)
    client = support.PageClient(app)
    slow_ehr.behaviour["token_endpoint"] = "http://127.0.0.1:9/internal"  # a discovery may name any host
    unreachable = client.get(_callback(client, slow_ehr))
    slow_ehr.behaviour["token_endpoint"] = f"{slow_ehr.base}/no-such-endpoint"
    slow_ehr.behaviour["/no-such-endpoint"] = "huge"
    answered = client.get(_callback(client, slow_ehr))
    assert unreachable.status_code == answered.status_code == 502
    for page in (unreachable.text, answered.text):
        assert "token endpoint could not be used" in page and "reached" not in page and "bytes" not in page


def test_a_flood_of_launches_does_not_end_a_plan_in_use(
    tmp_path: Path, slow_ehr: SlowEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smart, "MAX_PENDING_LAUNCHES", 3)
    client = _client(tmp_path, slow_ehr)
    plan = client.get(_callback(client, slow_ehr)).headers["location"]
    for _ in range(5):
        client.get("/smart/launch", params={"iss": f"{slow_ehr.base}/fhir"})
    assert client.get(plan).status_code == 200
