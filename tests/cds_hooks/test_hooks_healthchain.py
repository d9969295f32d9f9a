"""A real third-party CDS Hooks client, HealthChain's SandboxClient (PyPI), drives the service over HTTP."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import SqlFeedbackStore

from .helpers import PATIENT_ID, REVIEW, SIGN, FrozenClock, baclofen_order, prefetch, serve

healthchain = pytest.importorskip("healthchain")
from healthchain.models.responses.cdsresponse import CDSResponse  # noqa: E402
from healthchain.sandbox import SandboxClient  # noqa: E402
from healthchain.sandbox.requestconstructors import CdsRequestConstructor  # noqa: E402
from healthchain.sandbox.workflows import Workflow  # noqa: E402


@pytest.fixture
def server(settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock) -> Any:
    """Our app on uvicorn; HealthChain's client sends no JWT, so authentication is switched off explicitly."""
    app = create_app(dataclasses.replace(settings, auth_required=False), store=hook_store, clock=hook_clock)
    with serve(app) as url:
        yield url


def _healthchain_valid(response: dict[str, Any]) -> None:
    """HealthChain's CDSResponse model; it requires its own camelCase ``autoLaunchable`` on every link, which the
    specification spells ``autolaunchable`` and makes optional, so that one field is added before validating."""
    patched = copy.deepcopy(response)
    for card in patched["cards"]:
        for link in card.get("links", []):
            link["autoLaunchable"] = False
    CDSResponse.model_validate(patched)


def _client(url: str, workflow: str, body: dict[str, Any], context: dict[str, Any]) -> SandboxClient:
    client = SandboxClient(url=url, workflow=workflow)
    request = CdsRequestConstructor().construct_request(
        prefetch_data=body, workflow=Workflow(workflow), context=context
    )
    client.requests.append(request)
    return client


def test_healthchain_patient_view_from_a_prefetch_file(server: str, tmp_path: Path) -> None:
    """HealthChain invents a patientId that does not match the prefetched Patient: we answer 412, it records {}."""
    data_file = tmp_path / "prefetch.json"
    data_file.write_text(json.dumps(prefetch(meds=[baclofen_order(status="active")])), encoding="utf-8")
    client = SandboxClient(url=f"{server}/cds-services/{REVIEW}", workflow="patient-view").load_from_path(data_file)
    assert client.send_requests() == [{}]


def test_healthchain_patient_view_gets_cards_it_validates(server: str) -> None:
    data = prefetch(meds=[baclofen_order(status="active")])
    client = _client(
        f"{server}/cds-services/{REVIEW}",
        "patient-view",
        data,
        {"userId": "Practitioner/dr-1", "patientId": PATIENT_ID},
    )
    (response,) = client.send_requests()
    assert response["cards"], response
    _healthchain_valid(response)
    assert response["cards"][0]["summary"].startswith("Baclofen 60 mg/day is above")


def test_healthchain_order_sign_loses_draft_orders_and_gets_400(server: str, caplog: pytest.LogCaptureFixture) -> None:
    """HealthChain 0.16 serialises only the base context fields, so draftOrders never leaves the client."""
    draft = baclofen_order()
    context = {
        "userId": "Practitioner/dr-1",
        "patientId": PATIENT_ID,
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
    }
    client = _client(f"{server}/cds-services/{SIGN}", "order-sign", prefetch(), context)
    assert client.send_requests() == [{}]
    assert "context.draftOrders is required for order-sign" in caplog.text
