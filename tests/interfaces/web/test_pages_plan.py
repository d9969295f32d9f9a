"""The patient plan: demo, upload and hand entry all run the same evaluator; every record value is escaped."""

from __future__ import annotations

import html
import json
import logging
import re
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds import api
from spasticity_cds.interfaces.web import manual_form, pages
from spasticity_cds.interfaces.web.plan_view import check_text, instant_text, option_groups
from spasticity_cds.store import PageContext


@pytest.fixture
def client(tmp_path: Path) -> support.PageClient:
    return support.PageClient(support.make_app(tmp_path))


def _expected(bundle: object) -> dict[str, object]:
    return api.evaluate(bundle, now=support.FROZEN_NOW)  # type: ignore[arg-type]


def _listed(result: dict[str, object]) -> list[str]:
    """The options' statuses in the order the page lists them: a drug taken that is to be stopped or reduced first."""
    return [o["status"] for group in option_groups(result["options"]) for o in group.options]  # type: ignore[arg-type]


def test_demo_patient_plan_shows_options_findings_citations_and_traces(client: support.PageClient) -> None:
    response = client.get("/patients/demo/ada")
    assert response.status_code == 200
    page = response.text
    result = _expected(support.trend_bundle())
    assert "Ada Example" in page
    for option in result["options"]:  # type: ignore[attr-defined]
        assert f'id="opt-{option["agent"]}"' in page
        assert f'class="status status-{option["status"]}"' in page
    statuses = re.findall(r'<tr class="row-([a-z]+)"', page)
    assert statuses == _listed(result)
    for finding in result["findings"]:  # type: ignore[attr-defined]
        assert f'id="f-{finding["id"]}"' in page
        for citation in finding["citations"]:
            assert f'href="/kb/citations#{citation["id"]}"' in page
    assert 'id="sev-warning"' in page
    assert "Why: the rule and the data it used" in page
    assert "Why not: rules about Tizanidine that did not apply" in page
    # The trees read as sentences; the knowledge base's own wording stays beside them, marked as such.
    assert '<span class="check">All of these</span>' in page
    assert '<code class="rule-source" title="As written in the knowledge base">all</code>' in page
    assert page.count("<h1>") == 1
    assert result["disclaimer"]["text"] in page  # type: ignore[index]


def test_dose_plan_says_where_the_patient_stands_and_monitoring_has_dates(client: support.PageClient) -> None:
    page = client.get("/patients/demo/ada").text
    result = _expected(support.trend_bundle())
    baclofen = next(o for o in result["options"] if o["agent"] == "baclofen")  # type: ignore[attr-defined]
    placement = baclofen["dose_plan"]["placement"]
    assert placement["fit"] == "no-step-remains"  # 30 mg/day; the next step (45) is above the ceiling of 40
    assert f"<strong>Where the patient stands:</strong> {placement['text']}" in page
    assert "Start (a new patient)" in page
    assert "Kidneys (eGFR &lt;= 50: reduce)" in page  # eGFR 44: the baclofen renal band is shown with its source
    assert "The titration steps stop at the kidney-adjusted ceiling." in page
    assert 'id="monitoring"' in page
    assert re.search(r'<time datetime="2026-1[12]-\d\d">', page) or re.search(r'<time datetime="2027-', page)


def _baclofen_at(dose: float, per_day: int) -> bytes:
    bundle = support.trend_bundle()
    order = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "bac")
    order["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = per_day
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = dose
    return json.dumps(bundle).encode()


def test_a_dose_above_the_ceiling_gets_a_dated_reduction_with_its_taper_and_pace(client: support.PageClient) -> None:
    page = _upload(client, _baclofen_at(20, 4)).text  # type: ignore[attr-defined]
    section = page.split('id="opt-baclofen"')[1].split("</section>")[0]
    assert "Titration for" not in section and "Remaining titration" not in section  # no step up from 80 mg/day
    assert '<table class="reduction">' in section
    assert "Reduction of Baclofen (oral) to 30 mg/day, one step every 7 days" in section
    assert "<td>2026-11-24</td><td>20 mg</td><td>3</td>" in section  # 60 mg/day today, then down
    assert "<dt>Pace of the reduction</dt>" in section and 'href="/kb/citations#project-design-proposal"' in section
    assert "<dt>Taper</dt><dd>Never stop abruptly" in section


CRITICAL_WITHDRAWAL = "A critical finding rules Baclofen (oral) out, so the routine pace of a taper"


def test_a_drug_taken_but_ruled_out_critically_gets_an_undated_withdrawal_cited(client: support.PageClient) -> None:
    bundle = json.loads(_baclofen_at(20, 3))
    kidney = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "egfr2")
    kidney["valueQuantity"]["value"] = 20
    page = _upload(client, json.dumps(bundle).encode()).text  # type: ignore[attr-defined]
    section = page.split('id="opt-baclofen"')[1].split("</section>")[0]
    assert "Titration for" not in section and "<dt>Start" not in section  # no advice to start beside avoid
    assert f"<strong>Withdrawal:</strong> {CRITICAL_WITHDRAWAL}" in section
    assert "one step every" not in section and '<tr class="stop">' not in section
    assert "<dt>Pace of the withdrawal</dt>" not in section and "<dt>Taper</dt><dd>Never stop abruptly" in section
    assert "<strong>Stopping:</strong>" not in section  # the taper advice once, in the withdrawal
    assert "<dt>Ruled out by BACLOFEN-KIDNEY-FAILURE-AVOID v3</dt>" in section
    assert 'href="/kb/citations#ajkd-2017-baclofen"' in section


