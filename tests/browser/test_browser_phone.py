"""Every page but the plan (tested in test_browser_plan.py) on a phone, in headless Chromium: nothing scrolls sideways.

The knowledge-base pages (the index, every rule, every drug, codes, sources, versions), the feedback report with a
comment typed without spaces, the patient start page with its upload and hand-entry forms (also showing their
errors), the thank-you page and the other small pages. Tables of more than a few columns become one card per row.
"""

from __future__ import annotations

import base64
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import Live, shot, support

from spasticity_cds.store import PageContext, PageFeedback

pytestmark = pytest.mark.browser

#: A phone held upright (CSS pixels).
PHONE = {"width": 390, "height": 844}
#: How wide the page is, and what sticks out to the right of the screen (to say what to fix when it does).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const element of document.querySelectorAll("body *")) {
    const box = element.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 0.5) {
      const text = (element.textContent || "").trim().slice(0, 50);
      out.push(`${element.tagName.toLowerCase()}.${element.className} ${text}`);
    }
  }
  const regions = [...document.querySelectorAll(".scroll-x")].filter(e => e.scrollWidth > e.clientWidth + 0.5);
  return {page: document.documentElement.scrollWidth, width: width, out: out.slice(0, 5),
          regions: regions.map(e => e.getAttribute("aria-label"))};
}"""
#: A comment a clinician typed without a space (or pasted: a long link), in the report.
UNBROKEN_COMMENT = "https://ehr.example.org/" + "x" * 300


def _fits(page: Any, what: str) -> None:
    """The page as shown fits the phone's width: no sideways scroll, and no table scrolling inside its own region."""
    found = page.evaluate(OVERFLOW)
    assert found["width"] == PHONE["width"], what
    assert found["page"] <= found["width"], f"{what} scrolls sideways ({found['page']} px): {found['out']}"
    assert not found["regions"], f"{what}: a table scrolls sideways inside {found['regions']}"


def _report_auth(page: Any) -> None:
    credentials = base64.b64encode(f"{support.REPORT_AUTH[0]}:{support.REPORT_TOKEN}".encode()).decode()
    page.set_extra_http_headers({"Authorization": f"Basic {credentials}"})


def test_the_knowledge_base_pages_fit_a_phone(live: Live, page: Any) -> None:
    kb = live.app.state.cds.engine.kb
    page.set_viewport_size(PHONE)
    paths = ["/kb", "/kb/codes", "/kb/citations", "/kb/versions"]
    paths += [f"/kb/rules/{rule_id}" for rule_id in sorted(kb.rules)]
    paths += [f"/kb/drugs/{drug_id}" for drug_id in sorted(kb.monographs)]
    for path in paths:
        response = page.goto(f"{live.base}{path}")
        assert response is not None and response.status == 200, path
        _fits(page, path)
    page.goto(f"{live.base}/kb/rules/TONE-RELIANCE")  # the longest labels and agent list
    shot(page, "phone-kb-rule", full_page=False)
    # A rule's properties read as label above value, each value the screen's width.
    label, value = page.locator("dl.props dt").first, page.locator("dl.props dd").first
    label_box, value_box = label.bounding_box(), value.bounding_box()
    assert label_box is not None and value_box is not None
    assert value_box["y"] > label_box["y"] and value_box["width"] > 0.8 * PHONE["width"] - 40
    # The rules' table: a card per rule, its cells labelled, still a table to a screen reader.
    page.goto(f"{live.base}/kb")
    table = page.get_by_role("table").first
    row = page.locator("table.rules tbody tr").first
    assert row.evaluate("e => getComputedStyle(e).display") == "block"
    assert "Says: " in row.locator("td[data-label='Says']").evaluate("e => getComputedStyle(e, '::before').content")
    assert table.get_by_role("columnheader", name="Says").count() == 1
    assert table.get_by_role("row").count() == len(kb.rules) + 1
    page.locator("#rules").scroll_into_view_if_needed()
    shot(page, "phone-kb-rules", full_page=False)


def test_the_feedback_report_fits_a_phone(live: Live, page: Any) -> None:
    kb = live.app.state.cds.engine.kb
    rule = kb.rules["TIZ-LIVER-3X"]
    live.app.state.cds.store.record_page_feedback(
        PageFeedback(
            id=uuid.uuid4(),
            context=PageContext.FINDING,
            created_at=support.FROZEN_NOW,
            useful=False,
            rule_id=rule.id,
            rule_version=rule.version,
            kb_version=kb.version,
            override_reason_code="need-more-info",
            comment=UNBROKEN_COMMENT,
        )
    )
    page.set_viewport_size(PHONE)
    _report_auth(page)
    page.goto(f"{live.base}/reports/feedback")
    assert page.locator("h1").inner_text() == "Feedback per rule"
    _fits(page, "/reports/feedback")
    assert page.get_by_text(UNBROKEN_COMMENT[:40]).count() == 1  # the comment is shown, wrapped
    row = page.locator("table.report tbody tr").filter(has_text=rule.id)
    assert row.evaluate("e => getComputedStyle(e).display") == "block"
    assert row.locator("td[data-label='Page: override reasons']").is_visible()
    shot(page, "phone-feedback-report", full_page=False)


def test_the_patient_forms_fit_a_phone_also_with_their_errors(live: Live, page: Any, tmp_path: Path) -> None:
    page.set_viewport_size(PHONE)
    page.goto(f"{live.base}/patients")
    _fits(page, "/patients")
    shot(page, "phone-patients", full_page=False)
    # The hand-entry form, sent with errors: the messages and the marked fields.
    page.get_by_label("FVC % predicted (%)").fill("900")
    page.get_by_role("button", name="Make the plan").click()
    page.locator("#form-errors").wait_for()
    _fits(page, "the hand-entry form with its errors")
    page.locator("#form-errors").scroll_into_view_if_needed()
    shot(page, "phone-manual-errors", full_page=False)
    # The upload form, sent a broken file: its message.
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", "entry": [', "utf-8")
    page.goto(f"{live.base}/patients")
    page.get_by_label(re.compile("FHIR R4 Bundle")).set_input_files(str(broken))
    page.get_by_role("button", name="Evaluate file").click()
    page.locator("#upload-error").wait_for()
    _fits(page, "the upload form with its error")


def test_the_other_small_pages_fit_a_phone(live: Live, page: Any) -> None:
    page.set_viewport_size(PHONE)
    for path in ("/", "/patients/p-17", "/smart/launch", "/no-such-page"):
        page.goto(f"{live.base}{path}")
        _fits(page, path)
    # The thank-you page: the answer page's form sent as a plan's without a page to return to is, without the script.
    page.goto(f"{live.base}/")
    page.locator("#feedback").evaluate(
        """form => {
          form.querySelector("input[name=return_to]").value = "";
          const answer = {type: "hidden", name: "answered", value: "yes"};
          form.append(Object.assign(document.createElement("input"), answer));
          form.submit();  // an ordinary POST, as without the script (submit() skips the script's handler)
        }"""
    )
    page.wait_for_url(f"{live.base}/feedback")
    assert page.get_by_role("status").inner_text().startswith("Thank you for your feedback!")
    _fits(page, "the thank-you page")
