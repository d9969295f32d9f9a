"""A tiny real FHIR server (http.server in a thread on 127.0.0.1) for the prefetch fallback tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


@dataclass
class Behaviour:
    """What the server answers: resources by type, plus delay, failure and page size switches."""

    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    delay_s: float = 0.0
    fail_status: int | None = None
    page_size: int = 1000
    relative_next: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour
    base: str

    def do_GET(self) -> None:
        self.behaviour.requests.append((self.path, self.headers.get("Authorization")))
        if self.behaviour.delay_s:
            time.sleep(self.behaviour.delay_s)
        if self.behaviour.fail_status:
            self._send(
                self.behaviour.fail_status,
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]},
            )
            return
        parts = urlsplit(self.path)
        path = parts.path.removeprefix("/fhir/")
        if "/" in path:
            kind, resource_id = path.split("/", 1)
            found = [r for r in self.behaviour.resources.get(kind, []) if r.get("id") == resource_id]
            self._send(200, found[0]) if found else self._send(
                404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
            )
            return
        self._send(200, self._page(path, parse_qs(parts.query)))

    def _page(self, kind: str, query: dict[str, list[str]]) -> dict[str, Any]:
        everything = [
            r
            for r in self.behaviour.resources.get(kind, [])
            if matches_token_search(r, {k: v[0] for k, v in query.items()})
        ]
        offset = int(query.get("_offset", ["0"])[0])
        size = min(self.behaviour.page_size, int(query.get("_count", ["1000"])[0]))
        page = everything[offset : offset + size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(everything),
            "entry": [{"resource": r} for r in page],
        }
        if offset + size < len(everything):
            params = {name: values[0] for name, values in query.items() if name != "_offset"}
            following = urlencode({**params, "_offset": offset + size}, safe="|,")
            base = "" if self.behaviour.relative_next else f"{self.base}/"
            bundle["link"] = [{"relation": "next", "url": f"{base}{kind}?{following}"}]
        return bundle

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        return


def matches_token_search(resource: dict[str, Any], params: dict[str, str]) -> bool:
    """FHIR token search on ``code`` and ``category``: any listed ``[system|]code`` (comma = OR) matches any coding."""
    for name in ("code", "category"):
        if name not in params:
            continue
        wanted = set(params[name].split(","))
        concepts = resource.get(name)
        concepts = concepts if isinstance(concepts, list) else [concepts or {}]
        codings = [c for concept in concepts for c in concept.get("coding", ())]
        if not any({c.get("code"), f"{c.get('system')}|{c.get('code')}"} & wanted for c in codings):
            return False
    return True


@contextmanager
def fhir_server(behaviour: Behaviour) -> Iterator[str]:
    """Serve ``behaviour`` on a free loopback port; yields the FHIR base URL."""
    handler = type("Handler", (_Handler,), {"behaviour": behaviour, "base": ""})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    handler.base = base
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
