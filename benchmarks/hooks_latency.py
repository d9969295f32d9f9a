"""CDS Hooks latency on loopback: our order-sign service against a floor service (parse JSON, return no cards).

    python benchmarks/hooks_latency.py                      # prints the table; --output FILE writes markdown
    python benchmarks/hooks_latency.py --store-url postgresql+psycopg://...   # replay cache on PostgreSQL

Each server runs in its own uvicorn process (one worker); rounds alternate between the servers so that all see the
same background load. A closed-loop load generator with a fixed number of requests per client sends an order-sign
call (prefetch of a patient record, including the category search `recentObservations` that every service asks for;
one draft baclofen order above the kidney ceiling, so three cards come back, one with a dose suggestion); the floor
parses the same body. Targets (issue 5): p50 at 1 client within floor + 2 ms; p99 at 16 concurrent clients within 2x the
floor's p99; no errors. Not a test: numbers depend on the machine; run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

SERVICE = "als-spasticity-order-sign"
FLOOR = "floor (parse, no cards)"
ISS = "https://ehr.bench.example"
PATIENT = "bench-1"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: eGFR, ALT, AST, blood pressure, FVC: what the rules read, with a value each (monthly for a year).
CODED = (("98979-8", 45), ("1742-6", 20), ("1920-8", 22), ("8480-6", 128), ("8462-4", 78), ("19872-1", 85))
CATEGORIES = {"98979-8": "laboratory", "1742-6": "laboratory", "1920-8": "laboratory", "19872-1": "procedure"}
#: Each code's UCUM unit, as an EHR sends it (a value in a unit the knowledge base does not know is not read).
UNITS = {
    "98979-8": "mL/min/{1.73_m2}", "1742-6": "U/L", "1920-8": "U/L", "8480-6": "mm[Hg]", "8462-4": "mm[Hg]",
    "19872-1": "%", "8867-4": "/min", "29463-7": "kg", "8310-5": "Cel",
}  # fmt: skip
RECENT_COUNT = 100


def _order(status: str = "draft", order_id: str = "draft-1", dose: float = 20) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest", "id": order_id, "status": status, "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1292"}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "dosageInstruction": [{"timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                               "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg", "code": "mg"}}]}],
    }  # fmt: skip


def _observation(index: int, code: str, value: float, days: int) -> dict[str, Any]:
    when = (datetime.now(UTC) - timedelta(days=days)).date().isoformat()
    return {
        "resourceType": "Observation", "id": f"obs-{index}", "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": CATEGORIES.get(code, "vital-signs")}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": UNITS.get(code, "1"), "system": "http://unitsofmeasure.org",
                          "code": UNITS.get(code, "1")},
    }  # fmt: skip


def _text_only(index: int, value: int, days: int) -> dict[str, Any]:
    """An examination finding entered as text, without coding: only the category search finds it."""
    observation = _observation(index, "", 0, days)
    del observation["valueQuantity"]
    observation["category"][0]["coding"][0]["code"] = "exam"
    return observation | {"code": {"text": "Modified Ashworth, elbow flexors"}, "valueInteger": value}


def _monthly(start: int, codes: list[tuple[str, float]], offset: int) -> list[dict[str, Any]]:
    return [
        _observation(start + i * 12 + m, code, value, 30 * m + offset)
        for i, (code, value) in enumerate(codes)
        for m in range(12)
    ]


def _newest(observations: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return sorted(observations, key=lambda o: o["effectiveDateTime"], reverse=True)[:count]


def request_body() -> bytes:
    """An order-sign call with a year of monthly labs and vital signs prefetched by code, and the newest 100
    observations by category (recentObservations): the same coded ones, other vital signs the rules do not
    read, and text-only examination findings (about 180 resources, overlapping by id as a real EHR's would)."""
    coded = _monthly(0, list(CODED), 3)
    others = _monthly(len(coded), [("8867-4", 72), ("29463-7", 61), ("8310-5", 36.8)], 5)
    text_only = [_text_only(200 + m, 2, 30 * m + 7) for m in range(12)]
    condition = {
        "resourceType": "Condition", "id": "als", "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
    }  # fmt: skip

    def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}

    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/1",
            "patientId": PATIENT,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _order()}]},
        },
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1958-02-11"},
            "conditions": bundle([condition]),
            "medications": bundle([_order("active", "current-1", 10)]),
            "statements": bundle([]),
            "observations": bundle(coded),
            "recentObservations": bundle(_newest(coded + others + text_only, RECENT_COUNT)),
            "procedures": bundle([]),
            "devices": bundle([]),
        },
    }
    return json.dumps(body).encode()