def test_a_drug_taken_that_is_withdrawn_is_listed_first_and_the_json_keeps_the_ranking(
    client: support.PageClient,
) -> None:
    """Ada takes tizanidine, which low blood pressure and liver tests rule out: the engine ranks it 8th of 11, with
    the avoided options; the page lists it first, under its own heading, with its rank and a link to its withdrawal."""
    result = _expected(support.trend_bundle())
    ranked = [o["agent"] for o in result["options"]]  # type: ignore[attr-defined]
    assert ranked.index("tizanidine") == 7
    page = client.get("/patients/demo/ada").text
    table = page.split('<table class="ladder"')[1].split("</table>")[0]
    listed = re.findall(r'<th scope="row" role="rowheader"><a href="#opt-([a-z-]+)">', table)
    assert listed == ["tizanidine", *(agent for agent in ranked if agent != "tizanidine")]
    first, others = table.split("</tbody>")[:2]
    assert 'id="og-stop-or-reduce">Taken now: stop or reduce</th>' in first
    assert 'id="og-ranked">The other options, in ranked order</th>' in others
    assert '<td class="rank" role="cell">8</td>' in first  # the engine's rank, shown as it is
    assert '<a class="to-stop" href="#stop-tizanidine">Withdrawal plan</a>' in first
    withdrawal = page.split('id="opt-tizanidine"')[1].split("</section>")[0]
    assert '<p class="reduction withdrawal" id="stop-tizanidine"><strong>Withdrawal:</strong>' in withdrawal
    # The option details follow the table's order, under the same headings (h3, then an h4 per option).
    details = re.findall(r'<section class="option option-[a-z]+" id="opt-([a-z-]+)"', page)
    assert details == listed
    assert '<h3 class="group-stop-or-reduce" id="dg-stop-or-reduce">' in page
    assert '<h4 id="oh-tizanidine">8. Tizanidine' in page
    # The JSON keeps the engine's ranking.
    answer = client.post(
        "/api/evaluate",
        content=json.dumps(support.trend_bundle()),
        headers={"content-type": "application/fhir+json"},
        params={"now": support.FROZEN_NOW.isoformat()},
    )
    assert [o["agent"] for o in answer.json()["options"]] == ranked
    assert [o["rank"] for o in answer.json()["options"]] == list(range(1, len(ranked) + 1))


def test_a_dose_brought_down_to_the_ceiling_is_listed_first_as_a_reduction(client: support.PageClient) -> None:
    page = _upload(client, _baclofen_at(20, 4)).text  # type: ignore[attr-defined]
    first = page.split('<table class="ladder"')[1].split("</tbody>")[0]
    assert re.findall(r'<a href="#opt-([a-z-]+)">', first) == ["baclofen", "tizanidine"]  # in the engine's order
    assert '<a class="to-stop" href="#stop-baclofen">Reduction plan</a>' in first
    assert '<p class="reduction" id="stop-baclofen"><strong>Reduction:</strong>' in page


def test_without_a_drug_to_stop_or_reduce_the_options_are_one_ranked_list(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "tiz"]  # baclofen alone, within limits
    page = _upload(client, json.dumps(bundle).encode()).text  # type: ignore[attr-defined]
    assert 'class="ladder"' in page and 'class="group"' not in page and "group-stop-or-reduce" not in page
    assert re.search(r'<h3 id="oh-[a-z-]+">1\. ', page)


def _packaged_demo(name: str) -> bytes:
    return (pages.demo_dir_default() / f"{name}.json").read_bytes()


def test_a_drug_ordered_but_ruled_out_is_listed_first_as_not_to_start(client: support.PageClient) -> None:
    """The NIV demo patient has a draft order for diazepam, which the respiratory gate rules out: the engine ranks it
    10th of 11, with the ruled-out options; the page lists it first, under "Ordered or proposed: do not start", with
    its rank, a link to why, and the rules that rule it out, each cited."""
    bundle = _packaged_demo("niv-diazepam-respiratory-gate")
    result = _expected(json.loads(bundle))
    ranked = [o["agent"] for o in result["options"]]  # type: ignore[attr-defined]
    diazepam = next(o for o in result["options"] if o["agent"] == "diazepam")  # type: ignore[attr-defined]
    assert ranked.index("diazepam") == 9 and diazepam["proposed"] and diazepam["status"] == "contraindicated"
    page = _upload(client, bundle).text  # type: ignore[attr-defined]
    table = page.split('<table class="ladder"')[1].split("</table>")[0]
    listed = re.findall(r'<th scope="row" role="rowheader"><a href="#opt-([a-z-]+)">', table)
    assert listed == ["diazepam", *(agent for agent in ranked if agent != "diazepam")]
    first, others = table.split("</tbody>")[:2]
    assert 'id="og-do-not-start">Ordered or proposed: do not start</th>' in first
    assert "og-stop-or-reduce" not in table  # nothing taken is to be stopped or reduced
    assert 'id="og-ranked">The other options, in ranked order</th>' in others
    assert '<td class="rank" role="cell">10</td>' in first  # the engine's rank, shown as it is
    assert '<span class="taking">ordered or proposed</span>' in first
    assert '<a class="to-stop" href="#nostart-diazepam">Why not to start it</a>' in first
    assert 'href="/kb/rules/BENZO-RESP-GATE"' in first  # the reason, with its rule
    # The details: first, under the same heading, what to do and the rules that rule it out, with their sources.
    details = re.findall(r'<section class="option option-[a-z]+" id="opt-([a-z-]+)"', page)
    assert details == listed
    assert '<h3 class="group-do-not-start" id="dg-do-not-start">Ordered or proposed: do not start</h3>' in page
    section = page.split('id="opt-diazepam"')[1].split("</section>")[0]
    assert '<h4 id="oh-diazepam">10. Diazepam' in section
    assert (
        '<p class="reduction do-not-start" id="nostart-diazepam"><strong>Do not start:</strong> ordered or proposed'
        " for this patient, and ruled out. "
        '<span class="evidence">From the record: MedicationRequest/med-6</span></p>'
    ) in section
    reason = diazepam["reasons"][0]
    ruled_out = f"<dt>Ruled out by BENZO-RESP-GATE v{reason['rule_version']}</dt><dd>{html.escape(reason['summary'])}"
    assert ruled_out in section
    for citation in reason["citations"]:
        assert f'href="/kb/citations#{citation["id"]}"' in section
    # The dose read from the order is the order's, not one taken now.
    assert "<p>Daily dose ordered or proposed: 2 mg/day</p>" in section and "Current daily dose" not in section
    # The JSON keeps the engine's ranking.
    answer = client.post(
        "/api/evaluate",
        content=bundle,
        headers={"content-type": "application/fhir+json"},
        params={"now": support.FROZEN_NOW.isoformat()},
    )
    assert [o["agent"] for o in answer.json()["options"]] == ranked


