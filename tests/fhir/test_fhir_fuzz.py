"""Seeded mutations of synthetic Bundles: every odd shape ends in a result or an InputError, never a crash."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from spasticity_cds.api import load_knowledge_base, read_patient, to_json
from spasticity_cds.errors import SpasticityCdsError
from spasticity_cds.synth import generate_patient
from spasticity_cds.synth.writer import bundle_of

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
ODD_VALUES: list[Any] = [
    None,
    3,
    -1.5,
    "x",
    True,
    [],
    {},
    [1, "a"],
    {"a": [1]},
    "2026-13-45",
    1e308,
    "urn:uuid:nowhere",
    {"reference": 5},
]


def _mutate(node: Any, rng: random.Random, depth: int = 0) -> None:
    """Replace one value somewhere under ``node`` with an odd one."""
    if not isinstance(node, dict | list) or not node:
        return
    slot = rng.choice(list(node) if isinstance(node, dict) else range(len(node)))
    if rng.random() < 0.3 or depth > 6:
        node[slot] = copy.deepcopy(rng.choice(ODD_VALUES))
    else:
        _mutate(node[slot], rng, depth + 1)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_bundles_never_crash_the_evaluator(seed: int) -> None:
    engine = load_knowledge_base()
    rng = random.Random(seed)
    bundles = [bundle_of(generate_patient(seed, i, "typical"), seed, i, NOW.date()) for i in range(3)]
    outcomes = {"result": 0, "input error": 0}
    for _ in range(60):
        document = copy.deepcopy(rng.choice(bundles))
        for _ in range(rng.randint(1, 8)):
            _mutate(document, rng)
        try:
            to_json(engine.evaluate(read_patient(orjson.dumps(document)), NOW))
            outcomes["result"] += 1
        except SpasticityCdsError:
            outcomes["input error"] += 1
    assert outcomes["result"] > 0
