"""Outbound FHIR queries for prefetch keys the client did not fill, under one total time budget (httpx).

The only I/O in ``cds_hooks``; the transport is injectable so tests can point it anywhere. The bearer token
is sent, never logged; ``next`` links are followed only on the same FHIR server (no open redirect).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from spasticity_cds.cds_hooks.prefetch import bundle_resources, next_link
from spasticity_cds.cds_hooks.urls import http_url
from spasticity_cds.fhir.parse import UTF8_BOM

logger = logging.getLogger("spasticity_cds.cds_hooks")
FHIR_JSON = "application/fhir+json"
MAX_PAGES = 20
#: Most bytes of one FHIR answer, once decoded (a gzip body is unpacked as it arrives): a page of a search the
#: service asks for is far smaller, and a larger one (or a compression bomb) would hold the worker and its memory.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


@dataclass
class FetchOutcome:
    """What the fetches gave: resources per key, and a reason for each key that could not be fetched."""

    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class FhirFetcher:
    """Runs relative FHIR queries (and follows next pages) against a client's FHIR server."""

    def __init__(
        self, *, budget_s: float, transport: httpx.AsyncBaseTransport | None = None, max_pages: int = MAX_PAGES
    ) -> None:
        self.budget_s = budget_s
        self.transport = transport
        self.max_pages = max_pages

    async def fetch(
        self,
        server: str,
        token: str | None,
        queries: Mapping[str, str],
        next_pages: Mapping[str, str],
        single_page: frozenset[str] = frozenset(),
    ) -> FetchOutcome:
        """Run every query and follow every pending next link, all within ``budget_s`` seconds in total.

        A key in ``single_page`` is a bounded search: only its first page is read.
        """
        outcome = FetchOutcome()
        base = server.rstrip("/") + "/"
        if not url_within(base, base):  # no token is ever sent to it
            unusable = "the fhirServer URL cannot be used (credentials in it, or not a valid http(s) URL)"
            outcome.failed = dict.fromkeys([*queries, *next_pages], unusable)
            return outcome
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        jobs = {key: base + query.lstrip("/") for key, query in queries.items()}
        jobs.update({f"{key}#next": url for key, url in next_pages.items()})
        async with httpx.AsyncClient(headers=headers, transport=self.transport, follow_redirects=False) as client:
            tasks = {
                key: asyncio.ensure_future(self._pages(client, base, url, bounded=key in single_page))
                for key, url in jobs.items()
            }
            done, pending = await asyncio.wait(tasks.values(), timeout=self.budget_s) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            for key, task in tasks.items():
                self._collect(key, task, done, outcome)
        return outcome

    def _collect(
        self, key: str, task: asyncio.Future[list[dict[str, Any]]], done: set[Any], outcome: FetchOutcome
    ) -> None:
        name = key.removesuffix("#next")
        if task not in done:
            outcome.failed[name] = f"the FHIR server did not answer within {self.budget_s:g} s"
        elif (error := task.exception()) is not None:
            # Only our own messages are shown: others can carry URL parts or library internals (logged instead).
            if not isinstance(error, FhirFetchError):
                logger.warning("FHIR query %s failed: %s", name, type(error).__name__)
            outcome.failed[name] = str(error) if isinstance(error, FhirFetchError) else "the query failed"
        else:
            outcome.resources.setdefault(name, []).extend(task.result())

    async def _pages(self, client: httpx.AsyncClient, base: str, url: str, *, bounded: bool) -> list[dict[str, Any]]:
        """The resources of a search's pages (only the first page of a ``bounded`` one)."""
        resources: list[dict[str, Any]] = []
        next_url: str | None = url
        for _ in range(1 if bounded else self.max_pages):
            if next_url is None:
                return resources
            if not url_within(next_url, base):
                raise FhirFetchError("a next link points outside the FHIR server")
            document = await self._get(client, next_url)
            if document.get("resourceType") == "Bundle":
                resources.extend(bundle_resources(document))
                link = next_link(document)
                next_url = _resolved(link, next_url) if link is not None else None
            else:
                resources.append(document)
                next_url = None
        if next_url is None or bounded:
            return resources
        raise FhirFetchError(f"more than {self.max_pages} pages")

    @staticmethod
    async def _get(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        try:
            async with client.stream("GET", url) as response:
                if response.status_code == 404 and "?" not in url:
                    return {"resourceType": "Bundle", "type": "searchset"}
                if response.status_code != 200:
                    raise FhirFetchError(f"the FHIR server answered HTTP {response.status_code}")
                body = await _bounded_body(response)
        except httpx.HTTPError as exc:
            raise FhirFetchError(f"the FHIR server could not be reached ({type(exc).__name__})") from None
        try:
            document = orjson.loads(body.removeprefix(UTF8_BOM))
        except orjson.JSONDecodeError:
            raise FhirFetchError("the FHIR server answered with something that is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise FhirFetchError("the FHIR server answered with something that is not a FHIR resource")
        if document["resourceType"] == "OperationOutcome":
            raise FhirFetchError("the FHIR server answered with an OperationOutcome")
        return document


def _resolved(link: str, page_url: str) -> str:
    """A next link as an absolute URL: servers should send absolute ones, some send them relative to the page."""
    page = http_url(page_url)
    try:
        return str(page.join(link)) if page is not None else link
    except (httpx.InvalidURL, TypeError, ValueError):
        return link  # refused by url_within as not under the server


async def _bounded_body(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise FhirFetchError(f"the FHIR server answered with more than {MAX_RESPONSE_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class FhirFetchError(Exception):
    """One query failed; the message is safe to show (no token, no patient data)."""


def url_within(url: str, base: str) -> bool:
    """Whether ``url`` lies under ``base``: the same scheme, host and port, and a path at or below base's path on
    a segment boundary, with no dot segments left once decoded, no encoded or back slash and no credentials
    (``{base}/../x``, ``{base}/..;/x``, ``{base}%2e%2e``, ``{base}%2Fx``, ``{host}.evil.example`` and ``{base}2`` all
    fail). Tokens are only ever sent under a base."""
    target, root = http_url(url), http_url(base)
    if target is None or root is None:
        return False
    if (target.scheme, target.host, target.port) != (root.scheme, root.host, root.port) or not target.host:
        return False
    raw_path = target.raw_path.split(b"?", 1)[0].lower()
    if target.userinfo or b"\\" in raw_path or b"%2f" in raw_path or b"%5c" in raw_path:
        return False  # credentials in the URL, or a slash some servers decode or read as one
    if {".", ".."} & {segment.split(";", 1)[0] for segment in target.path.split("/")}:
        return False  # ".." and "..;" (a path parameter Tomcat and Jetty drop) climb out of the base
    root_path = root.path.rstrip("/")
    return target.path == root_path or target.path.startswith(f"{root_path}/")
