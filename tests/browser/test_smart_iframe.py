"""SMART EHR launch inside a cross-site EHR iframe, in headless Chromium: cookies must survive the frame."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import HTMLResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import Live, live_app, shot

pytestmark = pytest.mark.browser
#: The EHR's page: "localhost" is another site than the app's 127.0.0.1, so the app's frame is cross-site.
EHR_PAGE = "http://localhost:{port}/ehr"


@pytest.fixture(scope="module")
def framed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The app configured to be framed by the EHR's origin, served beside the browser tests' own app."""
    with live_app(tmp_path_factory.mktemp("framed"), _framed_by_the_ehr) as live:
        yield live


def _framed_by_the_ehr(ehr: Any) -> dict[str, Any]:
    return {"frame_ancestors": (EHR_PAGE.format(port=ehr.base.rsplit(":", 1)[1]).removesuffix("/ehr"),)}


def test_ehr_launch_in_a_cross_site_iframe_completes(framed: Live, page: Any) -> None:
    launch = framed.ehr.register_launch({"ruleId": "TIZ-LIVER-3X", "cardUuid": "card-framed", "patientId": "smart-1"})
    src = f"{framed.base}/smart/launch?iss={framed.ehr.base}/fhir&launch={launch}"
    top = EHR_PAGE.format(port=framed.ehr.base.rsplit(":", 1)[1])
    framed.ehr.app.add_api_route("/ehr", lambda: HTMLResponse(_ehr_page(src)))  # a real server: a local page
    page.goto(top)
    frame = page.frame_locator("#app")
    frame.locator(".pname").wait_for()
    assert frame.locator(".pname").inner_text() == "Launch Patient"
    [app_frame] = [f for f in page.frames if f.url.startswith(framed.base)]
    assert re.search(r"/smart/plan/[A-Za-z0-9_-]+$", app_frame.url)
    cookies = {c["name"]: c for c in page.context.cookies(framed.base)}
    assert cookies["cds_session"]["sameSite"] == "None" and cookies["cds_session"]["secure"]
    shot(page, "smart-plan-in-ehr-iframe", full_page=False)
    # Feedback from inside the frame: the CSRF cookie went with the cross-site POST too.
    frame.locator("#feedback button[value='yes']").click()
    frame.locator("#feedback .thanks").filter(has_text="Thank you for your feedback!").wait_for()


def _ehr_page(src: str) -> str:
    return (
        '<!doctype html><html lang="en"><title>EHR</title>'
        f'<iframe id="app" title="CDS" src="{src}" width="1100" height="800"></iframe></html>'
    )
