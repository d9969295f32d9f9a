"""A SMART launch whose steps land on different uvicorn workers, or hosts, on one PostgreSQL store, succeeds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
CLIENT_ID = "cds-workers-client"
PROC = Path("/proc")


@pytest.fixture(scope="module")
def ehr() -> Iterator[support.MockEhr]:
    with support.running_ehr(CLIENT_ID, support.trend_bundle("smart-1", "Launch Patient"), "smart-1") as server:
        yield server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with support.postgres_schema() as url:
        yield url


@contextmanager
def serving(
    tmp_path: Path, name: str, *, port: int, public: str, workers: int, store_url: str, ehr: str
) -> Iterator[int]:
    """`spasticity-cds serve` on ``port`` until the block ends; yields its process id."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "clients.toml").write_text(f'[[clients]]\niss = "{ehr}/fhir"\nclient_id = "{CLIENT_ID}"\n', "utf-8")
    config = folder / "serve.toml"
    config.write_text(
        f'public_base_url = "{public}"\nstore_url = "{store_url}"\nsmart_clients_file = "clients.toml"\n'
        f'session_secret = "the-secret-every-worker-and-host-shares"\nport = {port}\nworkers = {workers}\n',
        encoding="utf-8",
    )
    executable = shutil.which("spasticity-cds", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "spasticity_cds.interfaces.cli.main"]
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--log-level", "warning"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}", process, log)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _free_port() -> int:
    with support.free_socket() as probe:
        port: int = probe.getsockname()[1]
        return port


def _wait_until_up(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(encoding="utf-8", errors="replace")
        try:
            if httpx.get(f"{base}/smart/launch", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("the server did not come up within 60 s")


class Browser:
    """One browser: its ``cds_session`` cookie, sent to whichever worker or host a request goes to."""

    def __init__(self) -> None:
        self.cookie = ""

    def get(self, client: httpx.Client, url: str) -> httpx.Response:
        headers = {"Cookie": f"cds_session={self.cookie}"} if self.cookie else {}
        response = client.get(url, headers=headers)
        self.cookie = response.cookies.get("cds_session") or self.cookie
        return response


def _to_ehr_and_back(launched: httpx.Response) -> str:
    """The EHR's authorize step (it approves at once); the callback's path and query it sends the browser back to."""
    assert launched.status_code == 302, launched.text
    answer = httpx.get(launched.headers["location"], follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    return f"{back.path}?{back.query}"


def test_a_launch_continues_on_another_host(tmp_path: Path, postgres_url: str, ehr: support.MockEhr) -> None:
    """Two hosts behind one public URL (a load balancer), each one worker, one store: every step changes host."""
    ports = [_free_port() for _ in range(2)]
    public = f"http://127.0.0.1:{ports[0]}"
    with ExitStack() as hosts:
        for n, port in enumerate(ports):
            host = serving(
                tmp_path, f"host-{n}", port=port, public=public, workers=1, store_url=postgres_url, ehr=ehr.base
            )
            hosts.enter_context(host)
        first, second = (httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) for port in ports)
        with first, second:
            browser = Browser()
            callback = _to_ehr_and_back(browser.get(first, f"/smart/launch?iss={ehr.base}/fhir"))
            back = browser.get(second, callback)
            assert back.status_code == 303, back.text
            plan = back.headers["location"]
            for host in (first, second, first):
                page = browser.get(host, plan)
                assert page.status_code == 200 and "Launch Patient" in page.text
            assert browser.get(first, callback).status_code == 400  # the state was taken: on every host


class Workers:
    """The uvicorn workers of one `serve --workers N`, and a keep-alive connection to each (Linux: /proc)."""

    def __init__(self, serve_pid: int, port: int) -> None:
        self.serve_pid = serve_pid
        self.port = port
        self.connections: dict[int, httpx.Client] = {}

    def connect_to_each(self, count: int) -> list[httpx.Client]:
        """Open connections until ``count`` workers each hold one; a connection stays with the worker that
        accepted it, so every request on it is served there."""
        deadline = time.monotonic() + 60
        while len(self.connections) < count:
            assert time.monotonic() < deadline, f"only {len(self.connections)} workers accepted a connection"
            client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=20)
            worker = self.serving(client.get("/static/app.css"))
            if worker in self.connections:
                client.close()
            else:
                self.connections[worker] = client
        return list(self.connections.values())

    def serving(self, response: httpx.Response) -> int:
        """The id of the worker process that holds the server side of ``response``'s connection."""
        local_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        inode = _server_socket_inode(self.port, local_port)
        for pid in _children(self.serve_pid):
            for fd in (PROC / str(pid) / "fd").iterdir():
                try:
                    if str(fd.readlink()) == f"socket:[{inode}]":
                        return pid
                except OSError:  # closed since listed
                    continue
        raise AssertionError(f"no worker of {self.serve_pid} holds the connection from port {local_port}")

    def close(self) -> None:
        for client in self.connections.values():
            client.close()


def _server_socket_inode(server_port: int, client_port: int) -> str:
    """The inode of the accepted socket 127.0.0.1:server_port <- 127.0.0.1:client_port (/proc/net/tcp)."""
    for line in (PROC / "net" / "tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        if (local, remote) == (server_port, client_port) and fields[9] != "0":
            return fields[9]
    raise AssertionError(f"no server socket for the connection from port {client_port}")


def _children(parent: int) -> list[int]:
    children = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended since listed
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(not (PROC / "net" / "tcp").exists(), reason="tells workers apart through Linux's /proc")
def test_a_launch_continues_on_the_other_worker(tmp_path: Path, postgres_url: str, ehr: support.MockEhr) -> None:
    """`serve --workers 2`: the launch on one worker, the callback on the other, the plan on both."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = serving(tmp_path, "two-workers", port=port, public=base, workers=2, store_url=postgres_url, ehr=ehr.base)
    with server as serve_pid:
        workers = Workers(serve_pid, port)
        try:
            one, other = workers.connect_to_each(2)
            for _ in range(3):
                browser = Browser()
                launched = browser.get(one, f"/smart/launch?iss={ehr.base}/fhir")
                callback = _to_ehr_and_back(launched)
                back = browser.get(other, callback)
                assert back.status_code == 303, back.text
                assert workers.serving(launched) != workers.serving(back)
                plan = back.headers["location"]
                served_by = set()
                for connection in (one, other):
                    page = browser.get(connection, plan)
                    assert page.status_code == 200 and "Launch Patient" in page.text
                    served_by.add(workers.serving(page))
                assert len(served_by) == 2
                assert browser.get(one, callback).status_code == 400  # the state was taken: on either worker
        finally:
            workers.close()
