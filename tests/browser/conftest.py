"""Browser-test fixtures: the real app and a mock EHR on loopback ports, and Debian's Chromium under Playwright."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import CHROMIUM, CHROMIUM_ARGS, Live, live_app

from spasticity_cds.interfaces.web.pages import demo_dir_default


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_app(tmp_path_factory.mktemp("browser"), prepare=_with_packaged_demos) as live:
        yield live


def _with_packaged_demos(app: Any) -> None:
    """The packaged demos too, next to the test bundles."""
    for shipped in demo_dir_default().glob("*.json"):
        if shipped.name != "index.json":
            shutil.copy(shipped, app.state.demo_data_dir / shipped.name)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context; fails the test if the page logs a console error (a CSP violation, a script error)."""
    yield from _watched(browser.new_context(viewport={"width": 1200, "height": 900}))


@pytest.fixture
def page_without_script(browser: Any) -> Iterator[Any]:
    """As ``page``, in a context with JavaScript turned off (every page must work without the script)."""
    yield from _watched(browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=False))


def _watched(context: Any) -> Iterator[Any]:
    """A tab of ``context`` (closed after the test), failing the test on a console error or a failed sub-resource in
    any of the context's tabs (a form may open one)."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        # A 4xx page we asked for (a form error) logs "Failed to load resource"; sub-resources are checked below.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    def on_response(response: Any) -> None:
        if response.status >= 400 and response.request.resource_type != "document":
            errors.append(f"{response.status} {response.url}")

    context.on("console", on_console)
    context.on("response", on_response)
    context.on("weberror", lambda error: errors.append(str(error.error)))
    tab = context.new_page()
    yield tab
    context.close()
    assert not errors, errors
