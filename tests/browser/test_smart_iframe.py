"""The app inside a cross-site EHR iframe, in headless Chromium: the SMART launch, and an upload's feedback sent
without the script (into a new tab, without the frame's partitioned cookie); cookies must survive the frame."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import HTMLResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import Live, live_app, shot, support

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


def _ehr_route(framed: Live, path: str, body: Any) -> str:
    """Serve ``body()`` at ``path`` on the EHR's server (another site than the app); its URL."""
    framed.ehr.app.add_api_route(path, body)
    return EHR_PAGE.format(port=framed.ehr.base.rsplit(":", 1)[1]).removesuffix("/ehr") + path


def test_without_javascript_an_uploaded_plans_feedback_in_an_ehr_frame_is_stored_from_its_new_tab(
    framed: Live, page_without_script: Any, tmp_path: Path
) -> None:
    """An upload's plan opens its answers in a new tab (it cannot be shown again). In the EHR's frame its CSRF cookie is
    partitioned to the EHR's site, so the new tab, a top-level page of the app's own site, does not send it: the
    answer was refused as "form expired". The browser's Sec-Fetch-Site: same-origin now stands in for it."""
    page = page_without_script
    record = tmp_path / "patient.json"
    record.write_text(json.dumps(support.trend_bundle()), "utf-8")
    top = _ehr_route(framed, "/ehr-upload", lambda: HTMLResponse(_ehr_page(f"{framed.base}/patients")))
    page.goto(top)
    frame = page.frame_locator("#app")
    frame.get_by_label(re.compile("FHIR R4 Bundle")).set_input_files(str(record))
    frame.get_by_role("button", name="Evaluate file").click()
    frame.locator(".pname").wait_for()
    [cookie] = [c for c in page.context.cookies(framed.base) if c["name"] == "cds_csrf"]
    assert cookie["sameSite"] == "None" and cookie["partitionKey"] == top.rsplit(":", 1)[0]  # the EHR's site
    form = frame.locator("#feedback")
    assert form.get_attribute("target") == "_blank"
    form.get_by_label("Additional feedback? (Optional)").fill("Sent from the EHR's frame")
    with page.context.expect_page() as opened:
        form.get_by_role("button", name="Yes").click()
    thanks = opened.value
    thanks.wait_for_load_state()
    assert thanks.url == f"{framed.base}/feedback"
    assert thanks.get_by_role("status").inner_text().startswith("Thank you for your feedback!")
    assert "the plan you sent it from is still open in its own tab" in thanks.locator("main").inner_text()
    shot(thanks, "framed-no-script-feedback-thanks", full_page=False)
    stored = framed.app.state.cds.store.list_page_feedback(limit=1000)
    assert [(i.context.value, i.answered) for i in stored if i.comment == "Sent from the EHR's frame"] == [
        ("patient-plan", True)
    ]
    thanks.close()
    assert frame.locator(".pname").inner_text() == "Ada Example"  # the plan is still open in the frame

    # The token alone opens nothing: the same form, token and all, sent from the EHR's site is still refused.
    token = form.locator("input[name=csrf_token]").get_attribute("value")
    forged = _ehr_route(framed, "/ehr-forged", lambda: HTMLResponse(_forged_form(framed.base, str(token))))
    page.goto(forged)
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(f"{framed.base}/feedback")
    assert "The form has expired" in page.locator("main").inner_text()
    assert not [i for i in framed.app.state.cds.store.list_page_feedback(limit=1000) if i.comment == "forged"]


def _forged_form(app: str, token: str) -> str:
    return (
        '<!doctype html><html lang="en"><title>Another page</title>'
        f'<form method="post" action="{app}/feedback"><input type="hidden" name="csrf_token" value="{token}">'
        f'<input type="hidden" name="feedback_id" value="{uuid.uuid4()}"><input type="hidden" name="context"'
        ' value="patient-plan"><input type="hidden" name="comment" value="forged"><input type="hidden"'
        ' name="return_to" value=""><button name="answered" value="yes">Send</button></form></html>'
    )
