"""Tests for generate_patient: determinism, sizes, structure and the realism features."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds.synth import AS_OF, PROFILES, generate_patient

from .synth_helpers import CLINICAL_TYPES

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "http://spasticity-cds.org/fhir/CodeSystem/local"


@cache
def cohort(seed: int = 11, n: int = 400, profile: str = "typical") -> list[list[dict[str, Any]]]:
    return [generate_patient(seed, i, profile) for i in range(n)]


def all_resources(kind: str | None = None) -> list[dict[str, Any]]:
    return [r for patient in cohort() for r in patient if kind is None or r["resourceType"] == kind]


def codes_of(resource: dict[str, Any], element: str = "code") -> set[str]:
    return {c["code"] for c in resource.get(element, {}).get("coding", [])}


def local_code(obs: dict[str, Any]) -> str | None:
    return next((c["code"] for c in obs["code"].get("coding", []) if c["system"] == LOCAL), None)


# Determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_same_inputs_give_byte_identical_output(profile: str) -> None:
    first = orjson.dumps(generate_patient(5, 17, profile))
    second = orjson.dumps(generate_patient(5, 17, profile))
    assert first == second


def test_output_depends_on_seed_index_and_profile() -> None:
    base = orjson.dumps(generate_patient(1, 1, "lean"))
    assert base != orjson.dumps(generate_patient(2, 1, "lean"))
    assert base != orjson.dumps(generate_patient(1, 2, "lean"))
    assert base != orjson.dumps(generate_patient(1, 1, "typical"))


def test_order_of_generation_does_not_matter() -> None:
    forwards = [orjson.dumps(generate_patient(3, i, "lean")) for i in range(5)]
    backwards = [orjson.dumps(generate_patient(3, i, "lean")) for i in reversed(range(5))]
    assert forwards == backwards[::-1]


def test_global_random_state_is_untouched() -> None:
    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    generate_patient(9, 9, "typical")
    assert random.random() == expected


def test_independent_of_hash_seed() -> None:
    code = (
        "import hashlib, orjson; from spasticity_cds.synth import generate_patient; "
        "print(hashlib.sha256(orjson.dumps(generate_patient(4, 2, 'lean'))).hexdigest())"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": src}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_as_of_moves_the_world() -> None:
    later = generate_patient(1, 1, "lean", as_of=date(2030, 1, 1))
    assert later != generate_patient(1, 1, "lean")
    dates = [r["effectiveDateTime"] for r in later if "effectiveDateTime" in r]
    assert max(dates) < "2030-01-01" and max(dates) > "2029"


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        generate_patient(1, 1, "enormous")


# Sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_mean_resources_per_patient_near_target(profile: str) -> None:
    target = PROFILES[profile].target_resources
    sizes = [len(generate_patient(21, i, profile)) for i in range(50)]
    mean = sum(sizes) / len(sizes)
    assert 0.8 * target <= mean <= 1.2 * target, mean


def test_heavy_patients_are_mostly_visits_and_measurements() -> None:
    kinds = Counter(r["resourceType"] for i in range(10) for r in generate_patient(21, i, "heavy"))
    assert (kinds["Observation"] + kinds["Encounter"]) / sum(kinds.values()) > 0.9


# Structure --------------------------------------------------------------------------------------


def test_every_resource_has_type_and_stable_id() -> None:
    for index, patient in enumerate(cohort()[:50]):
        assert patient[0]["resourceType"] == "Patient"
        assert patient[0]["id"] == f"p-11-{index}"
        for r in patient[1:]:
            assert r["resourceType"] in CLINICAL_TYPES
            assert re.fullmatch(rf"(cond|obs|mr|proc|enc)-11-{index}-[0-9]+", r["id"]), r["id"]


def test_clinical_resources_reference_their_patient() -> None:
    for patient in cohort():
        ref = f"Patient/{patient[0]['id']}"
        for r in patient[1:]:
            assert r["resourceType"] in CLINICAL_TYPES
            assert r["subject"] == {"reference": ref}


def test_repeated_ids_are_exact_duplicates() -> None:
    duplicates = 0
    for patient in cohort():
        seen: dict[str, bytes] = {}
        for r in patient:
            key = f"{r['resourceType']}/{r['id']}"
            blob = orjson.dumps(r)
            if key in seen:
                duplicates += 1
                assert seen[key] == blob
            seen[key] = blob
    total = len(all_resources())
    assert 0.003 < duplicates / total < 0.02


def test_nothing_happens_after_as_of() -> None:
    limit = AS_OF.isoformat()
    for r in all_resources():
        stamps = [r.get(k) for k in ("effectiveDateTime", "authoredOn", "performedDateTime", "onsetDateTime")]
        stamps += [r.get("performedPeriod", {}).get("start"), r.get("period", {}).get("end")]
        stamps.append(r.get("dispenseRequest", {}).get("validityPeriod", {}).get("end"))
        for stamp in filter(None, stamps):
            assert stamp < limit, r


def containers(value: Any) -> list[int]:
    if isinstance(value, dict):
        return [id(value)] + [i for v in value.values() for i in containers(v)]
    if isinstance(value, list):
        return [id(value)] + [i for v in value for i in containers(v)]
    return []


def test_resources_share_no_mutable_parts() -> None:
    for patient in cohort()[:50]:
        ids = [i for r in patient for i in containers(r)]
        assert len(ids) == len(set(ids))


def test_encounter_references_resolve() -> None:
    for patient in cohort()[:100]:
        encounters = {r["id"] for r in patient if r["resourceType"] == "Encounter"}
        for r in patient:
            if "encounter" in r:
                assert r["encounter"]["reference"].removeprefix("Encounter/") in encounters


# Realism ----------------------------------------------------------------------------------------


def primary_diagnoses() -> list[dict[str, Any]]:
    unique = {r["id"]: r for r in all_resources("Condition")}
    return [r for r in unique.values() if r["category"][0]["coding"][0]["code"] == "encounter-diagnosis"]


def test_diagnosis_coding_varies_and_some_patients_have_no_als() -> None:
    styles = Counter()
    for r in primary_diagnoses():
        found = codes_of(r)
        if not found:
            styles["text"] += 1
        elif {"86044005", "G12.21"} <= found:
            styles["both"] += 1
        elif found & {"G35", "24700007"}:
            styles["ms"] += 1
        elif found & {"G12.23", "G12.29", "G12.20"}:
            styles["pls-or-mnd"] += 1
        else:
            styles["one"] += 1
    assert len(primary_diagnoses()) == 400
    assert all(styles[k] > 0 for k in ("text", "both", "ms", "pls-or-mnd", "one"))
    assert 0.01 <= styles["ms"] / 400 <= 0.07


def test_score_ranges() -> None:
    limits = {"alsfrs-r-swallowing": (0, 4), "penn-spasm-frequency": (0, 4)}
    for obs in all_resources("Observation"):
        local = local_code(obs)
        if local in limits:
            low, high = limits[local]
            assert low <= obs["valueInteger"] <= high
        if local == "modified-ashworth":
            value = obs.get("valueInteger", obs.get("valueString"))
            assert value in (0, 1, "1+", 2, 3, 4)
            assert obs["bodySite"]["text"]
        if "67131-4" in codes_of(obs) and "valueQuantity" in obs:
            assert 0 <= obs["valueQuantity"]["value"] <= 48


def test_fvc_declines_over_time_for_als() -> None:
    falling = 0
    for patient in cohort()[:100]:
        fvc = [o["valueQuantity"]["value"] for o in patient if "19872-1" in codes_of(o) and "valueQuantity" in o]
        if len(fvc) >= 6:
            falling += fvc[-1] < fvc[0]
    assert falling >= 50


def test_lab_units_and_codes_vary() -> None:
    units: dict[str, set[str]] = {}
    for obs in all_resources("Observation"):
        for code in codes_of(obs) & {"2160-0", "1975-2", "98979-8", "33914-3"}:
            units.setdefault(code, set()).add(obs["valueQuantity"]["unit"])
    assert units["2160-0"] == {"mg/dL", "umol/L"}
    assert units["1975-2"] == {"mg/dL", "umol/L"}
    assert units["98979-8"] == {"mL/min/{1.73_m2}"}
    assert "33914-3" in units


def test_some_abnormal_alt_and_missing_reference_ranges() -> None:
    alts = [o for o in all_resources("Observation") if "1742-6" in codes_of(o)]
    with_range = [o for o in alts if "referenceRange" in o]
    assert 0.6 < len(with_range) / len(alts) < 1.0
    high = [o for o in with_range if o["valueQuantity"]["value"] > 3 * o["referenceRange"][0]["high"]["value"]]
    assert high


def test_blood_pressure_panel_and_orthostatic_pairs() -> None:
    panels = [o for o in all_resources("Observation") if "85354-9" in codes_of(o)]
    assert panels
    for panel in panels:
        assert [codes_of(c) for c in panel["component"]] == [{"8480-6"}, {"8462-4"}]
        assert all(c["valueQuantity"]["unit"] == "mm[Hg]" for c in panel["component"])
    standing = [o for o in all_resources("Observation") if "8460-8" in codes_of(o)]
    assert standing


def test_medication_requests_are_varied_and_coded() -> None:
    requests = all_resources("MedicationRequest")
    text_only = [m for m in requests if "coding" not in m["medicationCodeableConcept"]]
    assert 0.02 < len(text_only) / len(requests) < 0.12
    assert any("intent" not in m for m in requests)
    rx = {c["code"] for m in requests for c in m["medicationCodeableConcept"].get("coding", [])}
    assert {"1292", "57258", "35623"} <= rx
    assert {"completed", "stopped", "active"} <= {m["status"] for m in requests}
    reasons = {m["statusReason"]["text"] for m in requests if "statusReason" in m}
    assert {"sedation", "ineffective", "raised ALT"} <= reasons
    for m in requests:
        for c in m["medicationCodeableConcept"].get("coding", []):
            assert c["system"] == RXNORM


def test_structured_dosage_shape() -> None:
    structured = 0
    for m in all_resources("MedicationRequest"):
        instruction = m["dosageInstruction"][0]
        assert instruction["text"]
        if "timing" in instruction:
            structured += 1
            repeat = instruction["timing"]["repeat"]
            assert repeat["period"] == 1 and repeat["periodUnit"] == "d" and repeat["frequency"] >= 1
            assert instruction["doseAndRate"][0]["doseQuantity"]["value"] > 0
    assert structured > 0


def test_riluzole_in_most_als_patients() -> None:
    with_riluzole = sum(
        any("35623" in codes_of(r, "medicationCodeableConcept") for r in p if r["resourceType"] == "MedicationRequest")
        for p in cohort()
    )
    assert 0.55 < with_riluzole / 400 < 0.9


def test_stage_procedures_present() -> None:
    procedures = all_resources("Procedure")
    texts = {p["code"].get("text") for p in procedures}
    assert {"Non-invasive ventilation", "Percutaneous endoscopic gastrostomy"} <= texts
    niv = [p for p in procedures if "428311008" in codes_of(p)]
    assert niv and all(p["status"] == "in-progress" for p in niv)


def test_liquids_follow_a_gastrostomy() -> None:
    switched = 0
    for patient in cohort():
        peg_days = {
            p["performedDateTime"][:10]
            for p in patient
            if p["resourceType"] == "Procedure" and p["code"].get("text") == "Percutaneous endoscopic gastrostomy"
        }
        for m in patient:
            if m["resourceType"] == "MedicationRequest" and "route" in m["dosageInstruction"][0]:
                switched += 1
                assert m["authoredOn"] in peg_days
                assert "oral s" in m["medicationCodeableConcept"]["text"]
    assert switched > 0


def test_paco2_in_both_units() -> None:
    units = {
        o["valueQuantity"]["unit"]
        for o in all_resources("Observation")
        if "2019-8" in codes_of(o) and "valueQuantity" in o
    }
    assert units == {"mm[Hg]", "kPa"}
