"""Helpers shared by the browser tests: the live-app record, Chromium settings and screenshots."""

from __future__ import annotations

import os
import sys
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