def test_a_drug_not_to_start_folds_its_monitoring_and_stopping_under_if_started(client: support.PageClient) -> None:
    """The NIV patient's diazepam is ordered and ruled out, never taken: its monitoring and the monograph's taper
    advice matter only if it is started despite this, so they follow the reasons not to, in a closed ``details``
    that says so; the JSON result keeps them as they were. A drug the patient takes keeps them in the open."""
    bundle = _packaged_demo("niv-diazepam-respiratory-gate")
    result = _expected(json.loads(bundle))
    diazepam = next(o for o in result["options"] if o["agent"] == "diazepam")  # type: ignore[attr-defined]
    assert diazepam["taper"] and diazepam["monitoring"]  # the engine's result is unchanged
    page = _upload(client, bundle).text  # type: ignore[attr-defined]
    section = page.split('id="opt-diazepam"')[1].split("</section>")[0]
    opened = (
        '<details class="if-started" id="ifstarted-diazepam">'
        "<summary>If Diazepam is started despite this: monitoring, stopping</summary>"
    )
    assert section.count('<details class="if-started"') == 1 and opened in section
    folded = section.split(opened)[1].split("</details>")[0]
    outside = section.replace(folded, "")
    assert section.index('id="nostart-diazepam"') < section.index(opened)  # after "Do not start" and its reasons
    assert '<p class="sub">Monitoring</p>' in folded and '<p class="sub">Monitoring</p>' not in outside
    assert html.escape(diazepam["monitoring"][0]["what"]) in folded
    assert f"<strong>Stopping:</strong> {html.escape(diazepam['taper']['text'])}" in folded
    assert "<strong>Stopping:</strong>" not in outside
    for citation in diazepam["taper"]["citations"]:
        assert f'href="/kb/citations#{citation["id"]}"' in folded
    # Baclofen, taken, and clonazepam, ruled out but not ordered, show theirs as before.
    for agent in ("baclofen", "clonazepam"):
        other = page.split(f'id="opt-{agent}"')[1].split("</section>")[0]
        assert "if-started" not in other
        assert '<p class="sub">Monitoring</p>' in other and "<strong>Stopping:</strong>" in other


def test_a_drug_taken_to_withdraw_comes_before_one_ordered_not_to_start(client: support.PageClient) -> None:
    """Ada's tizanidine (taken, ruled out) and a draft order for diazepam with her FVC down to 45 %: two groups, in
    that order, then the ranking."""
    bundle = support.trend_bundle()
    next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "fvc2")["valueQuantity"]["value"] = 45
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "dzp",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": "Patient/demo-trend"},
                "medicationCodeableConcept": {"text": "Diazepam 2 mg tablet"},
            }
        }
    )
    result = _expected(bundle)
    statuses = {o["agent"]: (o["status"], o["proposed"]) for o in result["options"]}  # type: ignore[attr-defined]
    assert statuses["diazepam"][0] in ("avoid", "contraindicated") and statuses["diazepam"][1]
    page = _upload(client, json.dumps(bundle).encode()).text  # type: ignore[attr-defined]
    table = page.split('<table class="ladder"')[1].split("</table>")[0]
    assert re.findall(r'id="og-([a-z-]+)"', table) == ["stop-or-reduce", "do-not-start", "ranked"]
    taken, ordered = table.split("</tbody>")[:2]
    assert re.findall(r'<a href="#opt-([a-z-]+)">', taken) == ["tizanidine"]
    assert re.findall(r'<a href="#opt-([a-z-]+)">', ordered) == ["diazepam"]
    assert re.findall(r'<h3 class="group-([a-z-]+)"', page) == ["stop-or-reduce", "do-not-start", "ranked"]
    assert _listed(result)[:2] == [statuses["tizanidine"][0], statuses["diazepam"][0]]


def _option(agent: str, status: str, *, current: bool = False, reduction: bool = False) -> dict[str, object]:
    plan = {"dose_plan": {"reduction": {"target_daily": 0}}} if reduction else {}
    return {"agent": agent, "status": status, "current": current, "proposed": False, **plan}


def test_option_groups_put_drugs_taken_to_stop_or_reduce_first_in_ranked_order() -> None:
    options = [
        _option("baclofen", "current", current=True),
        _option("non-drug", "recommended"),
        _option("dantrolene", "caution", current=True, reduction=True),  # above its ceiling: brought down
        _option("diazepam", "contraindicated"),  # ordered or not taken: nothing to withdraw
        _option("tizanidine", "avoid", current=True, reduction=True),
        _option("intrathecal-baclofen", "contraindicated", current=True),  # ruled out while taken, no dose plan
    ]
    groups = option_groups(options)  # type: ignore[arg-type]
    assert [(g.key, [o["agent"] for o in g.options]) for g in groups] == [
        ("stop-or-reduce", ["dantrolene", "tizanidine", "intrathecal-baclofen"]),
        ("ranked", ["baclofen", "non-drug", "diazepam"]),
    ]
    assert all(group.heading for group in groups)
    plain = option_groups(options[:2])  # type: ignore[arg-type]
    assert [(g.key, g.heading, len(g.options)) for g in plain] == [("ranked", "", 2)]
    assert [g.key for g in option_groups(options[2:3])] == ["stop-or-reduce"]  # type: ignore[arg-type]


def test_option_groups_put_drugs_ordered_but_ruled_out_after_those_to_stop_and_before_the_ranking() -> None:
    proposed = [
        {**_option("baclofen", "current", current=True)},
        {**_option("diazepam", "contraindicated"), "proposed": True},  # a draft order the gate rules out
        {**_option("tizanidine", "caution"), "proposed": True},  # ordered, a caution: not ruled out
        {**_option("clonazepam", "avoid"), "proposed": True},
        _option("dantrolene", "avoid", current=True),  # taken and ruled out: withdrawn
        _option("nabiximols", "avoid"),  # neither taken nor ordered
    ]
    groups = option_groups(proposed)  # type: ignore[arg-type]
    assert [(g.key, g.heading, [o["agent"] for o in g.options]) for g in groups] == [
        ("stop-or-reduce", "Taken now: stop or reduce", ["dantrolene"]),
        ("do-not-start", "Ordered or proposed: do not start", ["diazepam", "clonazepam"]),
        ("ranked", "The other options, in ranked order", ["baclofen", "tizanidine", "nabiximols"]),
    ]
    only = option_groups(proposed[1:2])  # type: ignore[arg-type]
    assert [(g.key, len(g.options)) for g in only] == [("do-not-start", 1)]


def test_a_drug_the_sources_say_to_stop_shows_the_stop_today_and_no_taper(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    order = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "bac")
    order["medicationCodeableConcept"] = {"coding": [{"system": support.RXNORM, "code": "3105"}], "text": "dantrolene"}
    page = _upload(client, json.dumps(bundle).encode()).text  # type: ignore[attr-defined]
    section = page.split('id="opt-dantrolene"')[1].split("</section>")[0]
    assert "<strong>Withdrawal:</strong> Stop Dantrolene today rather than taper it" in section
    assert "Withdrawal of Dantrolene, stopping on 2026-11-24" in section and "one step every" not in section
    assert "<dt>Stop at once</dt><dd>The label advises discontinuing dantrolene" in section
    assert "<dt>Pace of" not in section and 'href="/kb/citations#dantrium-label"' in section


def test_a_patient_mid_titration_gets_the_remaining_steps(client: support.PageClient) -> None:
    page = _upload(client, _baclofen_at(5, 3)).text  # type: ignore[attr-defined]
    section = page.split('id="opt-baclofen"')[1].split("</section>")[0]
    assert "Remaining titration for Baclofen (oral), from the current dose" in section
    assert "<td>10 mg</td><td>3</td><td>30 mg</td>" in section and "<td>5 mg</td>" not in section


