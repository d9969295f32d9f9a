"""The official CDS Hooks sandbox (cds-hooks/sandbox, built by scripts/sandbox-check) driving our service in Chromium.

Runs only when the built sandbox exists (``SPASTICITY_CDS_SANDBOX_BUILD``, default the cache folder the script
uses). The sandbox signs its ES384 JWTs with the private key committed in its repository; we trust its issuer
with the public JWKS that ships in the same build, out of band, as docs/cds-hooks.md describes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_support import shot
from cds_client_support import (
    PATIENT_ID,
    SANDBOX_BUILD,
    SANDBOX_ISS,
    SANDBOX_JKU,
    Stack,
    current_baclofen,
    kidney_patient,
    running_stack,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (SANDBOX_BUILD / "index.html").exists() or not (SANDBOX_BUILD / "app.bundle.js").exists(),
        reason=f"no built cds-hooks sandbox at {SANDBOX_BUILD} (run scripts/sandbox-check)",
    ),
]
MEDICATION = "Baclofen 10 MG Oral Tablet [Lioresal]"  # RxNorm 202109 in the sandbox's list and in our value sets


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("sandbox")
    issuers = folder / "issuers.toml"
    issuers.write_text(
        f'[[issuer]]\niss = "{SANDBOX_ISS}"\njwks_file = "{SANDBOX_BUILD / ".well-known" / "jwks.json"}"\n'
        f'jku_allowlist = ["{SANDBOX_JKU}"]\nalgorithms = ["ES384"]\n',
        "utf-8",
    )
    with running_stack(folder, issuers, SANDBOX_BUILD, [*kidney_patient(egfr=20.0), current_baclofen()]) as running:
        yield running


@dataclass
class Tab:
    """A sandbox tab, every answer our service gave it, and every hook request it sent us."""

    page: Any
    answers: list[tuple[str, int]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def sandbox(browser: Any, stack: Stack) -> Iterator[Tab]:
    """The sandbox's own calls to its public defaults fail offline and it logs them, so this tab does not use the
    strict ``page`` fixture; our service's answers are checked instead.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = Tab(context.new_page())

    def on_request(request: Any) -> None:
        if request.url.startswith(f"{stack.cds}/cds-services/") and request.method == "POST":
            tab.requests.append(request.post_data_json)

    tab.page.on("request", on_request)
    tab.page.on("response", lambda r: tab.answers.append((r.url, r.status)) if r.url.startswith(stack.cds) else None)
    yield tab
    context.close()


def _drafts(body: dict[str, Any]) -> list[str]:
    entries = body["context"].get("draftOrders", {}).get("entry", [])
    return [
        e["resource"]["medicationCodeableConcept"]["text"]
        for e in entries
        if "medicationCodeableConcept" in e["resource"]
    ]


def _open(tab: Any, stack: Stack, hook: str, screen: str) -> None:
    discovery = quote(f"{stack.cds}/cds-services", safe="")
    tab.goto(
        f"{stack.client}/?fhirServiceUrl={quote(stack.fhir, safe='')}&patientId={PATIENT_ID}"
        f"&serviceDiscoveryURL={discovery}&hook={hook}&screen={screen}"
    )


def test_patient_view_cards_render_in_the_official_sandbox(sandbox: Tab, stack: Stack) -> None:
    tab, answers = sandbox.page, sandbox.answers
    _open(tab, stack, "patient-view", "patient-view")
    tab.get_by_text("avoid oral baclofen").first.wait_for(timeout=20_000)
    assert tab.get_by_text("Rule BACLOFEN-KIDNEY-FAILURE-AVOID v").count() >= 1
    assert tab.get_by_text("Patient data used:").count() >= 1
    shot(tab, "official-sandbox-patient-view")
    service = f"{stack.cds}/cds-services/als-spasticity-review"
    assert (f"{stack.cds}/cds-services", 200) in answers and (service, 200) in answers
    assert all(status == 200 for url, status in answers if url.startswith(stack.cds))


def test_rx_view_offers_the_delete_and_the_sandbox_applies_it(sandbox: Tab, stack: Stack) -> None:
    tab, answers = sandbox.page, sandbox.answers
    _open(tab, stack, "order-select", "rx-view")
    tab.locator("input[name=medication-input]").wait_for(timeout=20_000)
    tab.get_by_text("Kim Example").first.wait_for(timeout=20_000)
    tab.fill("input[name=medication-input]", "Baclofen 10 MG Oral")
    tab.get_by_text(MEDICATION, exact=True).click()
    remove = tab.get_by_role("button", name=f"Remove the {MEDICATION} order")
    remove.wait_for(timeout=20_000)
    shot(tab, "official-sandbox-rx-view-delete")
    before = len(stack.cds_app.state.cds.store.list_hook_feedback())
    remove.click()
    tab.get_by_text("No recommendations to display").wait_for(timeout=20_000)  # draft removed, hook re-run
    drafts = [_drafts(body) for body in sandbox.requests if body.get("hook") == "order-select"]
    assert [MEDICATION] in drafts and drafts[-1] == []  # after the delete the sandbox sends no baclofen draft
    feedback = f"{stack.cds}/cds-services/als-spasticity-order-select/feedback"
    assert (feedback, 200) in answers
    assert all(status == 200 for url, status in answers if url.startswith(stack.cds))
    stored = stack.cds_app.state.cds.store.list_hook_feedback()
    assert len(stored) == before + 1 and stored[0].rule_id == "BACLOFEN-KIDNEY-FAILURE-AVOID"
