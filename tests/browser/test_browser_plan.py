"""The plan page in headless Chromium as a clinician meets it: on a phone, with a drug to withdraw, without a script."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import Live, shot, support

from spasticity_cds.interfaces.web.pages import demo_dir_default

pytestmark = pytest.mark.browser

#: A phone held upright (CSS pixels).
PHONE = {"width": 390, "height": 844}
#: Each option's card in the options table: where it lies, and where its name, status and reasons lie in it.
CARDS = """() => [...document.querySelectorAll("table.ladder tbody tr[class^='row-']")].map(row => {
  const box = element => {
    const r = element.getBoundingClientRect();
    return {left: r.left, right: r.right, width: r.width};
  };
  const why = row.querySelector("td.why-cell");
  return {
    card: box(row),
    name: box(row.querySelector("th a")),
    status: box(row.querySelector(".status")),
    why: box(why),
    whyFont: parseFloat(getComputedStyle(why).fontSize),
    whyLabel: getComputedStyle(why, "::before").content,
    text: row.innerText,
  };
})"""


def _demo_names() -> list[str]:
    return ["ada", *sorted(path.stem for path in demo_dir_default().glob("*.json") if path.stem != "index")]


def test_the_plan_fits_a_phone_and_each_option_reads_as_a_card(live: Live, page: Any) -> None:
    page.set_viewport_size(PHONE)
    for name in _demo_names():
        page.goto(f"{live.base}/patients/demo/{name}")
        if page.locator("table.ladder").count() == 0:
            continue  # out of scope: no options
        page.get_by_role("button", name="Expand all explanations").click()  # the widest the page gets
        width = page.evaluate("window.innerWidth")
        assert width == PHONE["width"]
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name}: the page scrolls sideways"
        wrap = page.locator(".ladder-wrap")
        assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), f"{name}: options hidden to the side"
        cards = page.evaluate(CARDS)
        assert len(cards) == page.locator("table.ladder tbody tr[class^='row-']").count() > 0
        for card in cards:
            label = card["text"].splitlines()[0]
            assert card["card"]["left"] >= 0 and card["card"]["right"] <= width, f"{name}: {label} off the screen"
            for part in ("name", "status", "why"):
                assert card[part]["width"] > 0, f"{name}: {label}: {part} not shown"
                assert card["card"]["left"] <= card[part]["left"] and card[part]["right"] <= card["card"]["right"]
            # A card, not a squeezed column: the reasons take the card's whole width, in a readable size.
            assert card["why"]["width"] >= 0.8 * card["card"]["width"], f"{name}: {label}: reasons squeezed"
            assert card["whyFont"] >= 14
            assert "Why this status: " in card["whyLabel"]  # the card says what the column did
    page.goto(f"{live.base}/patients/demo/ada")
    # Laid out as cards, it is still a table to a screen reader: rows, column headings, a heading per row.
    table = page.get_by_role("table", name="Treatment options in order")
    rows = page.locator("table.ladder tbody tr").count()  # the options, and their groups' headings
    assert table.get_by_role("row").count() == rows + 1
    assert table.get_by_role("columnheader", name="Why this status").count() == 1
    assert table.get_by_role("rowheader", name="Baclofen (oral)").count() == 1
    page.locator("#options").scroll_into_view_if_needed()
    shot(page, "plan-phone-options", full_page=False)


def test_on_a_wide_screen_the_options_stay_a_table(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/patients/demo/ada")
    row = page.locator("table.ladder tbody tr[class^='row-']").first
    assert row.evaluate("e => getComputedStyle(e).display") == "table-row"
    assert page.locator("table.ladder thead").is_visible()
    assert page.get_by_role("columnheader", name="Why this status").count() == 1


@pytest.mark.parametrize("viewport", [{"width": 1200, "height": 900}, PHONE], ids=["wide", "phone"])
def test_a_drug_being_withdrawn_heads_the_options_and_leads_to_its_withdrawal(
    live: Live, page: Any, viewport: dict[str, int]
) -> None:
    """Ada takes tizanidine, ruled out (the engine ranks it 8th of 11): it is the first option the page lists,
    under "Taken now: stop or reduce", and its link opens the withdrawal."""
    page.set_viewport_size(viewport)
    page.goto(f"{live.base}/patients/demo/ada")
    table = page.get_by_role("table", name="Treatment options in order")
    first_row = table.locator("tbody tr").first
    assert first_row.inner_text() == "Taken now: stop or reduce"
    first_option = table.locator("tbody tr[class^='row-']").first
    assert first_option.get_by_role("rowheader").get_by_role("link").first.inner_text() == "Tizanidine"
    assert first_option.locator("td.rank").inner_text().startswith("8")  # the engine's rank, kept
    assert "taking it now" in first_option.inner_text()
    page.locator("#options").scroll_into_view_if_needed()
    assert first_option.is_visible()
    first_option.get_by_role("link", name="Withdrawal plan").click()
    page.wait_for_url(re.compile(r"#stop-tizanidine$"))
    withdrawal = page.locator("#stop-tizanidine")
    assert withdrawal.is_visible() and withdrawal.inner_text().startswith("Withdrawal:")
    box = withdrawal.bounding_box()
    assert box is not None and -1 < box["y"] < viewport["height"]  # scrolled to (to the sub-pixel)
    shot(page, f"plan-withdrawal-first-{viewport['width']}", full_page=False)


@pytest.mark.parametrize("viewport", [{"width": 1200, "height": 900}, PHONE], ids=["wide", "phone"])
def test_a_drug_ordered_but_ruled_out_heads_the_options_and_leads_to_why_not_to_start(
    live: Live, page: Any, viewport: dict[str, int]
) -> None:
    """The NIV demo patient's draft diazepam order, ruled out by the respiratory gate (the engine ranks it 10th of
    11): the first option the page lists, under "Ordered or proposed: do not start", in view with the table, and
    its link opens what rules it out."""
    page.set_viewport_size(viewport)
    page.goto(f"{live.base}/patients/demo/niv-diazepam-respiratory-gate")
    table = page.get_by_role("table", name="Treatment options in order")
    heading = table.locator("tbody tr").first
    assert heading.inner_text() == "Ordered or proposed: do not start"
    first_option = table.locator("tbody tr[class^='row-']").first
    assert first_option.get_by_role("rowheader").get_by_role("link").first.inner_text() == "Diazepam"
    assert first_option.locator("td.rank").inner_text().startswith("10")  # the engine's rank, kept
    assert "ordered or proposed" in first_option.inner_text()
    assert "Contraindicated" in first_option.locator("td.status-cell").inner_text()
    page.locator("#options").scroll_into_view_if_needed()
    assert heading.is_visible() and first_option.is_visible()
    # Marked as the withdrawal group is: the alert colours, on the table's heading row (a card's on a phone).
    colours = heading.locator("th").evaluate("e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).color]")
    assert colours == ["rgb(253, 236, 234)", "rgb(139, 26, 26)"]  # --alert-bg, --alert-text
    if viewport is PHONE:
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert first_option.evaluate("e => getComputedStyle(e).display") == "grid"  # a card
    shot(page, f"plan-do-not-start-first-{viewport['width']}", full_page=False)
    first_option.get_by_role("link", name="Why not to start it").click()
    page.wait_for_url(re.compile(r"#nostart-diazepam$"))
    reason = page.locator("#nostart-diazepam")
    assert reason.is_visible() and reason.inner_text().startswith("Do not start:")
    box = reason.bounding_box()
    assert box is not None and -1 < box["y"] < viewport["height"]  # scrolled to (to the sub-pixel)
    section = page.locator("#opt-diazepam")
    assert "Ruled out by BENZO-RESP-GATE" in section.locator("dl.statements").first.inner_text()
    assert page.locator("section.option").first.get_attribute("id") == "opt-diazepam"


def test_a_drug_not_to_start_shows_its_monitoring_and_stopping_only_when_opened(live: Live, page: Any) -> None:
    """The ordered diazepam's monitoring and taper advice, folded under "If Diazepam is started despite this": closed
    at first, opened by its summary (keyboard too), and by "Expand all explanations" as printing does."""
    page.goto(f"{live.base}/patients/demo/niv-diazepam-respiratory-gate")
    folded = page.locator("#ifstarted-diazepam")
    summary = folded.locator("summary")
    assert summary.inner_text() == "If Diazepam is started despite this: monitoring, stopping"
    stopping = folded.get_by_text("Stopping:")
    assert folded.get_attribute("open") is None and not stopping.is_visible()
    summary.focus()
    page.keyboard.press("Enter")
    assert folded.get_attribute("open") is not None and stopping.is_visible()
    assert folded.get_by_text("Breathing and sedation").is_visible()
    shot(page, "plan-do-not-start-if-started", full_page=False)
    page.reload()
    assert folded.get_attribute("open") is None
    page.get_by_role("button", name="Expand all explanations").click()
    assert folded.get_attribute("open") is not None and stopping.is_visible()


NEW_TAB_NOTICE = "without JavaScript your answer opens in a new tab and the plan stays open here"


def test_without_javascript_an_uploaded_plan_takes_feedback_and_stays_open(
    live: Live, page_without_script: Any, tmp_path: Path
) -> None:
    """The app keeps no upload, so its plan cannot be shown again (it is the answer to a POST, never cached): the
    forms open their answer in a new tab, thanked there, and the plan stays where it was."""
    plan = page_without_script
    record = tmp_path / "patient.json"
    record.write_text(json.dumps(support.trend_bundle()), "utf-8")
    plan.goto(f"{live.base}/patients")
    plan.get_by_label(re.compile("FHIR R4 Bundle")).set_input_files(str(record))
    plan.get_by_role("button", name="Evaluate file").click()
    plan.locator(".banner").wait_for()
    assert plan.url == f"{live.base}/patients/upload"
    assert not plan.get_by_role("button", name="Expand all explanations").is_visible()  # no script indeed
    store = live.app.state.cds.store

    form = plan.locator("#feedback")
    assert NEW_TAB_NOTICE in form.inner_text()  # said before the buttons
    form.get_by_label("Additional feedback? (Optional)").fill("Sent without the script")
    with plan.context.expect_page() as opened:
        form.get_by_role("button", name="Yes").click()
    thanks = opened.value
    thanks.wait_for_load_state()
    assert thanks.url == f"{live.base}/feedback"
    said = thanks.get_by_role("status").inner_text()
    assert said.startswith("Thank you for your feedback! It is stored with the page it answers (a patient's plan)")
    assert "rule" not in said  # a page-level answer has none
    assert "the plan you sent it from is still open in its own tab" in thanks.locator("main").inner_text()
    shot(thanks, "no-script-feedback-thanks", full_page=False)
    stored = next(item for item in store.list_page_feedback(limit=1000) if item.comment == "Sent without the script")
    assert stored.context.value == "patient-plan" and stored.answered is True
    thanks.close()

    # The plan is still open, as it was; a finding's rating goes the same way.
    assert plan.url == f"{live.base}/patients/upload" and plan.locator(".pname").inner_text() == "Ada Example"
    finding = plan.locator("article.finding").first
    rule_id = finding.locator("input[name=rule_id]").get_attribute("value")
    finding.locator("details.rate summary").click()  # a native disclosure: no script needed
    assert NEW_TAB_NOTICE in finding.locator("form").inner_text()
    finding.get_by_label("If you will not follow it, why? (Optional)").select_option("need-more-info")
    with plan.context.expect_page() as opened:
        finding.get_by_role("button", name="Not useful").click()
    rated = opened.value
    rated.wait_for_load_state()
    rated_text = rated.get_by_role("status").inner_text()
    assert rated_text.startswith(f"Thank you for your feedback! It is stored with the rule it rates ({rule_id} ")
    rated.close()
    ratings = [item for item in store.list_page_feedback(limit=1000) if item.rule_id == rule_id]
    assert any(item.override_reason_code == "need-more-info" and item.useful is False for item in ratings)
    assert plan.locator(".pname").inner_text() == "Ada Example"


def test_without_javascript_a_plan_that_can_be_reopened_shows_the_thanks_in_its_form(
    live: Live, page_without_script: Any
) -> None:
    """A demo plan (or a SMART one) has an address: the answer comes back to it, thanked in the form, in view."""
    plan = page_without_script
    plan.goto(f"{live.base}/patients/demo/ada")
    form = plan.locator("#feedback")
    assert NEW_TAB_NOTICE not in form.inner_text() and form.get_attribute("target") is None
    form.get_by_label("Additional feedback? (Optional)").fill("Demo without the script")
    form.get_by_role("button", name="No").click()
    plan.wait_for_url(re.compile(r"/patients/demo/ada\?feedback=thanks&at=feedback#feedback$"))
    assert plan.locator("#feedback .thanks").inner_text() == "Thank you for your feedback!"
    assert len(plan.context.pages) == 1
    stored = live.app.state.cds.store.list_page_feedback(limit=1000)
    assert any(item.comment == "Demo without the script" and item.answered is False for item in stored)
