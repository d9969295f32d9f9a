"""Web settings: read once at start-up from a TOML file and environment, then injected into the app."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spasticity_cds.cds_hooks.fhir_client import url_within
from spasticity_cds.cds_hooks.security import TrustedIssuer, load_jwks_file
from spasticity_cds.cds_hooks.urls import LOOPBACK_HOSTS
from spasticity_cds.errors import SpasticityCdsError

CONFIG_ENV = "SPASTICITY_CDS_CONFIG"
BASE_URL_ENV = "SPASTICITY_CDS_PUBLIC_BASE_URL"
#: Hosts a browser treats as secure over plain http (Secure cookies are kept): local demos and tests only.
PATH_FIELDS = ("trusted_issuers_file", "smart_clients_file")
TUPLE_FIELDS = ("cors_origins", "fhir_server_allowlist", "frame_ancestors")
NUMBER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "auth_required": bool,
    "smart_allow_any_iss": bool,
    "fhir_timeout_s": (int, float),
    "max_body_bytes": int,
    "session_max_age_s": int,
    "smart_step_timeout_s": (int, float),
    "smart_max_response_bytes": int,
    "port": int,
    "workers": int,
}


class ConfigError(SpasticityCdsError):
    """The web configuration file is missing, malformed, or names an unknown setting."""

    exit_code = 2


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
    #: Demo only: let a SMART launch name any FHIR server when neither smart_clients_file nor an allow-list is set.
    smart_allow_any_iss: bool = False
    #: The whole of one SMART launch step (discovery, token exchange, all the patient reads), however slow the EHR.
    smart_step_timeout_s: float = 10.0
    #: The most any one answer from the EHR may weigh (a search page, the token, the SMART configuration).
    smart_max_response_bytes: int = 16 * 1024 * 1024
    #: Origins whose scripts may call /cds-services and /api/ (no other path answers other origins).
    cors_origins: tuple[str, ...] = ("*",)
    #: The password of the feedback report (HTTP Basic, any user name); without it the report is off: it shows
    #: clinicians' free-text comments, which may name patients.
    report_token: str | None = None
    kb_settings: dict[str, str | int | float | bool] = field(default_factory=dict)
    smart_launch_url: str | None = None
    fhir_server_allowlist: tuple[str, ...] = ()
    #: Origins (besides this app's) that may show its pages in a frame, such as an EHR that embeds the SMART app.
    frame_ancestors: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1

    @property
    def base_url(self) -> str:
        """The public base URL without a trailing slash (JWT audiences and card links hang off it)."""
        return self.public_base_url.rstrip("/")

    @property
    def launch_url(self) -> str:
        """Where a SMART launch of the app goes: the configured URL, else the app's own SMART launch page."""
        return self.smart_launch_url or f"{self.base_url}/smart/launch"

    @property
    def smart_launch_on(self) -> bool:
        """Whether this app accepts a SMART launch: an EHR is registered (the clients file or the FHIR server
        allow-list), or the demo setting opens it to any server. Otherwise every launch answers 400."""
        return self.smart_clients_file is not None or bool(self.fhir_server_allowlist) or self.smart_allow_any_iss

    @property
    def card_launch_url(self) -> str | None:
        """Where a card's smart link points, or None for no smart link: a launch URL of another app is linked as
        configured; this app's own launch page only when it would accept the launch (a link that answers 400 is
        one more thing on every card that does not work)."""
        ours = url_within(self.launch_url, self.base_url)
        return self.launch_url if self.smart_launch_on or not ours else None