def test_trend_charts_are_inline_svg_with_rule_thresholds(client: support.PageClient) -> None:
    page = client.get("/patients/demo/ada").text
    for key in ("fvc", "egfr", "alt", "bp"):
        assert f'id="chart-{key}"' in page
    fvc = page.split('id="chart-fvc"')[1].split("</figure>")[0]
    assert "<svg" in fvc and 'class="threshold"' in fvc
    assert "50 %" in fvc and "80 %" in fvc
    alt = page.split('id="chart-alt"')[1].split("</figure>")[0]
    assert "120 (3x ULN)" in alt
    description = fvc.split("<desc")[1].split("</desc>")[0]
    assert "def " not in description and "respiratory compromise" in description  # definitions by name
    assert "<script" not in fvc


def test_every_record_value_is_escaped(client: support.PageClient) -> None:
    page = client.get("/patients/demo/evil").text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # the hostile resource id, shown as text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    listing = client.get("/patients").text
    assert "<script>alert" not in listing


@pytest.mark.parametrize("demo", ["nobody", "..%2Fada", ".hidden", "a" * 120])
def test_unknown_demo_patient_is_a_clear_404(client: support.PageClient, demo: str) -> None:
    response = client.get(f"/patients/demo/{demo}")
    assert response.status_code == 404
    assert "Ada Example" not in response.text
    if "/" not in demo and "%2F" not in demo:
        assert "There is no demo patient with that name." in response.text