# -- servers ---------------------------------------------------------------------------------------------


def floor_app() -> FastAPI:
    """The floor: a FastAPI app that reads and parses the body and answers no cards."""
    app = FastAPI()

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(b'{"cards":[]}', media_type="application/json")

    return app


def serve(kind: str, port: int, workdir: Path, store_url: str | None, auth: bool) -> None:
    """Run one server in this process until killed."""
    import logging

    import uvicorn

    from spasticity_cds.interfaces.web.app import create_app, for_serving
    from spasticity_cds.interfaces.web.config import WebSettings
    from spasticity_cds.interfaces.web.server_protocol import SERVER_HTTP, SERVER_LOOP

    if kind == "floor":
        app = floor_app()
    else:
        logging.getLogger("spasticity_cds").setLevel(logging.WARNING)
        settings = WebSettings(
            public_base_url=f"http://127.0.0.1:{port}",
            store_url=store_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
            auth_required=auth,
            trusted_issuers_file=workdir / "issuers.toml" if auth else None,
        )
        app = create_app(settings)
    app = for_serving(app)  # both as `spasticity-cds serve` builds each worker's app
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="error", access_log=False, http=SERVER_HTTP, loop=SERVER_LOOP
    )


@dataclass
class Server:
    """A server subprocess on a port."""

    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def start(kind: str, workdir: Path, store_url: str | None, auth: bool) -> Server:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--workdir", str(workdir)]
    command += (["--store-url", store_url] if store_url else []) + ([] if auth else ["--no-auth"])
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Server(process, port)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} server did not start")


# -- client keys -----------------------------------------------------------------------------------------


