"""`spasticity-cds serve`: the web app and CDS Hooks service on uvicorn, configured from a TOML file."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

APP_FACTORY = "spasticity_cds.interfaces.web.app:app_from_environment"
#: A SMART plan's URL names its session: the access log shows the page, not the id.
SMART_SESSION_PATH = re.compile(r"(/smart/plan/)[^/?]+")


class SmartAccessLogFilter(logging.Filter):
    """Keeps secrets out of uvicorn's access log: no query string on /smart/* (the callback's authorization code
    and state, a launch's iss and launch token), no session id in a plan's path."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn logs (client, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and args[2].startswith("/smart/"):
            path = SMART_SESSION_PATH.sub(r"\1[session]", args[2].split("?", 1)[0])
            record.args = (args[0], args[1], path, args[3], args[4])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, its access log passed through `SmartAccessLogFilter` (in every worker)."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["smart"] = {"()": f"{__name__}.{SmartAccessLogFilter.__name__}"}
    config["handlers"]["access"]["filters"] = ["smart"]
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `serve`; command-line values win over the configuration file."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML settings (see docs/cds-hooks.md)")
    parser.add_argument("--host", help="interface to listen on (default from the config, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default from the config, else 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (share the store: use PostgreSQL for > 1)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace, console: Console) -> int:
    """Check the configuration once (store migrated, trusted clients readable), then serve until stopped."""
    import uvicorn

    from spasticity_cds.interfaces.web.config import (
        BASE_URL_ENV,
        CONFIG_ENV,
        WebSettings,
        load_settings,
        load_trusted_issuers,
    )
    from spasticity_cds.interfaces.web.server_protocol import SERVER_HTTP, SERVER_LOOP
    from spasticity_cds.interfaces.web.smart import load_clients
    from spasticity_cds.store import open_store

    settings = load_settings(args.config) if args.config else WebSettings()
    if settings.auth_required and settings.trusted_issuers_file:
        load_trusted_issuers(settings.trusted_issuers_file)
    load_clients(settings.smart_clients_file)  # a broken file stops the start, not every launch
    open_store(settings.store_url).close()
    if not settings.auth_required:
        console.print("[bold red]WARNING: CDS Hooks authentication is OFF (auth_required = false).[/]")
        console.print("[bold red]Any caller can use the service. Never run like this with real patient data.[/]")
    if not settings.smart_launch_on:
        console.print(
            "SMART launch is off: no EHR registered (smart_clients_file or fhir_server_allowlist); "
            "cards carry no smart link."
        )
    elif settings.smart_clients_file is None and not settings.fhir_server_allowlist:
        console.print("[bold red]WARNING: SMART launch is open to any FHIR server (smart_allow_any_iss = true).[/]")
        console.print("[bold red]It will contact and redirect to whatever server a launch names. Demo only.[/]")
    if settings.report_token is None:
        console.print("The feedback report (/reports/feedback) is off: set report_token to read it.")
    workers = args.workers or settings.workers
    if workers > 1 and not (settings.store_url or "").startswith("postgresql"):
        console.print("[yellow]Several workers on SQLite: use a PostgreSQL store_url for real deployments.[/]")
    if workers > 1 and not settings.session_secret:
        console.print(
            "[yellow]Several workers without session_secret: each makes its own, so a form or a SMART launch fails "
            "when its next request lands on another worker. Set session_secret.[/]"
        )
    if args.config:
        os.environ[CONFIG_ENV] = str(args.config.resolve())
    else:
        os.environ.pop(CONFIG_ENV, None)
    host, port = args.host or settings.host, args.port or settings.port
    base_url = settings.base_url
    if settings.public_base_url == WebSettings.public_base_url and (host, port) != (settings.host, settings.port):
        # No public URL configured: the one this process listens on is the one clients and JWT audiences use.
        base_url = f"http://{host}:{port}"
        os.environ[BASE_URL_ENV] = base_url
    else:
        os.environ.pop(BASE_URL_ENV, None)
    console.print(f"Open {base_url}/ in a browser for the clinician pages (listening on {host}:{port}).")
    console.print(f"CDS Hooks discovery: {base_url}/cds-services")
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=args.log_level,
        log_config=log_config(),
        server_header=False,
        http=SERVER_HTTP,
        loop=SERVER_LOOP,
    )
    return 0
