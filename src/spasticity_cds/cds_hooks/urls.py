"""Reading a URL a client sent (fhirServer, a next link) the way the outbound HTTP client will."""

from __future__ import annotations

import httpx


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
