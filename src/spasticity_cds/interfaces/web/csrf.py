"""Signed tokens for the web pages: HMAC-signed, timestamped values for CSRF double-submit and session cookies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from fastapi import Request

from spasticity_cds.interfaces.web.deps import AppState

CSRF_COOKIE = "cds_csrf"
CSRF_FIELD = "csrf_token"
SESSION_COOKIE = "cds_session"


class BadSignatureError(Exception):
    """A signed value was altered, signed with another key, malformed or too old."""


class Signer:
    """Signs short ASCII values with HMAC-SHA256 and a timestamp; `unsign` enforces a maximum age."""

    def __init__(self, secret: bytes, *, purpose: str, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(secret, purpose.encode(), hashlib.sha256).digest()
        self._clock = clock

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign(self, value: str) -> str:
        """``value.timestamp.signature``; ``value`` must not contain dots."""
        if "." in value or not value.isascii():
            raise ValueError("signed values must be ASCII without dots")
        payload = f"{value}.{int(self._clock())}"
        return f"{payload}.{self._mac(payload)}"

    def unsign(self, signed: str, *, max_age_s: int) -> str:
        """The original value, if the signature is valid and no older than ``max_age_s``."""
        return self.unsign_with_age(signed, max_age_s=max_age_s)[0]

    def unsign_with_age(self, signed: str, *, max_age_s: int) -> tuple[str, float]:
        """The original value and its age in seconds, if the signature is valid and not too old."""
        parts = signed.split(".")
        if len(parts) != 3 or not signed.isascii():
            raise BadSignatureError("malformed")
        value, stamp, mac = parts
        if not hmac.compare_digest(mac, self._mac(f"{value}.{stamp}")):
            raise BadSignatureError("bad signature")
        age = self._clock() - int(stamp) if stamp.isascii() and stamp.isdigit() else float("inf")
        if age > max_age_s:
            raise BadSignatureError("expired")
        return value, age


def app_secret(request: Request, state: AppState) -> bytes:
    """The configured session secret, or one random secret per app instance (single-process demo only)."""
    if state.settings.session_secret:
        return state.settings.session_secret.encode()
    secret: bytes | None = getattr(request.app.state, "web_page_secret", None)
    if secret is None:
        secret = secrets.token_bytes(32)
        request.app.state.web_page_secret = secret
    return secret


def csrf_signer(request: Request, state: AppState) -> Signer:
    """The signer for CSRF tokens."""
    return Signer(app_secret(request, state), purpose="csrf")


def session_signer(request: Request, state: AppState) -> Signer:
    """The signer for session cookies."""
    return Signer(app_secret(request, state), purpose="session")


def csrf_token_for(request: Request, state: AppState) -> tuple[str, bool]:
    """The token to put in forms and whether the cookie must be (re)set.

    A valid cookie in the first half of its life is reused (several tabs keep working); otherwise a new one is minted
    so that a form rendered now stays valid for at least half of ``session_max_age_s``.
    """
    signer = csrf_signer(request, state)
    existing = request.cookies.get(CSRF_COOKIE, "")
    max_age = state.settings.session_max_age_s
    if existing:
        try:
            _, age = signer.unsign_with_age(existing, max_age_s=max_age)
        except BadSignatureError:
            pass
        else:
            if age <= max_age / 2:
                return existing, False
    return signer.sign(secrets.token_urlsafe(24).replace(".", "_")), True


def csrf_valid(request: Request, state: AppState, submitted: str) -> bool:
    """Double-submit check: the form field equals the cookie, and both carry our valid, unexpired signature.

    In an EHR's frame (``frame_ancestors`` set) the field alone may do, when the browser says the form was sent from
    one of our own pages (see `sent_from_our_page`): the cookie was set in the frame and is partitioned to the EHR's
    site (CHIPS), so a form that opens its answer in a new tab (an upload's plan, without the script) reaches us
    without it, as a top-level request keyed to our own site.
    """
    if not submitted:
        return False
    cookie = request.cookies.get(CSRF_COOKIE, "")
    matches = bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode())
    if not matches and not (state.settings.frame_ancestors and sent_from_our_page(request)):
        return False
    try:
        csrf_signer(request, state).unsign(submitted, max_age_s=state.settings.session_max_age_s)
    except BadSignatureError:
        return False
    return True


def sent_from_our_page(request: Request) -> bool:
    """Whether the browser says that this request was made by a page of this very origin: ``Sec-Fetch-Site:
    same-origin``, a header that no page can set or forge (a form on another site, in a frame of it or not, is sent
    ``cross-site`` or ``same-site``). That is what the double-submit cookie proves when it cannot be sent; the signed
    token must still be ours and unexpired. A browser that sends no fetch metadata gets no such pass. ``Origin`` is
    no help here: our pages' ``Referrer-Policy: no-referrer`` makes a form's POST send ``Origin: null``."""
    return request.headers.get("sec-fetch-site") == "same-origin"
