"""Helpers shared by the browser tests: the live app with its mock EHR, Chromium settings and screenshots."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interfaces" / "web"))
import pages_support as support

CHROMIUM = os.environ.get("SPASTICITY_CDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CLIENT_ID = "browser-test-client"


@dataclass
class Live:
    """The app under test, served by uvicorn, and the mock EHR it is registered with."""

    base: str
    app: Any
    ehr: support.MockEhr


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    """Save a screenshot under test-artifacts/screenshots/ (gitignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


@contextmanager
def live_app(
    folder: Path,
    settings_for: Callable[[support.MockEhr], dict[str, Any]] = lambda ehr: {},
    prepare: Callable[[Any], None] = lambda app: None,
) -> Iterator[Live]:
    """The app registered with a mock EHR (one launchable patient), served on a free loopback port; ``settings_for``
    adds settings that depend on the EHR, ``prepare`` changes the app before it serves."""
    with support.running_ehr(CLIENT_ID, support.trend_bundle("smart-1", "Launch Patient"), "smart-1") as ehr:
        clients = folder / "smart-clients.toml"
        clients.write_text(f'[[clients]]\niss = "{ehr.base}/fhir"\nclient_id = "{CLIENT_ID}"\n', "utf-8")
        sock = support.free_socket()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = support.make_app(folder, public_base_url=base, smart_clients_file=clients, **settings_for(ehr))
        prepare(app)
        with support.serve(app, sock):
            yield Live(base, app, ehr)