class Signer:
    """An ES384 CDS client trusted through a JWKS file; tokens are made before the timed runs."""

    def __init__(self, workdir: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        self.key = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True) | {"kid": "k1", "alg": "ES384", "use": "sig"}
        (workdir / "jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        (workdir / "issuers.toml").write_text(f'[[issuer]]\niss = "{ISS}"\njwks_file = "jwks.json"\n', encoding="utf-8")

    def tokens(self, audience: str, count: int) -> list[str]:
        import jwt

        now = int(time.time())
        claims = {"iss": ISS, "aud": audience, "iat": now, "exp": now + 3000}
        headers = {"kid": "k1", "typ": "JWT"}
        return [
            jwt.encode(claims | {"jti": uuid.uuid4().hex}, self.key, algorithm="ES384", headers=headers)
            for _ in range(count)
        ]


# -- load ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Latencies (ms) of one load level and how many calls failed."""

    latencies: list[float]
    errors: int
    seconds: float

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def load(port: int, body: bytes, clients: int, per_client: int, tokens: Callable[[int], list[str]] | None) -> Run:
    """Closed loop: each client thread sends its next request when the previous answer has been read."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    token_lists = [tokens(per_client) if tokens else [] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        nonlocal errors
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        failed = 0
        barrier.wait()
        for n in range(per_client):
            headers = {"Content-Type": "application/json"}
            if token_lists[index]:
                headers["Authorization"] = f"Bearer {token_lists[index][n]}"
            started = time.perf_counter()
            connection.request("POST", f"/cds-services/{SERVICE}", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000.0)
            failed += response.status != 200
        connection.close()
        with lock:
            latencies.extend(mine)
            errors += failed

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return Run(latencies, errors, time.perf_counter() - started)


@dataclass
class Target:
    """One server under test and how to make tokens for it."""

    name: str
    server: Server
    tokens: Callable[[int], list[str]] | None


def targets(workdir: Path, store_url: str | None) -> list[Target]:
    """The floor and our service (authentication off, then on), all started before any measurement."""
    signer = Signer(workdir)
    out = []
    for name, kind, auth in (
        (FLOOR, "floor", False),
        ("order-sign, auth off", "app", False),
        ("order-sign, JWT ES384 + replay cache", "app", True),
    ):
        server = start(kind, workdir, store_url, auth)
        audience = f"http://127.0.0.1:{server.port}/cds-services/{SERVICE}"
        make = (lambda n, audience=audience: signer.tokens(audience, n)) if auth else None
        out.append(Target(name, server, make))
    return out


def measure(servers: list[Target], body: bytes, args: argparse.Namespace) -> dict[str, dict[int, Run]]:
    """Rounds that alternate between the servers, so that each sees the same background load on the machine."""
    results = {t.name: {1: Run([], 0, 0.0), 16: Run([], 0, 0.0)} for t in servers}
    for target in servers:
        load(target.server.port, body, 2, args.warmup // 2, target.tokens)
    per_round = max(16, args.requests // args.rounds)
    for _ in range(args.rounds):
        for clients, per_client in ((1, per_round), (16, max(1, per_round // 8))):
            for target in servers:
                run = load(target.server.port, body, clients, per_client, target.tokens)
                total = results[target.name][clients]
                results[target.name][clients] = Run(
                    total.latencies + run.latencies, total.errors + run.errors, total.seconds + run.seconds
                )
    return results


def table(results: dict[str, dict[int, Run]]) -> list[str]:
    rows = [
        "| service | clients | requests | errors | p50 ms | p95 ms | p99 ms | max ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        for clients, run in runs.items():
            rows.append(
                f"| {name} | {clients} | {len(run.latencies)} | {run.errors} | {run.percentile(50):.2f} | "
                f"{run.percentile(95):.2f} | {run.percentile(99):.2f} | {max(run.latencies):.2f} | "
                f"{len(run.latencies) / run.seconds:.0f} |"
            )
    return rows


def verdict(floor: dict[int, Run], ours: dict[int, Run], name: str) -> list[str]:
    p50_ok = ours[1].percentile(50) <= floor[1].percentile(50) + 2.0
    p99_ok = ours[16].percentile(99) <= 2 * floor[16].percentile(99)
    errors_ok = ours[1].errors == ours[16].errors == 0
    return [
        f"- {name}: p50 at 1 client {ours[1].percentile(50):.2f} ms vs floor + 2 ms = "
        f"{floor[1].percentile(50) + 2:.2f} ms: **{'met' if p50_ok else 'NOT met'}**",
        f"- {name}: p99 at 16 clients {ours[16].percentile(99):.2f} ms vs 2x floor = "
        f"{2 * floor[16].percentile(99):.2f} ms: **{'met' if p99_ok else 'NOT met'}**",
        f"- {name}: errors {ours[1].errors + ours[16].errors}: **{'met' if errors_ok else 'NOT met'}**",
    ]


@contextmanager
def empty_store(url: str | None) -> Iterator[str | None]:
    """The PostgreSQL store URL pointed at a new, empty schema for this run (dropped afterwards), so that runs do not
    slow down as earlier runs' cards and replay rows pile up; None (SQLite in the temporary folder) as it is."""
    if url is None:
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from spasticity_cds.store.connection import resolve_store_url

    schema = f"latency_{uuid.uuid4().hex[:12]}"
    admin = create_engine(resolve_store_url(url))
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests at 1 client (16 clients send 2x)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds over the servers")
    parser.add_argument("--store-url", help="feedback store for our service (default: SQLite in a temp dir)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--serve", choices=["floor", "app"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-auth", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.workdir, args.store_url, not args.no_auth)
        return 0
    body = request_body()
    with tempfile.TemporaryDirectory() as folder, empty_store(args.store_url) as store_url:
        workdir = Path(folder)
        servers = targets(workdir, store_url)
        try:
            results = measure(servers, body, args)
        finally:
            for target in servers:
                target.server.stop()
    floor, names = results[FLOOR], [n for n in results if n != FLOOR]
    report = [
        "# CDS Hooks latency (loopback)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"store: {'PostgreSQL' if args.store_url else 'SQLite'}; request body {len(body)} bytes "
        f"({body.count(b'resourceType')} resources); one uvicorn worker per server; {args.rounds} rounds alternating "
        "between the servers; generated "
        f"{datetime.now(UTC).isoformat(timespec='seconds')} by `benchmarks/hooks_latency.py`.",
        "",
        *table(results),
        "",
        *[line for name in names for line in verdict(floor, results[name], name)],
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
