"""The bundled demo patients: listing, loading, unknown ids, and identity with their golden vignettes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from spasticity_cds.api import evaluate, read_patient
from spasticity_cds.demo import DemoPatient, list_demo_patients, load_demo_bundle
from spasticity_cds.errors import InputError

VIGNETTES = Path(__file__).resolve().parents[1] / "vignettes"
NOW = datetime.fromisoformat("2026-11-24T09:30:00-05:00")


def _vignette_of(demo_id: str) -> Path:
    matches = [path for path in VIGNETTES.iterdir() if path.is_dir() and path.name[3:] == demo_id]
    assert len(matches) == 1, f"demo {demo_id} must be a copy of exactly one vignette (NN-{demo_id})"
    return matches[0]


def test_six_to_eight_demo_patients_with_titles() -> None:
    patients = list_demo_patients()
    assert 6 <= len(patients) <= 8
    assert all(isinstance(p, DemoPatient) and p.title and p.summary for p in patients)
    assert len({p.id for p in patients}) == len(patients)


@pytest.mark.parametrize("patient", list_demo_patients(), ids=lambda p: p.id)
def test_demo_bundle_is_identical_to_its_vignette(patient: DemoPatient) -> None:
    assert load_demo_bundle(patient.id) == (_vignette_of(patient.id) / "bundle.json").read_bytes()


@pytest.mark.parametrize("patient", list_demo_patients(), ids=lambda p: p.id)
def test_demo_bundle_evaluates_in_scope(patient: DemoPatient) -> None:
    result = evaluate(read_patient(load_demo_bundle(patient.id), source=patient.id), now=NOW)
    assert result["in_scope"] is True


def test_demos_walk_the_ladder() -> None:
    results = [evaluate(load_demo_bundle(p.id), now=NOW) for p in list_demo_patients()]
    fired = {f["rule_id"] for r in results for f in r["findings"] if f["kind"] != "data-gap"}
    for step in (
        "LADDER-BACLOFEN-FIRST-LINE",
        "LADDER-AFTER-BACLOFEN",
        "BOTOX-FOCAL",
        "ITB-REFERRAL",
        "ITB-INTERRUPTION-EMERGENCY",
        "BENZO-RESP-GATE",
    ):
        assert step in fired


@pytest.mark.parametrize("bad", ["no-such-patient", "../index", "index", ""])
def test_unknown_demo_id_is_an_input_error(bad: str) -> None:
    with pytest.raises(InputError, match="no demo patient"):
        load_demo_bundle(bad)
