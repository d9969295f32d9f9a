"""The HTTP protocol every server process runs: uvicorn's httptools parser, its own 400 an OperationOutcome."""

from __future__ import annotations

from typing import Final

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from spasticity_cds.cds_hooks.outcome import operation_outcome
from spasticity_cds.interfaces.web.errors import FHIR_JSON, JSON_HEADERS


class OutcomeHttpToolsProtocol(HttpToolsProtocol):
    """A request uvicorn cannot parse (a bad request line, header or chunk) never reaches the app, and uvicorn
    answers it in plain text; every other 4xx of this service is an OperationOutcome, so this one is too."""

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps(operation_outcome(400, msg))
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        for header, text in {**JSON_HEADERS, "Content-Type": FHIR_JSON, "Content-Length": str(len(body))}.items():
            head.append(f"{header.lower()}: {text}\r\n".encode())
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()


#: How every server process runs uvicorn (``spasticity-cds serve`` and the latency benchmark): the httptools parser
#: (C; with the pure-Python h11 the hook service answered 620-645 calls/s at 16 clients, with httptools 735-755) on
#: the standard asyncio loop, named so that an installed uvloop is not picked up: uvloop gave the same median and a
#: longer tail at 16 clients (p99 69 ms against 27; `benchmarks/results/hooks_latency.md`, fifth session).
SERVER_HTTP: Final = OutcomeHttpToolsProtocol
SERVER_LOOP: Final = "asyncio"
