"""What every route reads, injected once per app so tests can replace the engine, store or clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Request

from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.interfaces.web.config import WebSettings


@dataclass
class AppState:
    """The app's long-lived parts: knowledge base, feedback store, clock and settings."""

    engine: Engine
    store: Any
    clock: Callable[[], datetime]
    settings: WebSettings


async def app_state(request: Request) -> AppState:
    """FastAPI dependency: the AppState the app was created with (async: no thread hop per request)."""
    state: AppState = request.app.state.cds
    return state
