"""The real pages in headless Chromium: feedback, demo plan, why-not, hand entry, broken upload, SMART launch."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import Live, shot, support

pytestmark = pytest.mark.browser


def test_answer_page_feedback_is_stored(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/")
    assert page.locator("h1").count() == 1
    assert page.locator("h1").inner_text() == "How is spasticity treated in ALS?"
    assert page.locator("section.step").count() == len(live.app.state.cds.engine.kb.ladder.steps)
    assert page.locator("#unknowns").is_visible()
    shot(page, "answer-page")
    comment = page.get_by_label("Additional feedback? (Optional)")
    comment.fill("Clear ladder, thank you")
    before = len(live.app.state.cds.store.list_page_feedback(limit=1000))
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.outerHTML")
    assert 'value="yes"' in focused, "Tab from the comment must reach the Yes button"
    page.keyboard.press("Enter")
    page.locator("#feedback .thanks").filter(has_text="Thank you for your feedback!").wait_for()
    stored = live.app.state.cds.store.list_page_feedback(limit=1000)
    assert len(stored) == before + 1
    newest = next(item for item in stored if item.comment == "Clear ladder, thank you")
    assert newest.answered is True and newest.context.value == "answer-page"
    shot(page, "answer-page-feedback", full_page=False)


def test_demo_patient_options_findings_citations_and_why_not(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients")
    page.get_by_role("link", name="Ada Example").click()
    page.wait_for_url(re.compile(r"/patients/demo/ada$"))
    rows = page.locator("table.ladder tbody tr[class^='row-']")  # one per option, beside the groups' headings
    assert rows.count() == len(live.app.state.cds.engine.kb.ladder.steps)
    # What she takes shows as current, or under a safety status with "taking it now" (two sedating antispastics).
    assert page.locator("table.ladder .status-current, table.ladder .taking").count() >= 1
    assert page.locator("article.finding").count() >= 3
    assert page.locator("article.finding .cite a[href^='/kb/citations#']").count() > 3
    assert page.locator("svg[role=img]").count() == 4
    shot(page, "plan-demo")
    why_not = page.locator("#opt-baclofen details.whynot")
    trace = why_not.locator(".trace").first
    assert not trace.is_visible()
    why_not.locator("summary").click()
    trace.wait_for(state="visible")
    assert "outcome" in trace.inner_text()
    why_not.scroll_into_view_if_needed()
    shot(page, "plan-why-not", full_page=False)
    page.locator("#trends").scroll_into_view_if_needed()
    shot(page, "plan-trends", full_page=False)
    page.emulate_media(media="print")
    assert not page.locator("header.site").is_visible()
    shot(page, "plan-print")


def test_finding_feedback_with_override_reason(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients/demo/ada")
    finding = page.locator("article.finding").first
    rule_id = finding.locator("input[name=rule_id]").get_attribute("value")
    finding.locator("details.rate summary").click()
    finding.get_by_label("If you will not follow it, why? (Optional)").select_option("risk-benefit-ratio")
    finding.get_by_role("button", name="Not useful").click()
    finding.locator(".thanks").filter(has_text="Thank you").wait_for()
    stored = [i for i in live.app.state.cds.store.list_page_feedback(limit=1000) if i.rule_id == rule_id]
    assert stored and stored[0].override_reason_code == "risk-benefit-ratio" and stored[0].useful is False


def test_manual_form(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients")
    page.get_by_label("Age (years)").fill("58")
    page.get_by_label("Sex").select_option("female")
    page.get_by_label("Serum creatinine (mg/dL)").fill("0.9")
    page.get_by_label("ALT (U/L)").fill("25")
    page.get_by_label("FVC % predicted (%)").fill("48")
    page.get_by_label("Systolic BP lying (mmHg)").fill("128")
    page.get_by_label("Systolic BP standing (mmHg)").fill("102")
    page.get_by_label("Has dysphagia").check()
    page.get_by_label("Relies on tone (spasticity) to stand or transfer").select_option("no")
    page.get_by_label("Medication 1").select_option("baclofen")
    page.locator("#f-med0_dose").fill("10")
    page.locator("#f-med0_times").fill("3")
    page.get_by_label("Muscle group 1").fill("left hamstrings")
    page.locator("#f-mas0_grade").select_option("2")
    shot(page, "manual-form")
    page.get_by_role("button", name="Make the plan").click()
    page.wait_for_url(re.compile(r"/patients/manual$"))
    assert "58 years" in page.locator(".banner").inner_text()
    assert page.locator("table.ladder .status-current").first.inner_text() == "Current treatment"
    assert page.get_by_text("Forms for swallowing problems or a feeding tube").count() >= 1
    shot(page, "manual-plan")


def test_manual_form_errors(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients")
    page.get_by_label("FVC % predicted (%)").fill("900")
    page.get_by_role("button", name="Make the plan").click()
    alert = page.locator("#form-errors")
    alert.wait_for()
    assert "Enter the age in years." in alert.inner_text()
    assert "FVC % predicted must be a number" in alert.inner_text()
    shot(page, "manual-form-errors")


def test_broken_upload_shows_an_error(live: Live, page: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", "entry": [', "utf-8")
    page.goto(f"{live.base}/patients")
    page.get_by_label(re.compile("FHIR R4 Bundle")).set_input_files(str(broken))
    page.get_by_role("button", name="Evaluate file").click()
    error = page.locator("#upload-error")
    error.wait_for()
    assert "The file could not be used" in error.inner_text()
    assert "Traceback" not in page.content()
    shot(page, "upload-error")


def test_upload_good_file(live: Live, page: Any, tmp_path: Path) -> None:
    good = tmp_path / "patient.json"
    good.write_text(json.dumps(support.script_bundle()), "utf-8")
    page.goto(f"{live.base}/patients")
    page.get_by_label(re.compile("FHIR R4 Bundle")).set_input_files(str(good))
    page.get_by_role("button", name="Evaluate file").click()
    page.locator(".banner").wait_for()
    assert page.locator(".pname").inner_text() == support.SCRIPT_NAME  # shown as text, never run
    shot(page, "upload-script-patient", full_page=False)


def test_smart_ehr_launch(live: Live, page: Any) -> None:
    launch = live.ehr.register_launch(
        {"ruleId": "TIZ-LIVER-3X", "ruleVersion": 1, "cardUuid": "card-browser", "patientId": "smart-1"}
    )
    page.goto(f"{live.base}/smart/launch?iss={live.ehr.base}/fhir&launch={launch}")
    page.wait_for_url(re.compile(r"/smart/plan/[A-Za-z0-9_-]+$"))
    assert page.locator(".pname").inner_text() == "Launch Patient"
    assert page.locator("article.finding.highlight").count() == 1
    request = live.ehr.authorize_requests[-1]
    assert request["code_challenge_method"] == "S256" and request["launch"] == launch
    shot(page, "smart-plan")


def test_smart_standalone_launch(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/smart/launch")
    shot(page, "smart-chooser", full_page=False)
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r"/smart/plan/[A-Za-z0-9_-]+$"))
    assert page.locator(".pname").inner_text() == "Launch Patient"


def test_kb_pages_and_report(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/kb")
    page.get_by_role("link", name="TIZ-LIVER-3X").first.click()
    page.wait_for_url(re.compile(r"/kb/rules/TIZ-LIVER-3X$"))
    assert "Change log" in page.content()
    shot(page, "kb-rule")
    page.goto(f"{live.base}/kb/versions")
    shot(page, "kb-versions", full_page=False)
    credentials = base64.b64encode(f"{support.REPORT_AUTH[0]}:{support.REPORT_TOKEN}".encode()).decode()
    page.set_extra_http_headers({"Authorization": f"Basic {credentials}"})
    page.goto(f"{live.base}/reports/feedback")
    assert page.locator("h1").inner_text() == "Feedback per rule"
    shot(page, "feedback-report")


def test_packaged_demo_patients(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients")
    links = page.locator("ul.demos a")
    names = [href.split("/")[-1] for href in links.evaluate_all("els => els.map(e => e.getAttribute('href'))")]
    shipped = [name for name in names if name not in ("ada", "evil")]
    if not shipped:
        pytest.skip("no demo bundles are packaged yet")
    for name in shipped:
        page.goto(f"{live.base}/patients/demo/{name}")
        assert page.locator("h1").inner_text().startswith("Plan for ")
        assert page.locator("table.ladder tbody tr").count() > 0 or page.get_by_text("outside the scope").count() == 1
    page.goto(f"{live.base}/patients/demo/{shipped[0]}")
    shot(page, f"demo-{shipped[0]}", full_page=False)


def test_upload_too_large_is_stopped_in_the_browser(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients")
    limit = int(page.locator("form.upload").get_attribute("data-max-bytes"))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url) if request.method == "POST" else None)
    big = {"name": "big.json", "mimeType": "application/json", "buffer": b" " * (limit + 1)}
    page.get_by_label(re.compile("FHIR R4 Bundle")).set_input_files(big)
    page.get_by_role("button", name="Evaluate file").click()
    message = page.locator(".js-upload-error")
    message.wait_for(state="visible")
    assert "larger than the limit" in message.inner_text()
    assert requests == []
