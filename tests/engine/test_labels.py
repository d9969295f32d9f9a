"""Fact labels: one wording for a fact's name on the page, on cards and in the CLI."""

from __future__ import annotations

import pytest

from spasticity_cds import load_knowledge_base
from spasticity_cds.engine.labels import DERIVED_FACT_LABELS


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("obs.alt_x_uln", "ALT (multiple of upper limit)"),
        ("obs.orthostatic_sbp_drop", "Fall in systolic pressure on standing"),
        ("patient.age", "Age"),
        ("obs.egfr", "eGFR"),
        ("med.baclofen.daily_dose", "Baclofen (oral) daily dose"),
        ("setting.jurisdiction", "The setting jurisdiction"),
        ("medclass.opioid", "Opioid"),  # a class that is also a concept
        ("medclass.alpha2-agonist", "Any alpha2 agonist medicine"),
        ("nothing.known_here", "nothing.known here"),
    ],
)
def test_a_fact_reads_as_a_clinician_names_it(name: str, label: str) -> None:
    assert load_knowledge_base().fact_label(name) == label


def test_a_definition_reads_as_its_description() -> None:
    engine = load_knowledge_base()
    name, definition = next(iter(engine.kb.definitions.items()))
    assert engine.fact_label(f"def.{name}") == definition.description


def test_every_derived_label_names_a_fact_the_extractor_produces() -> None:
    assert set(DERIVED_FACT_LABELS) <= load_knowledge_base().fact_names