def test_finding_feedback_is_stored_with_rule_id_version_and_override_reason(client: support.PageClient) -> None:
    page = client.get("/patients/demo/ada").text
    token = support.CSRF_INPUT.search(page).group(1)  # type: ignore[union-attr]
    result = _expected(support.trend_bundle())
    finding = next(f for f in result["findings"] if f["kind"] != "data-gap")  # type: ignore[attr-defined]
    assert f'name="rule_id" value="{finding["rule_id"]}"' in page
    key = str(uuid.uuid4())
    data = {
        "csrf_token": token,
        "feedback_id": key,
        "context": "finding",
        "rule_id": finding["rule_id"],
        "rule_version": str(finding["rule_version"]),
        "useful": "no",
        "override_reason": "risk-benefit-ratio",
        "comment": "tolerated for years",
        "return_to": "/patients/demo/ada",
        "anchor": f"rate-{finding['id']}",
    }
    response = client.post("/feedback", data=data)
    assert response.status_code == 303
    anchor = quote(f"rate-{finding['id']}")
    assert response.headers["location"] == f"/patients/demo/ada?feedback=thanks&at={anchor}#{anchor}"
    # Without JavaScript the browser follows the redirect: the rated finding's form is open, its thanks in it.
    back = client.get(response.headers["location"].split("#")[0]).text
    rated = back.split(f'id="rate-{finding["id"]}" open>')[1].split("</details>")[0]
    assert "Thank you for your feedback!" in rated and back.count("Thank you for your feedback!") == 1
    item = client.app.state.cds.store.list_page_feedback()[0]
    assert item.context is PageContext.FINDING
    assert (item.rule_id, item.rule_version, item.useful) == (finding["rule_id"], finding["rule_version"], False)
    assert item.override_reason_code == "risk-benefit-ratio"
    report = {(s.rule_id, s.rule_version): s for s in client.app.state.cds.store.feedback_report()}
    assert report[(finding["rule_id"], finding["rule_version"])].page_useful_no == 1


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"rule_version": "1" * 20}, 303),  # not a version: the rule's own is kept
        ({"rule_version": "\u00b2"}, 303),
        ({"card_uuid": "c" * 129}, 400),
        ({"comment": "a\x00b"}, 400),
    ],
)
def test_odd_feedback_fields_never_fail_the_store(
    client: support.PageClient, change: dict[str, str], status: int
) -> None:
    page = client.get("/patients/demo/ada").text
    token = support.CSRF_INPUT.search(page).group(1)  # type: ignore[union-attr]
    rule = next(iter(client.app.state.cds.engine.kb.rules.values()))
    data = {"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "finding", "rule_id": rule.id}
    response = client.post("/feedback", data=data | {"useful": "no", "return_to": "/patients/demo/ada"} | change)
    assert response.status_code == status
    stored = client.app.state.cds.store.list_page_feedback()
    assert [item.rule_version for item in stored] == ([rule.version] if status == 303 else [])


def test_feedback_return_to_only_accepts_our_own_paths(client: support.PageClient) -> None:
    token = client.csrf("/")
    data = {
        "csrf_token": token,
        "feedback_id": str(uuid.uuid4()),
        "context": "patient-plan",
        "answered": "yes",
        "return_to": "https://evil.example/",
    }
    response = client.post("/feedback", data=data)
    assert response.status_code == 200
    assert "Thank you for your feedback!" in response.text
    assert "back button" in response.text and "new tab" not in response.text


def test_a_plan_that_cannot_be_shown_again_sends_its_feedback_into_a_new_tab(client: support.PageClient) -> None:
    """An upload or a hand entry is not kept, and the plan answers a POST: without the script, a form sent from it
    would replace it for good. Its forms carry no return_to and open their answer in a new tab, which says so."""
    uploaded = _upload(client, json.dumps(support.trend_bundle()).encode()).text  # type: ignore[attr-defined]
    typed = client.post("/patients/manual", data={**FORM, "csrf_token": client.csrf("/patients")}).text
    for page in (uploaded, typed):
        forms = re.findall(r'<form class="feedback js-feedback"[^>]*>', page)
        assert len(forms) > 1 and all(form.endswith(' target="_blank">') for form in forms)
        assert page.count('<noscript><p class="new-tab">') == len(forms)  # said only to those without the script
        assert page.count('<input type="hidden" name="return_to" value="">') == len(forms)
    for path in ("/patients/demo/ada", "/"):
        page = client.get(path).text
        assert 'target="_blank"' not in page and "new-tab" not in page
    token = support.CSRF_INPUT.search(uploaded).group(1)  # type: ignore[union-attr]
    data = {"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "patient-plan", "return_to": ""}
    response = client.post("/feedback", data=data | {"answered": "yes"})
    assert response.status_code == 200
    assert '<p role="status">Thank you for your feedback!' in response.text
    assert "the plan you sent it from is still open in its own tab" in response.text
    assert "back button" not in response.text
    assert [item.answered for item in client.app.state.cds.store.list_page_feedback()] == [True]


# -- upload ----------------------------------------------------------------------------------------------


VIGNETTES = Path(__file__).resolve().parents[2] / "vignettes"


def test_a_drug_taken_outside_the_spasticity_ladder_is_marked_as_taken(client: support.PageClient) -> None:
    """Diazepam for end-of-life breathlessness: not the option's spasticity use, but taken, and said so."""
    content = (VIGNETTES / "63-palliative-diazepam-niv" / "bundle.json").read_bytes()
    page = _upload(client, content).text  # type: ignore[attr-defined]
    row = page.split('<a href="#opt-diazepam">')[1].split("</th>")[0]
    assert '<span class="taking">taking it now, outside the spasticity ladder</span>' in row
    section = page.split('id="opt-diazepam"')[1].split("</section>")[0]
    assert "<strong>Outside the spasticity ladder:</strong> Taken now for palliative breathlessness" in section
    assert "MedicationRequest/med-dzp" in section


def test_two_withdrawals_that_are_alternatives_say_so(client: support.PageClient) -> None:
    content = (VIGNETTES / "15-tizanidine-plus-clonidine" / "bundle.json").read_bytes()
    page = _upload(client, content).text  # type: ignore[attr-defined]
    section = page.split('id="opt-tizanidine"')[1].split("</section>")[0]
    assert "<strong>Alternative:</strong> Tizanidine is ruled out only because Clonidine is taken too" in section
    assert 'withdraw Tizanidine or Clonidine, not both. <a href="/kb/rules/ALPHA2-DUPLICATE-TIZANIDINE"' in section
    assert '(see <a href="#opt-clonidine">Clonidine</a>)' in section


def test_a_converted_value_is_shown_to_sensible_figures(client: support.PageClient) -> None:
    """A PaCO2 of 5.3 kPa is 39.753286 mmHg in the result; the page shows 39.8 mmHg (its threshold is 45)."""
    content = (VIGNETTES / "19-reduced-reserve-diazepam" / "bundle.json").read_bytes()
    page = _upload(client, content).text  # type: ignore[attr-defined]
    assert "39.8 mmHg" in page and "39.7533" not in page and "39.75 mmHg" not in page


def _upload(client: support.PageClient, content: bytes, name: str = "bundle.json", token: str | None = None) -> object:
    token = client.csrf("/patients") if token is None else token
    return client.post(
        "/patients/upload", data={"csrf_token": token}, files={"bundle": (name, content, "application/json")}
    )


def test_a_name_with_bidirectional_controls_is_isolated_on_the_page(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"] = [{"text": "Ann \u202eeeL"}]  # a right-to-left override inside the name
    page = _upload(client, json.dumps(bundle).encode()).text  # type: ignore[attr-defined]
    assert '<strong class="pname"><bdi>Ann \u202eeeL</bdi></strong>' in page


def test_upload_json_bundle_and_ndjson_give_the_same_plan(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    as_json = _upload(client, json.dumps(bundle).encode())
    assert as_json.status_code == 200  # type: ignore[attr-defined]
    ndjson = "\n".join(json.dumps(entry["resource"]) for entry in bundle["entry"]).encode()
    as_ndjson = _upload(client, ndjson, "patient.ndjson")
    assert as_ndjson.status_code == 200  # type: ignore[attr-defined]
    rows = [re.findall(r'<tr class="row-([a-z]+)"', r.text) for r in (as_json, as_ndjson)]  # type: ignore[attr-defined]
    assert rows[0] == rows[1] == _listed(_expected(bundle))
    assert "Uploaded file" in as_json.text  # type: ignore[attr-defined]


def test_an_upload_saved_with_a_byte_order_mark_is_read(client: support.PageClient) -> None:
    page = _upload(client, b"\xef\xbb\xbf" + json.dumps(support.trend_bundle()).encode())
    assert page.status_code == 200  # type: ignore[attr-defined]
    assert "Options at a glance" in page.text  # type: ignore[attr-defined]


def test_the_monitoring_calendar_lists_only_agents_the_patient_takes_or_starts() -> None:
    from datetime import UTC, datetime

    from spasticity_cds.interfaces.web.plan_view import monitoring_calendar

    options = [
        {"agent": "tizanidine", "name": "Tizanidine", "current": True},
        {"agent": "dantrolene", "name": "Dantrolene", "current": False, "proposed": False},
    ]
    findings = [
        {
            "kind": "warning",
            "action": "liver-test",
            "agents": ["dantrolene"],
            "summary": "about dantrolene",
            "citations": [],
        },
        {
            "kind": "warning",
            "action": "liver-test",
            "agents": ["dantrolene", "tizanidine"],
            "summary": "both",
            "citations": [],
        },
    ]
    due = [
        item
        for _, items in monitoring_calendar({"findings": findings, "options": options}, datetime.now(UTC))
        for item in items
    ]
    assert [(item.agent, item.what) for item in due if item.what in ("about dantrolene", "both")] == [
        ("Tizanidine", "both")
    ]


def test_the_monitoring_calendar_gives_nothing_due_for_a_drug_ordered_but_ruled_out() -> None:
    """Diazepam ordered, ruled out, never taken: neither a finding naming it nor a date of its own puts it on the
    calendar; a finding naming it and a drug taken is listed for that drug alone; one naming no agent stays."""
    from datetime import UTC, datetime

    from spasticity_cds.interfaces.web.plan_view import monitoring_calendar

    breathing = {"test": "respiratory", "what": "breathing", "citations": [], "schedule": {"next_due": "2026-12-01"}}
    options = [
        {"agent": "baclofen", "name": "Baclofen", "status": "current", "current": True, "proposed": False},
        {
            "agent": "diazepam",
            "name": "Diazepam",
            "status": "contraindicated",
            "current": False,
            "proposed": True,
            "monitoring": [breathing],
        },
        {"agent": "tizanidine", "name": "Tizanidine", "status": "avoid", "current": False, "proposed": True},
    ]
    findings = [
        {"kind": "monitoring", "agents": ["diazepam"], "summary": "diazepam alone", "citations": []},
        {"kind": "warning", "action": "liver-test", "agents": ["tizanidine"], "summary": "tizanidine", "citations": []},
        {"kind": "monitoring", "agents": ["diazepam", "baclofen"], "summary": "both", "citations": []},
        {"kind": "monitoring", "agents": [], "summary": "every agent", "citations": []},
    ]
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    due = [item for _, items in monitoring_calendar({"findings": findings, "options": options}, now) for item in items]
    assert [(item.agent, item.what) for item in due] == [("Baclofen", "both"), ("all agents", "every agent")]


def _tizanidine_ordered(*others: dict[str, object]) -> bytes:
    """An ALS patient with a draft tizanidine order (no liver tests on record) and ``others``."""
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1958-03-02", "gender": "female"}
    als = {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]}
    tizanidine = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "57258"}]}
    resources = [
        patient,
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "code": als},
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": tizanidine,
        },
        *others,
    ]
    return json.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    ).encode()