def load_settings(path: Path) -> WebSettings:
    """Settings from a TOML file; relative paths in it are relative to the file. ConfigError if unusable."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration: {exc}", where=str(path)) from None
    return settings_from_mapping(raw, base_dir=path.parent, where=str(path))


def settings_from_mapping(raw: dict[str, Any], *, base_dir: Path, where: str) -> WebSettings:
    """Settings from a parsed mapping, each value checked against the field's type."""
    known = {f.name: f for f in dataclasses.fields(WebSettings)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}; known: {', '.join(sorted(known))}", where=where)
        values[name] = _converted(name, value, base_dir, where)
    settings = WebSettings(**values)
    if settings.smart_step_timeout_s <= 0 or settings.smart_max_response_bytes <= 0:
        raise ConfigError("smart_step_timeout_s and smart_max_response_bytes must be positive", where=where)
    if settings.workers < 1 or not (0 < settings.port < 65536):
        raise ConfigError("workers must be >= 1 and port in 1..65535", where=where)
    if not settings.public_base_url.startswith(("http://", "https://")):
        raise ConfigError("public_base_url must be an absolute http(s) URL", where=where)
    if settings.report_token is not None and len(settings.report_token) < 16:
        raise ConfigError("report_token must be at least 16 characters", where=where)
    for origin in settings.frame_ancestors:
        if not origin.startswith(("http://", "https://")) or any(c in origin for c in " ;,'\""):
            raise ConfigError(f"frame_ancestors entry {origin!r} is not an http(s) origin", where=where)
    if settings.frame_ancestors and not _secure_cookies_possible(settings.public_base_url):
        raise ConfigError(
            "frame_ancestors needs an https public_base_url: a framed app's cookies must be Secure "
            "(browsers accept that over plain http only on localhost)",
            where=where,
        )
    return settings


def _secure_cookies_possible(base_url: str) -> bool:
    parts = urlsplit(base_url)
    return parts.scheme == "https" or (parts.hostname or "") in LOOPBACK_HOSTS


def _converted(name: str, value: Any, base_dir: Path, where: str) -> Any:
    if name in PATH_FIELDS:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a path", where=where)
        path = Path(value)
        return path if path.is_absolute() else base_dir / path
    if name in TUPLE_FIELDS:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{name} must be an array of strings", where=where)
        return tuple(value)
    if name == "kb_settings":
        if not isinstance(value, dict):
            raise ConfigError("kb_settings must be a table", where=where)
        if not all(isinstance(v, str | int | float) for v in value.values()):  # bool is an int
            raise ConfigError("kb_settings values must be strings, numbers or booleans", where=where)
        return {str(k): v for k, v in value.items()}  # numbers stay numbers: the engine checks each by its type
    kind = NUMBER_FIELDS.get(name)
    if kind is bool:
        valid = isinstance(value, bool)
    elif kind is not None:
        valid = isinstance(value, kind) and not isinstance(value, bool)
    else:
        valid = isinstance(value, str)
    if not valid:
        raise ConfigError(f"{name} has the wrong type ({type(value).__name__})", where=where)
    return value


def settings_from_environment() -> WebSettings:
    """Settings from the file named by $SPASTICITY_CDS_CONFIG, or the defaults (how each worker starts)."""
    path = os.environ.get(CONFIG_ENV)
    settings = load_settings(Path(path)) if path else WebSettings()
    base_url = os.environ.get(BASE_URL_ENV)
    return dataclasses.replace(settings, public_base_url=base_url) if base_url else settings


def load_trusted_issuers(path: Path) -> list[TrustedIssuer]:
    """The CDS clients we accept, from TOML or JSON: ``[[issuer]]`` with iss, jwks_file, jku_allowlist, ..."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the trusted issuers: {exc}", where=str(path)) from None
    entries = raw.get("issuer") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError("expected a list of [[issuer]] tables", where=str(path))
    return [_issuer(entry, path) for entry in entries]


def _issuer(entry: Any, path: Path) -> TrustedIssuer:
    if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str):
        raise ConfigError("every issuer needs an iss string", where=str(path))
    try:
        jwks = None
        if "jwks_file" in entry:
            jwks_path = Path(entry["jwks_file"])
            jwks = load_jwks_file(jwks_path if jwks_path.is_absolute() else path.parent / jwks_path)
        tenants = entry.get("tenants")
        return TrustedIssuer(
            iss=entry["iss"],
            jwks=jwks,
            jku_allowlist=tuple(entry.get("jku_allowlist", ())),
            algorithms=tuple(entry.get("algorithms", ("ES384", "RS384"))),
            tenants=frozenset(tenants) if tenants is not None else None,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"issuer {entry['iss']!r}: {exc}", where=str(path)) from None
