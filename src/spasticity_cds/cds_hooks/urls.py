"""Reading a URL a client sent (fhirServer, a next link) the way the outbound HTTP client will."""

from __future__ import annotations

import httpx

#: This machine's host names: plain http to them never crosses a network.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def http_url(text: str) -> httpx.URL | None:
    """``text`` as httpx reads it, or None when it cannot be read: httpx raises InvalidURL for most bad URLs, but a
    Punycode host that is no valid name (``xn--a.invalid``) parses and raises the idna package's error (a
    UnicodeError, so a ValueError) only when ``host`` is read; a URL sent by a client must never turn into a 500."""
    try:
        url = httpx.URL(text)
        _ = url.host
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    return url


def private_channel(text: str) -> bool:
    """Whether patient data and a bearer token may travel to ``text`` with no operator's say: https, or plain http
    to this machine (a local test server). Plain http elsewhere is readable on the way (standards: TLS for all)."""
    url = http_url(text)
    return url is not None and (url.scheme == "https" or (url.scheme == "http" and url.host in LOOPBACK_HOSTS))
