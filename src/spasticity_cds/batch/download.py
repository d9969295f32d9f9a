"""Download the files of a Bulk Data manifest that lists ``http(s)://`` URLs, streamed into the run's work folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from spasticity_cds.errors import BatchError

#: Seconds to connect, and at most between two received chunks (a file of gigabytes may take long in total).
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
CHUNK_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
#: What the Bulk Data specification says a client asks for.
ACCEPT = "application/fhir+ndjson"

#: Told after every chunk: (file number, file name, bytes received, bytes announced by Content-Length or None).
DownloadProgress = Callable[[int, str, int, int | None], None]


def is_remote(url: str) -> bool:
    """Whether a manifest ``output[].url`` is on a server rather than on this machine."""
    return urlparse(url).scheme in ("http", "https")


@dataclass(slots=True)
class Downloader:
    """Fetches remote export files one after the other into ``folder``; ``token`` is sent as a bearer token when the
    manifest says the files need one (``requiresAccessToken``), never logged or written anywhere; ``progress`` is
    told how far each file has come."""

    folder: Path
    token: str | None = None
    transport: httpx.BaseTransport | None = None
    progress: DownloadProgress | None = None
    downloaded: int = 0

    def fetch(self, url: str, requires_token: bool, where: str) -> Path:
        """The downloaded file of ``url``; a ``BatchError`` naming the URL when it cannot be had whole."""
        if requires_token and not self.token:
            raise BatchError(
                "the manifest says its files require an access token (requiresAccessToken): put the token in an "
                "environment variable and name it with --access-token-env",
                where=where,
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{self.downloaded:05d}.ndjson"
        headers = {"Accept": ACCEPT}
        if requires_token and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            # httpx drops the Authorization header on a redirect to another host (servers often redirect file
            # downloads to object storage with a signed URL of its own).
            with (
                httpx.Client(timeout=timeout, follow_redirects=True, transport=self.transport) as client,
                client.stream("GET", url, headers=headers) as response,
            ):
                if response.status_code != httpx.codes.OK:
                    raise BatchError(f"download of {url} failed: HTTP {response.status_code}", where=where)
                target = _written(response, target, _announcer(self.downloaded, url, response, self.progress))
        except httpx.HTTPError as error:
            raise BatchError(f"download of {url} failed: {type(error).__name__}", where=where) from None
        except OSError as error:
            raise BatchError(f"cannot write the download of {url}: {error.strerror or error}", where=where) from None
        self.downloaded += 1
        return target


def _announcer(
    number: int, url: str, response: httpx.Response, progress: DownloadProgress | None
) -> Callable[[], None]:
    """A call that tells ``progress`` the bytes received so far on the wire, which is what Content-Length counts
    (a body sent with a Content-Encoding is longer once decoded)."""
    if progress is None:
        return lambda: None
    name = urlparse(url).path.rsplit("/", 1)[-1] or url
    announced = response.headers.get("content-length", "")
    total = int(announced) if announced.isdigit() else None
    return lambda: progress(number, name, response.num_bytes_downloaded, total)


def _written(response: httpx.Response, target: Path, announce: Callable[[], None]) -> Path:
    """Stream the body to ``target``; a gzip body (sent as a file, not as a transfer encoding) is kept as
    ``.ndjson.gz`` so that the scan unpacks it."""
    chunks = response.iter_bytes(CHUNK_BYTES)
    first = next(chunks, b"")
    if first.startswith(GZIP_MAGIC):
        target = target.with_suffix(".ndjson.gz")
    with target.open("wb") as out:
        out.write(first)
        announce()
        for chunk in chunks:
            out.write(chunk)
            announce()
    return target
