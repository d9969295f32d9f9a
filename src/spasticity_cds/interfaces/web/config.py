"""Web settings: read once at start-up from a TOML file and environment, then injected into the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WebSettings:
    """Everything the web app needs to know about its deployment; defaults run a local demo."""

    public_base_url: str = "http://127.0.0.1:8000"
    store_url: str | None = None
    auth_required: bool = True
    trusted_issuers_file: Path | None = None
    fhir_timeout_s: float = 1.0
    max_body_bytes: int = 5 * 1024 * 1024
    session_secret: str | None = None
    session_max_age_s: int = 3600
    smart_clients_file: Path | None = None
    cors_origins: tuple[str, ...] = ("*",)
    kb_settings: dict[str, str] = field(default_factory=dict)