def test_a_drug_ordered_but_ruled_out_gets_no_monitoring_dates_on_the_page(client: support.PageClient) -> None:
    """Tizanidine ordered with no liver tests on record: its baseline liver test and blood-pressure check are due
    today. With ciprofloxacin prescribed it is contraindicated, not to be started: the engine drops those monitoring
    findings (the option keeps its monitoring list), and the page's calendar gives no date for tizanidine."""
    cipro = {
        "resourceType": "MedicationRequest",
        "id": "m2",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "Ciprofloxacin 500 mg tablets"},
    }

    def calendar(bundle: bytes) -> str:
        page = _upload(client, bundle).text  # type: ignore[attr-defined]
        return str(page.split('<h2 id="monitoring">')[1].split('<h2 id="')[0])

    alone = calendar(_tizanidine_ordered())
    assert '<span class="test">liver</span> Tizanidine: ' in alone  # the monograph's item, due today
    assert '<span class="test">review</span> Tizanidine: During tizanidine titration, check blood pressure' in alone
    result = _expected(json.loads(_tizanidine_ordered(cipro)))
    tizanidine = next(o for o in result["options"] if o["agent"] == "tizanidine")  # type: ignore[attr-defined]
    assert tizanidine["status"] == "contraindicated" and tizanidine["proposed"] and not tizanidine["current"]
    fired = {f["rule_id"] for f in result["findings"]}  # type: ignore[attr-defined]
    assert not {"TIZ-LFT-BASELINE", "TIZ-BP-MONITOR"} & fired
    assert tizanidine["monitoring"]
    ruled_out = calendar(_tizanidine_ordered(cipro))
    assert "Tizanidine" not in ruled_out
    assert "all agents: Watch every antispastic" in ruled_out  # what concerns every agent stays
    # The NIV demo patient's diazepam, ordered and ruled out, is not on its calendar either.
    niv = calendar(_packaged_demo("niv-diazepam-respiratory-gate"))
    assert "Diazepam" not in niv and "all agents" in niv


def test_the_monitoring_calendar_shows_the_dates_the_engine_set_an_overdue_one_today() -> None:
    from datetime import UTC, date, datetime

    from spasticity_cds.interfaces.web.plan_view import monitoring_calendar

    liver = {"test": "liver", "what": "liver tests", "citations": []}
    options = [
        {
            "agent": "dantrolene",
            "name": "Dantrolene",
            "current": True,
            "monitoring": [
                {**liver, "schedule": {"next_due": "2026-11-20", "overdue": True, "then": ["2026-12-08"]}},
                {"test": "benefit", "what": "review", "citations": [], "schedule": {"note": "no start date"}},
            ],
        },
        {"agent": "tizanidine", "name": "Tizanidine", "current": False, "monitoring": [{**liver, "schedule": {}}]},
    ]
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    finding = {"kind": "monitoring", "action": "liver-test", "agents": ["dantrolene"], "summary": "due"}
    finding["citations"] = []
    calendar = monitoring_calendar({"findings": [finding], "options": options}, now)
    shown = [(m.when.isoformat(), m.agent, m.test, m.overdue_since) for _, items in calendar for m in items]
    assert [month for month, _ in calendar] == ["November 2026", "December 2026"]
    assert shown == [  # the finding's liver test and the schedule's, on one day, listed once and said overdue
        ("2026-11-24", "Dantrolene", "liver", date(2026, 11, 20)),
        ("2026-12-08", "Dantrolene", "liver", None),
    ]


def test_a_recorded_death_is_said_on_the_page_and_among_the_input_notes(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    patient = next(entry["resource"] for entry in bundle["entry"] if entry["resource"]["resourceType"] == "Patient")
    patient["deceasedDateTime"] = "2026-10-30"
    page = _upload(client, json.dumps(bundle).encode())
    assert page.status_code == 200  # type: ignore[attr-defined]
    assert "The record says this patient has died (deceasedDateTime 2026-10-30)." in page.text  # type: ignore[attr-defined]
    assert "the Patient resource records a death (deceasedDateTime 2026-10-30)" in page.text  # type: ignore[attr-defined]
    patient["deceasedDateTime"] = "2099-01-01"  # after the evaluation day: not a recorded death yet
    later = _upload(client, json.dumps(bundle).encode())
    assert "has died" not in later.text  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "The file could not be used"),
        (b'{"resourceType": "Observation", "id": "x"}', "The file could not be used"),
        (b"   ", "The file is empty."),
        (b"\xff\xfe\x00garbage", "The file could not be used"),
    ],
)
def test_broken_upload_shows_a_clear_message_not_a_traceback(
    client: support.PageClient, content: bytes, message: str
) -> None:
    response = _upload(client, content)
    assert response.status_code == 400  # type: ignore[attr-defined]
    text = response.text  # type: ignore[attr-defined]
    assert 'id="upload-error"' in text and message in text
    assert "Traceback" not in text and 'File "' not in text


def test_upload_over_the_limit_is_refused_on_the_page(tmp_path: Path) -> None:
    client = support.PageClient(support.make_app(tmp_path, max_body_bytes=200_000))
    response = _upload(client, b" " * 150_000 + json.dumps(support.trend_bundle()).encode())
    assert response.status_code == 413  # type: ignore[attr-defined]
    assert "larger than the limit" in response.text  # type: ignore[attr-defined]


def test_upload_over_the_whole_request_limit_still_gets_the_page_not_json(tmp_path: Path) -> None:
    client = support.PageClient(support.make_app(tmp_path, max_body_bytes=200_000))
    response = _upload(client, b" " * 400_000 + json.dumps(support.trend_bundle()).encode())
    assert response.status_code == 413  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("text/html")  # type: ignore[attr-defined]
    assert "larger than the limit" in response.text  # type: ignore[attr-defined]


def test_upload_without_csrf_is_refused(client: support.PageClient) -> None:
    client.csrf("/patients")
    response = _upload(client, json.dumps(support.trend_bundle()).encode(), token="bad")
    assert response.status_code == 403  # type: ignore[attr-defined]
    assert "The form has expired" in response.text  # type: ignore[attr-defined]


def test_upload_without_a_file(client: support.PageClient) -> None:
    token = client.csrf("/patients")
    response = client.post("/patients/upload", data={"csrf_token": token}, files={"other": ("x", b"1", "text/plain")})
    assert response.status_code == 400
    assert "Choose a FHIR JSON or NDJSON file" in response.text


def test_no_patient_data_in_logs(client: support.PageClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/patients/demo/evil")
    _upload(client, json.dumps(support.script_bundle()).encode())
    _upload(client, b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "name": "Zed"}}')
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "<script>" not in logged and "Zed" not in logged and "1960-05-01" not in logged


