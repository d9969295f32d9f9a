"""Two uvicorn workers behave as one: the JWT replay cache and the card store are shared through PostgreSQL."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from spasticity_cds.store import open_store
from tests.postgres import fresh_schema

from .helpers import SIGN, Client, baclofen_order, hook_request, new_client, prefetch

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema on the test server (dropped afterwards)."""
    with fresh_schema("hooks_test") as url:
        yield url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def real_client() -> Client:
    return new_client(lambda: datetime.now(UTC))


@pytest.fixture
def two_workers(tmp_path: Path, postgres_url: str, real_client: Client) -> Iterator[tuple[str, str]]:
    """`spasticity-cds serve --workers 2` on a free port; yields (public base URL, store URL)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    issuers = real_client.write_trust(tmp_path)
    config = tmp_path / "serve.toml"
    config.write_text(
        f'public_base_url = "{base}"\nstore_url = "{postgres_url}"\ntrusted_issuers_file = "{issuers.name}"\n'
        f"port = {port}\nworkers = 2\n",
        encoding="utf-8",
    )
    executable = shutil.which("spasticity-cds", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "spasticity_cds.interfaces.cli.main"]
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--log-level", "warning"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(base, real_client, process, log)
        yield base, postgres_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_up(base: str, client: Client, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(encoding="utf-8", errors="replace")
        try:
            headers = {"Authorization": f"Bearer {client.token(base + '/cds-services')}"}
            if httpx.get(f"{base}/cds-services", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("the server did not come up within 60 s")


def _call(base: str, token: str) -> httpx.Response:
    body = hook_request("order-sign", prefetch_data=prefetch(), drafts=[baclofen_order()])
    with httpx.Client() as fresh:  # a new connection each time, so the calls spread over both workers
        return fresh.post(
            f"{base}/cds-services/{SIGN}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )


def test_replayed_tokens_are_refused_by_either_worker(two_workers: tuple[str, str], real_client: Client) -> None:
    base, _ = two_workers
    tokens = [real_client.token(f"{base}/cds-services/{SIGN}") for _ in range(20)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(lambda t: _call(base, t).status_code, tokens))
        again = list(pool.map(lambda t: _call(base, t).status_code, tokens))
    assert first == [200] * 20
    assert again == [401] * 20


def test_feedback_joins_cards_issued_by_the_other_worker(two_workers: tuple[str, str], real_client: Client) -> None:
    base, store_url = two_workers
    cards = [_call(base, real_client.token(f"{base}/cds-services/{SIGN}")).json()["cards"][0] for _ in range(6)]
    feedback_url = f"{base}/cds-services/{SIGN}/feedback"
    for card in cards:
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-24T14:31:00Z",
            "overrideReason": {"userComment": "tolerated before"},
        }
        with httpx.Client() as fresh:
            headers = {"Authorization": f"Bearer {real_client.token(feedback_url)}"}
            assert fresh.post(feedback_url, json={"feedback": [item]}, headers=headers, timeout=10).status_code == 200
    with open_store(store_url) as store:
        stored = store.list_hook_feedback()
    assert len(stored) == 6
    assert {item.rule_id for item in stored} == {"BACLOFEN-DOSE-ABOVE-CEILING"}
