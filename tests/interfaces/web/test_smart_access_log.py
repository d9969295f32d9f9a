"""The access log of `serve` (uvicorn, with our log configuration) keeps SMART codes, states and session ids out."""

from __future__ import annotations

import logging.config
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds.interfaces.cli.serve_command import log_config


def test_smart_query_strings_and_session_ids_stay_out_of_the_access_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sock = support.free_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = support.make_app(tmp_path, public_base_url=base)
    config = uvicorn.Config(app, log_config=log_config(), log_level="info", ws="none", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        httpx.get(f"{base}/smart/callback?code=SECRETCODE&state=SECRETSTATE")
        httpx.get(f"{base}/smart/plan/SECRETSESSION?feedback=thanks")
        httpx.get(f"{base}/kb?q=kept")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # as the other tests expect it
    out = capfd.readouterr().out
    assert "GET /smart/callback HTTP/1.1" in out and "GET /smart/plan/[session] HTTP/1.1" in out
    assert "SECRET" not in out
    assert "GET /kb?q=kept HTTP/1.1" in out  # other pages log as before