# -- hand entry ----------------------------------------------------------------------------------------------


FORM = {
    "age": "61",
    "sex": "male",
    "als": "yes",
    "measured_on": "2026-11-20",
    "weight": "70",
    "creatinine": "1.4",
    "creatinine_unit": "mg/dL",
    "alt": "35",
    "ast": "30",
    "bilirubin": "0.8",
    "fvc": "45",
    "niv": "yes",
    "sbp_lying": "130",
    "dbp_lying": "80",
    "sbp_standing": "105",
    "dbp_standing": "70",
    "dysphagia": "yes",
    "gastrostomy": "yes",
    "relies_on_tone": "yes",
    "med0_drug": "baclofen",
    "med0_dose": "20",
    "med0_times": "3",
    "med1_drug": "diazepam",
    "mas0_muscle": "left elbow flexors",
    "mas0_grade": "3",
    "mas1_muscle": "right knee extensors",
    "mas1_grade": "1+",
}


def test_manual_form_builds_a_coded_bundle_and_runs_the_same_evaluator(client: support.PageClient) -> None:
    token = client.csrf("/patients")
    response = client.post("/patients/manual", data={**FORM, "csrf_token": token})
    assert response.status_code == 200
    kb = client.app.state.cds.engine.kb
    entry = manual_form.read_form(FORM, kb, support.FROZEN_NOW.date())
    assert entry.ok, entry.errors
    bundle = manual_form.build_bundle(entry, kb, support.FROZEN_NOW.date())
    result = _expected(bundle)
    statuses = re.findall(r'<tr class="row-([a-z]+)"', response.text)
    assert statuses == _listed(result)
    assert result["standing"]["current_agents"] == ["baclofen", "diazepam"]  # type: ignore[index]
    facts = {f["name"]: f for finding in result["findings"] for f in finding["facts"]}  # type: ignore[attr-defined]
    assert facts["obs.fvc-percent"]["value"] == 45
    assert facts["obs.orthostatic_sbp_drop"]["value"] == 25
    assert "61 years" in response.text
    gaps = [f for f in result["findings"] if f["kind"] == "data-gap"]  # type: ignore[attr-defined]
    assert not any("relies-on-tone" in m for g in gaps for m in g["missing"])
    assert "Values entered by hand" in response.text


def test_manual_form_creatinine_in_umol_per_litre_gives_the_same_egfr(client: support.PageClient) -> None:
    kb = client.app.state.cds.engine.kb
    today = support.FROZEN_NOW.date()
    mg = manual_form.build_bundle(manual_form.read_form(FORM, kb, today), kb, today)
    umol = manual_form.build_bundle(
        manual_form.read_form({**FORM, "creatinine": "123.76", "creatinine_unit": "umol/L"}, kb, today), kb, today
    )

    def egfr(bundle: object) -> float:
        result = _expected(bundle)
        facts = {f["name"]: f for finding in result["findings"] for f in finding["facts"]}  # type: ignore[attr-defined]
        return float(facts["obs.egfr"]["value"])

    assert egfr(mg) == pytest.approx(egfr(umol), abs=0.2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("age", "", "Enter the age in years."),
        ("age", "two", "Age must be a whole number"),
        ("sex", "robot", "Choose a sex."),
        ("fvc", "400", "FVC % predicted must be a number from 5 to 200"),
        ("alt", "abc", "ALT must be a number"),
        ("alt", "1_0", "ALT must be a number"),  # float() would read it as 10
        ("measured_on", "2027-01-01", "cannot be in the future"),
        ("measured_on", "yesterday", "YYYY-MM-DD"),
        ("med0_drug", "aspirin-ish", "Choose a medication from the list."),
        ("med0_dose", "-5", "The dose must be a number"),
        ("med0_times", "30", "Times per day must be a whole number"),
        ("mas0_grade", "5", "Choose a Modified Ashworth grade."),
        ("relies_on_tone", "maybe", "Choose yes, no or not known."),
        ("measured_on", "0001-01-01", "before the patient was born"),
        ("creatinine_unit", "mmol/L", "Choose mg/dL or umol/L"),
    ],
)
def test_manual_form_errors_are_shown_next_to_the_values(
    client: support.PageClient, field: str, value: str, message: str
) -> None:
    token = client.csrf("/patients")
    response = client.post("/patients/manual", data={**FORM, field: value, "csrf_token": token})
    assert response.status_code == 400
    assert 'id="form-errors"' in response.text and message in response.text
    assert 'value="61"' in response.text or field == "age"
    if field != "creatinine_unit":  # its message is the creatinine field's
        assert f'aria-describedby="err-{field}"' in response.text and f'id="err-{field}"' in response.text


@pytest.mark.parametrize("drug", ["intrathecal-baclofen", "botulinum-toxin", "diazepam"])
def test_manual_form_takes_no_dose_for_a_drug_the_kb_gives_no_daily_dose_for(
    client: support.PageClient, drug: str
) -> None:
    token = client.csrf("/patients")
    response = client.post(
        "/patients/manual", data={**FORM, "med0_drug": drug, "med0_dose": "150", "csrf_token": token}
    )
    assert response.status_code == 400
    assert "is recorded without a dose here" in response.text and 'id="err-med0_dose"' in response.text
    assert "150 mg" not in response.text


def test_manual_form_doses_carry_the_monograph_unit(client: support.PageClient) -> None:
    kb = client.app.state.cds.engine.kb
    assert manual_form.dose_units(kb) == dict.fromkeys(("baclofen", "dantrolene", "gabapentin", "tizanidine"), "mg")
    start = client.get("/patients").text
    assert "Baclofen (oral) &ndash; dose in mg" in start and "Intrathecal baclofen &ndash; without dose" in start
    entry = manual_form.read_form({**FORM, "med1_drug": "intrathecal-baclofen"}, kb, support.FROZEN_NOW.date())
    bundle = manual_form.build_bundle(entry, kb, support.FROZEN_NOW.date())
    orders = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert orders[0]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["unit"] == "mg"
    assert "dosageInstruction" not in orders[1]


def test_manual_form_says_when_a_dose_has_no_medication(client: support.PageClient) -> None:
    token = client.csrf("/patients")
    response = client.post("/patients/manual", data={**FORM, "med2_dose": "10", "med2_times": "2", "csrf_token": token})
    assert response.status_code == 400
    assert "Choose the medication this dose is for" in response.text and 'id="err-med2_drug"' in response.text


def test_manual_form_without_csrf_is_refused(client: support.PageClient) -> None:
    client.csrf("/patients")
    response = client.post("/patients/manual", data={**FORM, "csrf_token": "nope"})
    assert response.status_code == 400
    assert "The form has expired" in response.text
    assert 'href="#f-form"' in response.text and 'id="f-form"' in response.text  # the summary's link leads somewhere


