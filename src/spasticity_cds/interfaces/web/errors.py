"""HTTP edges of the app: OperationOutcome for every error, a request-size limit, scoped CORS, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spasticity_cds.cds_hooks.outcome import operation_outcome
from spasticity_cds.errors import AuthenticationError, SpasticityCdsError
from spasticity_cds.interfaces.web.rendering import render

logger = logging.getLogger("spasticity_cds.web")
#: What a page says when a part the app needs (the feedback store) is down: nothing was kept, so try again.
UNAVAILABLE_PAGE_TEXT = (
    "The service cannot do this now (a part it needs, such as the feedback store, is not reachable), so nothing "
    "was saved. Go back and try again in a moment."
)
FHIR_JSON = "application/fhir+json"
#: On every JSON answer: it may hold patient data (kept by no cache), and is never to be sniffed as HTML.
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
#: The only paths that answer other origins: CDS Hooks requires CORS of a service, and the JSON API is for scripts.
CORS_PATHS = ("/cds-services", "/api/")


def outcome_response(status: int, diagnostics: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An error response whose body is an OperationOutcome, with the JSON answers' safe headers."""
    body = orjson.dumps(operation_outcome(status, diagnostics))
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=JSON_HEADERS | (headers or {}))


def unauthorized() -> Response:
    """401 with no detail: which check failed stays in our log."""
    return outcome_response(401, None, {"WWW-Authenticate": "Bearer"})


async def _package_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SpasticityCdsError)
    if isinstance(exc, AuthenticationError):
        logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return unauthorized()
    if exc.http_status >= 500:
        logger.error("%s %s: %s", request.method, request.url.path, exc)
        if _wants_a_page(request):
            return _error_page(request, exc.http_status, "Not available now", UNAVAILABLE_PAGE_TEXT)
        return outcome_response(exc.http_status, "the service cannot answer now")
    if _wants_a_page(request):
        return _error_page(request, exc.http_status, "Could not do that", exc.message)
    return outcome_response(exc.http_status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404 and _wants_a_page(request):
        return _not_found_page(request)
    detail = exc.detail if isinstance(exc.detail, str) else None
    return outcome_response(exc.status_code, detail, dict(exc.headers or {}))


def _wants_a_page(request: Request) -> bool:
    """A browser asking for a page (Accept: text/html) outside the service and the API, whose clients read JSON."""
    path = request.url.path
    return "text/html" in request.headers.get("accept", "") and not path.startswith(CORS_PATHS)


def _not_found_page(request: Request) -> Response:
    """The site's own 404 page, for an address that names no page."""
    message = "There is no page at this address. Check the link, or start from the links below."
    return _error_page(request, 404, "Page not found", message)


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    """The site's own error page, for a browser asking for a page (never a JSON body, never a traceback)."""
    return render(
        request, request.app.state.cds, "error.html", {"title": title, "message": message}, status_code=status
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    return outcome_response(400, "the request does not have the expected form")


class OutcomeCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, whose refused preflight (an origin, method or header not allowed) is an OperationOutcome
    like every other error, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """The preflight answer; a refusal keeps its status, headers and reason, as an OperationOutcome."""
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return outcome_response(response.status_code, bytes(response.body).decode(), headers)


class ScopedCorsMiddleware:
    """CORS only under ``prefixes`` (the CDS Hooks service and the JSON API, which other origins' scripts call):
    the pages and the feedback report carry no CORS header, so no other site's script can read them."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...], allow_origins: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes
        self.cors = OutcomeCorsMiddleware(
            app,
            allow_origins=list(allow_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],  # an EHR's browser may add its own headers; credentials (cookies) are never allowed
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope["path"]).startswith(self.prefixes):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class CatchAllMiddleware:
    """Turns any unhandled exception into a 500 OperationOutcome inside the CORS layer; logs it server-side."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await outcome_response(500, "internal error")(scope, receive, send)


class BodySizeLimitMiddleware:
    """Rejects bodies larger than ``max_bytes`` with 413, by Content-Length or while streaming; a path in
    ``own_limit_paths`` enforces a limit no higher itself (a form answering with its page, not with JSON)."""

    def __init__(self, app: ASGIApp, max_bytes: int, own_limit_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limit_paths = own_limit_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.own_limit_paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLargeError
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLargeError:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await outcome_response(413, f"the request body is larger than {self.max_bytes} bytes")(scope, receive, send)


class _TooLargeError(Exception):
    pass


def install_error_handling(
    app: FastAPI, *, max_body_bytes: int, cors_origins: tuple[str, ...], own_limit_paths: frozenset[str] = frozenset()
) -> None:
    """Exception handlers, size limit (but on ``own_limit_paths``) and CORS on ``CORS_PATHS`` only (outermost, so
    error answers there carry CORS headers too)."""
    handlers: dict[Any, Any] = {
        SpasticityCdsError: _package_error,
        StarletteHTTPException: _http_error,
        RequestValidationError: _validation_error,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes, own_limit_paths=own_limit_paths)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(ScopedCorsMiddleware, prefixes=CORS_PATHS, allow_origins=cors_origins)
