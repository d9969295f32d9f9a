"""The app factory: builds one FastAPI app from injected parts; the hooks and page routers plug in here."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.errors import InputError
from spasticity_cds.interfaces.web import hooks_routes, pages
from spasticity_cds.interfaces.web.config import ConfigError, WebSettings, settings_from_environment
from spasticity_cds.interfaces.web.deps import AppState
from spasticity_cds.interfaces.web.errors import install_error_handling
from spasticity_cds.interfaces.web.openapi import as_served

logger = logging.getLogger("spasticity_cds.web")


class CdsApp(FastAPI):
    """The FastAPI app, whose OpenAPI document describes the app as it answers (`openapi.as_served`)."""

    def openapi(self) -> dict[str, Any]:
        """The document FastAPI generates, completed once: FastAPI keeps it and serves it again."""
        if self.openapi_schema is None:
            self.openapi_schema = as_served(super().openapi())
        return self.openapi_schema


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On shutdown, write the issued cards still queued."""
    yield
    app.state.hooks.cards.flush()


def create_app(
    settings: WebSettings | None = None,
    *,
    engine: Engine | None = None,
    store: Any = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """A ready app; every argument left out takes its production default (shipped KB, SQLite store, UTC clock)."""
    settings = settings or WebSettings()
    engine = engine or load_knowledge_base()
    try:  # a bad [kb_settings] entry stops the server at start, not every call with a 400
        engine.settings_for(settings.kb_settings)
    except InputError as error:
        raise ConfigError(f"[kb_settings]: {error.message}") from None
    if store is None:
        from spasticity_cds.store import open_store

        store = open_store(settings.store_url)
    # No Swagger UI page: it loads its scripts from a CDN; the OpenAPI document stays at /openapi.json.
    app = CdsApp(title="spasticity-cds", docs_url=None, redoc_url=None, lifespan=_lifespan)
    # A path with an extra slash is a 404 OperationOutcome: a redirect would build its Location from the Host header.
    app.router.redirect_slashes = False
    app.state.cds = AppState(
        engine=engine,
        store=store,
        clock=clock or (lambda: datetime.now(UTC)),
        settings=settings,
    )
    app.state.hooks = hooks_routes.build_hooks_state(app.state.cds)
    if settings.smart_launch_on and not settings.session_secret:
        # Said here as well as by `serve`: other process managers (gunicorn, a container's several replicas) start
        # apps too, and a launch that lands on another process than the one that began it would fail unexplained.
        logger.warning(
            "SMART launch is on without session_secret: this process signs cookies and seals sessions with a key "
            "of its own, so a launch continues only on this process and none survives a restart. Set "
            "session_secret, the same on every worker and host."
        )
    install_error_handling(
        app,
        max_body_bytes=settings.max_body_bytes,
        cors_origins=settings.cors_origins,
        own_limit_paths=frozenset({pages.UPLOAD_PATH}),
    )
    app.router.routes.append(hooks_routes.service_route)
    app.include_router(hooks_routes.router)
    app.include_router(pages.router)
    return app


def app_from_environment() -> FastAPI:
    """The app as each server worker builds it: settings from $SPASTICITY_CDS_CONFIG (uvicorn --factory)."""
    return for_serving(create_app(settings_from_environment()))


def for_serving(app: FastAPI) -> FastAPI:
    """The app, with everything loaded so far taken out of the garbage collector's sight, for a server process.

    The knowledge base and the app are about 100 000 objects that live as long as the process; every full
    collection walked them all, 50 ms during which every call in flight waited (in-process, 2000 hook calls: one
    such pause and a 108 ms one). Frozen (`gc.freeze`), they are not walked again; the same calls then saw no pause
    over 1.5 ms. Only for a process that serves until it stops: objects frozen here are never collected as cycles.
    """
    gc.collect()
    gc.freeze()
    return app