def test_manual_form_values_are_escaped_when_shown_again(client: support.PageClient) -> None:
    token = client.csrf("/patients")
    response = client.post(
        "/patients/manual", data={**FORM, "age": "", "mas0_muscle": support.SCRIPT_NAME, "csrf_token": token}
    )
    assert "<script>alert" not in response.text
    assert "&lt;script&gt;" in response.text


def test_packaged_demo_patients_all_open(tmp_path: Path) -> None:
    app = support.make_app(tmp_path)
    del app.state.demo_data_dir  # the bundles shipped in spasticity_cds/demo/data
    client = support.PageClient(app)
    listing = client.get("/patients").text
    shipped = sorted(p.stem for p in pages.demo_dir_default().glob("*.json") if p.name != "index.json")
    if not shipped:
        pytest.skip("no demo bundles are packaged yet")
    for name in shipped:
        assert f'href="/patients/demo/{name}"' in listing
        response = client.get(f"/patients/demo/{name}")
        assert response.status_code == 200, name
        assert 'class="ladder"' in response.text or "outside the scope" in response.text
    assert client.get("/patients/demo/index").status_code == 404


def test_patient_without_als_is_out_of_scope(client: support.PageClient) -> None:
    bundle = support.trend_bundle()
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Condition"]
    response = _upload(client, json.dumps(bundle).encode())
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert "outside the scope of this tool" in response.text  # type: ignore[attr-defined]
    assert 'class="ladder"' not in response.text  # type: ignore[attr-defined]


def test_evaluation_failure_is_an_error_page_without_details(
    client: support.PageClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from spasticity_cds.errors import EvaluationError

    def broken(*args: object, **kwargs: object) -> None:
        raise EvaluationError("rule X failed on Patient/secret-name", where="rules/x.yaml")

    monkeypatch.setattr(pages, "build_plan", broken)
    response = client.get("/patients/demo/ada")
    assert response.status_code == 500
    assert "The plan could not be computed" in response.text and "secret-name" not in response.text
    assert "secret-name" not in caplog.text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("2026-11-25T06:15:39.190825+00:00", "2026-11-25 06:15 UTC"),
        ("2026-11-01T09:30:00-05:00", "2026-11-01 09:30 UTC-05:00"),
        ("2026-11-01T09:30:00", "2026-11-01 09:30"),
        ("not a time", "not a time"),
    ],
)
def test_instants_read_to_the_minute_with_their_offset(value: str, text: str) -> None:
    assert instant_text(value) == text


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("obs.egfr lt 30.0", "eGFR < 30"),
        ("obs.alt_x_uln ge 3", "ALT (multiple of upper limit) ≥ 3"),
        (
            "obs.snip lt 40 (not measured counts as not met)",
            "Sniff nasal inspiratory pressure < 40 (counts as not met when not measured)",
        ),
        ("procedure.itb-pump is True", "Intrathecal baclofen pump: yes"),
        ("medclass.cyp1a2-inhibitor is False", "Any cyp1a2 inhibitor medicine: no"),
        ("obs.egfr lt setting.baclofen_renal_floor", "eGFR < the setting baclofen_renal_floor"),
        ("any", "Any of these"),
        (
            "obs.snip lt 40 (not measured counts as not met) (an out-of-date value counts when it meets this)",
            "Sniff nasal inspiratory pressure < 40 (counts as not met when not measured; "
            "an out-of-date value counts when it meets this)",
        ),
    ],
)
def test_why_tree_labels_read_as_a_clinician_reads_them(label: str, text: str) -> None:
    assert check_text(label, api.load_knowledge_base()) == text


def test_calendar_status_reasons_and_ceilings_carry_their_sources(tmp_path: Path) -> None:
    app = support.make_app(tmp_path)
    del app.state.demo_data_dir  # the bundles shipped in spasticity_cds/demo/data
    client = support.PageClient(app)
    shown = {"calendar": 0, "reason": 0, "ceiling": 0}
    for bundle in sorted(pages.demo_dir_default().glob("*.json")):
        if bundle.name == "index.json":
            continue
        page = client.get(f"/patients/demo/{bundle.stem}").text
        calendar = page.split('<div class="calendar">')[1].split("</div>")[0] if 'class="calendar"' in page else ""
        statements = {
            "calendar": re.findall(r"<li><time.*?</li>", calendar, re.S),
            "reason": re.findall(r'<p class="reason">.*?</p>', page, re.S),
            "ceiling": re.findall(r"<dt>Ceiling for this patient</dt><dd>.*?</dd>", page, re.S),
        }
        for kind, found in statements.items():
            shown[kind] += len(found)
            for statement in found:
                assert 'class="cites"' in statement and 'class="ev ev-' in statement, (bundle.stem, statement)
    assert all(shown.values()), shown


def test_the_answer_page_opens_without_uncited_clinical_text(client: support.PageClient) -> None:
    lead = client.get("/").text.split('<p class="lead">')[1].split("</p>")[0]
    assert "upper motor neurons" not in lead and "intrathecal pump" not in lead


def test_a_worklist_link_explains_how_to_open_the_patient(client: support.PageClient) -> None:
    page = client.get("/patients/" + quote("<img src=x onerror=alert(1)>", safe=""))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert 'href="/patients#upload"' in page.text and 'href="/patients#manual"' in page.text
    assert 'action="/smart/launch"' not in page.text  # no EHR registered for a standalone launch
    assert client.get("/patients/demo/ada").text.count('class="pname"') == 1  # the demo route is not shadowed
    assert client.get("/patients/demo/..%2Fada").status_code == 404  # nor does it take paths


def test_a_worklist_link_offers_the_registered_ehr_launch(tmp_path: Path) -> None:
    clients = tmp_path / "clients.toml"
    clients.write_text('[[clients]]\niss = "https://ehr.example/fhir"\nclient_id = "cds"\nlabel = "Example EHR"\n')
    client = support.PageClient(support.make_app(tmp_path / "app", smart_clients_file=clients))
    page = client.get("/patients/p-17")
    assert "Patient p-17 from a worklist - spasticity-cds" in page.text
    assert 'action="/smart/launch"' in page.text and '<option value="https://ehr.example/fhir">Example EHR' in page.text


def test_doses_on_the_page_carry_no_trailing_zero(client: support.PageClient) -> None:
    """A trailing zero ("1.0 mg", read as 10 mg) is on the ISMP do-not-use list."""
    page = _upload(client, _baclofen_at(20, 4)).text  # type: ignore[attr-defined]
    assert not re.search(r"\d\.0 mg", page)
