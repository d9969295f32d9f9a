"""The app factory: builds one FastAPI app from injected parts; the hooks and page routers plug in here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.interfaces.web.deps import AppState


def create_app(
    settings: WebSettings | None = None,
    *,
    engine: Engine | None = None,
    store: Any = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """A ready app; every argument left out takes its production default (shipped KB, SQLite store, UTC clock)."""
    settings = settings or WebSettings()
    if store is None:
        from spasticity_cds.store import open_store

        store = open_store(settings.store_url)
    app = FastAPI(title="spasticity-cds", docs_url="/api/docs", redoc_url=None)
    app.state.cds = AppState(
        engine=engine or load_knowledge_base(),
        store=store,
        clock=clock or (lambda: datetime.now(UTC)),
        settings=settings,
    )
    return app
