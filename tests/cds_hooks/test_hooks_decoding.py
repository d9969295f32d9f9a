"""Prefetch decoded straight into typed resources, and the plain-JSON fallback for bodies that do not fit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from fastapi import FastAPI

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.cds_hooks.models import HookRequest, PrefetchResource, decode_hook_request
from spasticity_cds.cds_hooks.prefetch import plan_prefetch, templates_for
from spasticity_cds.cds_hooks.runner import HookRunner
from spasticity_cds.errors import HookRequestError
from spasticity_cds.fhir.model import from_json

from .helpers import NOW, PATIENT_ID, SIGN, Client, als, baclofen_order, call, hook_request, prefetch, searchset


def _body(**changes: Any) -> dict[str, Any]:
    data = prefetch(egfr=20) | changes
    return hook_request("order-sign", prefetch_data=data, drafts=[baclofen_order()])


def _without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k not in ("uuid", "appContext")}
    if isinstance(value, list):
        return [_without_uuids(item) for item in value]
    return value


def _cards(app: FastAPI, request: HookRequest) -> Any:
    runner: HookRunner = app.state.hooks.runner
    service = app.state.hooks.catalogue.get(SIGN)
    return _without_uuids(asyncio.run(runner.run(service, request, NOW)).cards)


def test_prefetch_values_decode_into_typed_resources() -> None:
    request = decode_hook_request(json.dumps(_body()).encode())
    assert request.prefetch is not None
    assert all(isinstance(value, PrefetchResource) for value in request.prefetch.values())


def test_typed_and_plain_decoding_give_the_same_cards(app: FastAPI) -> None:
    body = json.dumps(_body()).encode()
    plain = msgspec.json.decode(body, type=HookRequest)
    assert isinstance(plain.prefetch and plain.prefetch["patient"], dict)
    typed_cards = _cards(app, decode_hook_request(body))
    assert typed_cards and typed_cards == _cards(app, plain)


def test_a_field_of_an_odd_shape_falls_back_to_plain_json_and_is_dropped(app: FastAPI) -> None:
    odd = als() | {"clinicalStatus": "active"}  # a code where a CodeableConcept belongs
    request = decode_hook_request(json.dumps(_body(conditions=searchset([odd]))).encode())
    assert request.prefetch is not None and isinstance(request.prefetch["conditions"], dict)
    assert _cards(app, request) == _cards(app, decode_hook_request(json.dumps(_body()).encode()))


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        ("not a resource", 412),
        ([{"resourceType": "Patient"}], 412),
        ({"id": PATIENT_ID}, 412),
        ({"resourceType": 5, "id": PATIENT_ID}, 412),
    ],
)
def test_a_required_value_that_is_no_resource_is_still_412(
    app: FastAPI, client: Client, value: Any, outcome: int
) -> None:
    body = _body(patient=value)
    response = call(app, "POST", f"/cds-services/{SIGN}", json=body, headers=client.headers(f"/cds-services/{SIGN}"))
    assert response.status_code == outcome
    assert "patient" in response.json()["issue"][0]["diagnostics"]


def test_an_invalid_request_is_still_400_with_its_reason() -> None:
    body = _body()
    del body["hookInstance"]
    with pytest.raises(HookRequestError, match="hookInstance"):
        decode_hook_request(json.dumps(body).encode())
    with pytest.raises(HookRequestError, match="not valid JSON"):
        decode_hook_request(b'{"hook": "order-sign", "prefetch": {"patient": {')


def test_typed_values_are_sorted_like_plain_ones() -> None:
    templates = templates_for(load_knowledge_base(), order_checks=False)
    paged = searchset([als()]) | {"link": [{"relation": "next", "url": "http://fhir/Condition?page=2"}]}
    given = {
        "patient": {"resourceType": "Patient", "id": PATIENT_ID},
        "conditions": paged,
        "medications": None,
        "statements": {"id": "no-type"},
        "observations": {"resourceType": "OperationOutcome"},
    }
    typed = {key: from_json(v, PrefetchResource) if v else v for key, v in given.items()}
    context = {"patientId": PATIENT_ID}
    plain_plan, typed_plan = plan_prefetch(templates, given, context), plan_prefetch(templates, typed, context)
    for plan in (plain_plan, typed_plan):
        assert plan.next_pages == {"conditions": "http://fhir/Condition?page=2"}
        assert plan.absent_data == ["medications"]
        assert set(plan.failed) == {"statements", "observations"} and "observations" in plan.to_fetch
    assert typed_plan.failed == plain_plan.failed and len(typed_plan.resources) == len(plain_plan.resources) == 2


def test_a_body_nested_too_deeply_is_a_400_not_a_crash() -> None:
    resource = b'{"resourceType":"Patient","id":"p","code":' + b'{"coding":[' * 3000 + b"]}" * 3000 + b"}"
    body = b'{"hook":"patient-view","hookInstance":"x","context":{},"prefetch":{"patient":' + resource + b"}}"
    with pytest.raises(HookRequestError, match="nested too deeply"):
        decode_hook_request(body)
