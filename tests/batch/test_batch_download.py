"""A manifest whose files are on a server: downloaded from a real local HTTP server, with and without a token."""

from __future__ import annotations

import argparse
import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds.batch import BatchOptions, run_batch
from spasticity_cds.errors import BatchError

from .batch_helpers import CLEAN_PROBLEMS, NOW, run

TOKEN = "secret-token-for-tests"


@dataclass
class Files:
    """What the export server holds and what it was asked."""

    folder: Path
    token: str | None = None
    redirect_to: str | None = None
    seen: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    files: Files

    def do_GET(self) -> None:
        self.files.seen.append((self.path, self.headers.get("Authorization")))
        name = self.path.rsplit("/", 1)[-1]
        if self.files.redirect_to is not None:
            self._answer(302, b"", location=f"{self.files.redirect_to}/{name}")
        elif self.files.token is not None and self.headers.get("Authorization") != f"Bearer {self.files.token}":
            self._answer(401, b"")
        elif self.path.startswith("/truncated/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b'{"resourceType": "Patient"')
        elif self.path.startswith("/gzip/"):  # a gzip file as the body, not as a transfer encoding
            self._answer(200, gzip.compress((self.files.folder / name).read_bytes()))
        elif (self.files.folder / name).is_file():
            self._answer(200, (self.files.folder / name).read_bytes())
        else:
            self._answer(404, b"")

    def _answer(self, status: int, body: bytes, location: str | None = None) -> None:
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Type", "application/fhir+ndjson")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextmanager
def export_server(files: Files) -> Iterator[str]:
    """Serve ``files`` on a free loopback port; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"files": files}))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def remote_manifest(cohort: Path, folder: Path, base: str, *, requires_token: bool = False) -> Path:
    """The cohort's manifest with every file at ``base``/name."""
    manifest = orjson.loads((cohort / "manifest.json").read_bytes())
    for entry in manifest["output"]:
        entry["url"] = f"{base}/{entry['url']}"
    manifest["requiresAccessToken"] = requires_token
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    return folder / "manifest.json"


def test_remote_files_are_downloaded_and_give_the_local_run_s_tasks(clean_cohort: Path, tmp_path: Path) -> None:
    files = Files(clean_cohort)
    with export_server(files) as base:
        manifest = remote_manifest(clean_cohort, tmp_path / "m", f"{base}/files")
        summary = run(manifest, tmp_path / "remote")
    run(clean_cohort, tmp_path / "local")
    assert (tmp_path / "remote" / "Task.ndjson").read_bytes() == (tmp_path / "local" / "Task.ndjson").read_bytes()
    urls = [entry["url"] for entry in summary.manifest["input"]["files"]]
    assert urls and all(url.startswith(f"{base}/files/") for url in urls)
    assert len(files.seen) == len(urls)
    assert all(authorization is None for _, authorization in files.seen)  # no token asked for, none sent
    assert not (tmp_path / "remote" / "_work").exists()


def test_a_gzip_body_is_read_as_gzip(clean_cohort: Path, tmp_path: Path) -> None:
    with export_server(Files(clean_cohort)) as base:
        summary = run(remote_manifest(clean_cohort, tmp_path / "m", f"{base}/gzip"), tmp_path / "gz")
    run(clean_cohort, tmp_path / "local")
    assert (tmp_path / "gz" / "Task.ndjson").read_bytes() == (tmp_path / "local" / "Task.ndjson").read_bytes()
    assert summary.counts["problems"] == CLEAN_PROBLEMS


def test_the_token_is_sent_when_required_and_written_nowhere(clean_cohort: Path, tmp_path: Path) -> None:
    files = Files(clean_cohort, token=TOKEN)
    with export_server(files) as base:
        manifest = remote_manifest(clean_cohort, tmp_path / "m", f"{base}/files", requires_token=True)
        with pytest.raises(BatchError, match="requiresAccessToken") as missing:
            run(manifest, tmp_path / "none")
        with pytest.raises(BatchError, match="HTTP 401") as refused:
            run(manifest, tmp_path / "wrong", access_token="not-the-token")
        run(manifest, tmp_path / "ok", access_token=TOKEN)
    assert files.seen and files.seen[-1][1] == f"Bearer {TOKEN}"
    assert TOKEN not in str(missing.value) + str(refused.value)
    assert not (tmp_path / "none").exists() and not (tmp_path / "wrong").exists()
    written = b"".join(path.read_bytes() for path in (tmp_path / "ok").rglob("*") if path.is_file())
    assert TOKEN.encode() not in written


def test_a_redirect_to_another_host_does_not_carry_the_token(clean_cohort: Path, tmp_path: Path) -> None:
    storage = Files(clean_cohort)
    with export_server(storage) as storage_base:
        front = Files(clean_cohort, redirect_to=f"{storage_base.replace('127.0.0.1', 'localhost')}/files")
        with export_server(front) as base:
            manifest = remote_manifest(clean_cohort, tmp_path / "m", f"{base}/files", requires_token=True)
            run(manifest, tmp_path / "out", access_token=TOKEN)
    assert all(authorization == f"Bearer {TOKEN}" for _, authorization in front.seen)
    assert storage.seen and all(authorization is None for _, authorization in storage.seen)


@pytest.mark.parametrize(("path", "message"), [("missing", "HTTP 404"), ("truncated", "RemoteProtocolError")])
def test_a_failed_or_cut_download_stops_the_run_before_any_output(
    clean_cohort: Path, tmp_path: Path, path: str, message: str
) -> None:
    with export_server(Files(tmp_path / "nothing")) as base:
        manifest = remote_manifest(clean_cohort, tmp_path / "m", f"{base}/{path}")
        with pytest.raises(BatchError, match=message) as failure:
            run(manifest, tmp_path / "out")
    assert f"{base}/{path}/" in str(failure.value)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_the_cli_reads_the_token_from_the_variable_it_names(
    clean_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from spasticity_cds.batch import cli

    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return parser.parse_args(argv)

    console = Console(file=None, width=200, force_terminal=False, color_system=None, quiet=True)
    monkeypatch.delenv("EXPORT_TOKEN", raising=False)
    with pytest.raises(BatchError, match="EXPORT_TOKEN"):
        cli.run(parse(str(clean_cohort), "--out", str(tmp_path / "a"), "--access-token-env", "EXPORT_TOKEN"), console)
    monkeypatch.setenv("EXPORT_TOKEN", TOKEN)
    files = Files(clean_cohort, token=TOKEN)
    with export_server(files) as base:
        manifest = remote_manifest(clean_cohort, tmp_path / "m", f"{base}/files", requires_token=True)
        args = parse(str(manifest), "--out", str(tmp_path / "b"), "--access-token-env", "EXPORT_TOKEN")
        assert cli.run(args, console) == 0
    assert files.seen and all(authorization == f"Bearer {TOKEN}" for _, authorization in files.seen)


def test_progress_is_told_each_file_s_bytes_on_the_wire(clean_cohort: Path, tmp_path: Path) -> None:
    told: dict[int, list[tuple[str, int, int | None]]] = {}

    def downloads(number: int, name: str, received: int, announced: int | None) -> None:
        told.setdefault(number, []).append((name, received, announced))

    with export_server(Files(clean_cohort)) as base:
        manifest = remote_manifest(clean_cohort, tmp_path / "m", f"{base}/gzip")
        summary = run_batch(BatchOptions(source=manifest, out=tmp_path / "out", now=NOW), downloads=downloads)
    names = [url.rsplit("/", 1)[-1] for url in (entry["url"] for entry in summary.manifest["input"]["files"])]
    assert sorted(told) == list(range(len(names)))
    for number, calls in told.items():
        sent = len(gzip.compress((clean_cohort / names[number]).read_bytes()))
        received = [count for _, count, _ in calls]
        assert {name for name, _, _ in calls} == {names[number]}
        assert received == sorted(received) and received[-1] == sent  # the gzip file as sent, not unpacked
        assert {announced for _, _, announced in calls} == {sent}


def test_the_progress_columns_count_bytes_for_a_download_and_patients_otherwise() -> None:
    from rich.progress import Progress

    from spasticity_cds.batch import cli

    progress = Progress()
    progress.add_task("patients", total=30, completed=12)
    progress.add_task("download", total=2_500_000, completed=1_200_000, bytes=True)
    patients, download = progress.tasks
    count, rate = cli._CountColumn(), cli._RateColumn()
    assert count.render(patients).plain == "12/30"
    assert count.render(download).plain == "1.2 MB/2.5 MB"
    assert rate.render(patients).plain == "-- patients/s"
    assert rate.render(download).plain == "-- B/s"
