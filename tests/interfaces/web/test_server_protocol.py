"""A request uvicorn cannot parse gets an OperationOutcome from the server protocol, like every other 4xx."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from spasticity_cds.interfaces.web.server_protocol import SERVER_HTTP, SERVER_LOOP


async def _hello(_: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture
def server_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    app = Starlette(routes=[Route("/", _hello)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=SERVER_HTTP, loop=SERVER_LOOP, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_an_unparsable_request_gets_an_operation_outcome(server_port: int, request_bytes: bytes) -> None:
    head, _, body = _exchange(server_port, request_bytes).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "application/fhir+json"
    assert headers["content-length"] == str(len(body))
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    outcome = orjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error" and outcome["issue"][0]["diagnostics"]


def test_a_well_formed_request_reaches_the_app(server_port: int) -> None:
    answer = _exchange(server_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"hello")
