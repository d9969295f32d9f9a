"""Integration: the evaluator reads synthetic patients without error and scopes the non-ALS controls out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from spasticity_cds.synth import AS_OF, generate_patient
from spasticity_cds.synth.writer import bundle_of

api = pytest.importorskip("spasticity_cds.api")
NOW = datetime(AS_OF.year, AS_OF.month, AS_OF.day, 9, 0, tzinfo=UTC)


def has_ms(resources: list[dict[str, Any]]) -> bool:
    return any(r.get("code", {}).get("text") == "Multiple sclerosis" for r in resources)


def test_synthetic_bundles_evaluate_and_controls_are_out_of_scope() -> None:
    engine = api.load_knowledge_base()
    scoped: dict[bool, set[bool]] = {True: set(), False: set()}
    for index in range(120):
        resources = generate_patient(6, index, "lean")
        result = api.evaluate(orjson.dumps(bundle_of(resources, 6, index, AS_OF)), now=NOW, engine=engine)
        assert result["patient"] == f"Patient/p-6-{index}"
        scoped[has_ms(resources)].add(result["in_scope"])
    assert scoped[False] == {True}
    assert scoped[True] == {False}
