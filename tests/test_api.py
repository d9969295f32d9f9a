"""The library surface: evaluate, explain, read_patient, to_json - the result contract of design.md section 5."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

import spasticity_cds
from spasticity_cds.errors import InputError, KnowledgeBaseError

NOW = datetime.fromisoformat("2026-11-24T09:30:00-05:00")
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01", "gender": "male"}
ALS = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
}
BACLOFEN = {
    "resourceType": "MedicationRequest",
    "id": "m1",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197392"}]
    },
    "dosageInstruction": [
        {
            "timing": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 22.5, "unit": "mg"}}],
        }
    ],
}
BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in (PATIENT, ALS, BACLOFEN)]}

STATUSES = {"current", "recommended", "consider", "caution", "avoid", "contraindicated"}
KINDS = {"recommendation", "contraindication", "warning", "dose", "monitoring", "data-gap", "info"}
SEVERITIES = {"critical", "warning", "info"}
AGENTS = {
    "non-drug",
    "baclofen",
    "tizanidine",
    "clonidine",
    "dantrolene",
    "diazepam",
    "clonazepam",
    "gabapentin",
    "nabiximols",
    "botulinum-toxin",
    "intrathecal-baclofen",
}


def test_the_result_contract() -> None:
    result = spasticity_cds.evaluate(BUNDLE, now=NOW)
    assert result["patient"] == "Patient/p1"
    assert result["evaluated_at"] == "2026-11-24T09:30:00-05:00"
    assert set(result["knowledge_base"]) >= {"version", "digest"}
    assert {o["agent"] for o in result["options"]} == AGENTS
    assert [o["rank"] for o in result["options"]] == list(range(1, len(AGENTS) + 1))
    for option in result["options"]:
        assert option["status"] in STATUSES
    for finding in result["findings"]:
        assert finding["kind"] in KINDS and finding["severity"] in SEVERITIES
        assert {"rule_id", "rule_version", "summary", "detail", "citations", "facts", "evidence", "agents"} <= set(
            finding
        )
    order = [(f["severity"], f["kind"]) for f in result["findings"]]
    severities = [sorted(SEVERITIES, key=["critical", "warning", "info"].index).index(s) for s, _ in order]
    assert severities == sorted(severities)


def test_every_input_shape_gives_the_same_answer() -> None:
    as_bytes = spasticity_cds.evaluate(orjson.dumps(BUNDLE), now=NOW)
    assert spasticity_cds.evaluate(BUNDLE, now=NOW) == as_bytes
    assert spasticity_cds.evaluate([PATIENT, ALS, BACLOFEN], now=NOW) == as_bytes
    record = spasticity_cds.read_patient(orjson.dumps(BUNDLE))
    assert isinstance(record, spasticity_cds.PatientRecord)
    assert spasticity_cds.evaluate(record, now=NOW) == as_bytes


def test_settings_change_the_answer() -> None:
    us = spasticity_cds.evaluate(BUNDLE, now=NOW)
    uk = spasticity_cds.evaluate(BUNDLE, now=NOW, settings={"jurisdiction": "uk"})
    assert "BACLOFEN-DOSE-ABOVE-MAX" in {f["rule_id"] for f in us["findings"]}
    assert "BACLOFEN-DOSE-ABOVE-MAX" not in {f["rule_id"] for f in uk["findings"]}
    assert us["settings"]["jurisdiction"] == "us" and uk["settings"]["jurisdiction"] == "uk"
    above = next(f for f in us["findings"] if f["rule_id"] == "BACLOFEN-DOSE-ABOVE-MAX")
    assert "(us)" in above["summary"]


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (datetime(2026, 11, 24, 9, 30), "needs a UTC offset"),
        ("2026-11-24T09:30:00-05:00", "not str"),
        (datetime(9999, 12, 31, tzinfo=NOW.tzinfo), "past the year 9000"),
    ],
)
def test_now_must_be_an_aware_datetime_the_calendar_can_count_from(now: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        spasticity_cds.evaluate(BUNDLE, now=now)  # type: ignore[arg-type]


def test_explain_gives_every_node_and_the_deciding_ones() -> None:
    explained = spasticity_cds.explain(BUNDLE, "BACLOFEN-DOSE-ABOVE-MAX", now=NOW)
    assert explained["outcome"] == "true"
    assert explained["file"] == "rules/kidney.yaml"
    assert explained["tree"]["label"] == "all"
    assert [c["value"] for c in explained["tree"]["children"]] == ["true", "true"]
    assert explained["deciding"]
    why_not = spasticity_cds.explain(BUNDLE, "LADDER-BACLOFEN-FIRST-LINE", now=NOW)
    assert why_not["outcome"] == "false"
    assert ".all[0].not" in why_not["deciding"][0]["path"]


def test_explain_an_unknown_rule_suggests_one() -> None:
    with pytest.raises(KnowledgeBaseError, match="did you mean 'BACLOFEN-DOSE-ABOVE-MAX'"):
        spasticity_cds.explain(BUNDLE, "BACLOFEN-DOSE-ABOVE-MAXX", now=NOW)


def test_to_json_is_canonical() -> None:
    result = spasticity_cds.evaluate(BUNDLE, now=NOW)
    compact = spasticity_cds.to_json(result)
    assert orjson.loads(compact) == result
    assert compact == spasticity_cds.to_json(orjson.loads(compact))
    assert spasticity_cds.to_json({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    assert spasticity_cds.to_json({"a": 1}, pretty=True) == b'{\n  "a": 1\n}'


def test_evaluation_is_deterministic() -> None:
    first = spasticity_cds.to_json(spasticity_cds.evaluate(BUNDLE, now=NOW))
    assert all(spasticity_cds.to_json(spasticity_cds.evaluate(BUNDLE, now=NOW)) == first for _ in range(3))


def test_a_result_is_the_callers_own_to_change() -> None:
    first = spasticity_cds.evaluate(BUNDLE, now=NOW)
    expected = spasticity_cds.to_json(first)
    for finding in first["findings"]:
        for citation in finding["citations"]:
            citation["status"] = "REDACTED"
    first["disclaimer"]["citations"].clear()
    assert spasticity_cds.to_json(spasticity_cds.evaluate(BUNDLE, now=NOW)) == expected


def test_explain_opens_the_definitions_a_rule_reads() -> None:
    explained = spasticity_cds.explain(BUNDLE, "BENZO-RESP-GATE", now=NOW)
    (compromise,) = [n for n in explained["tree"]["children"] if n["label"].startswith("def.respiratory_compromise")]
    (definition,) = compromise["children"]
    assert definition["label"] == "any"
    assert any(child["label"].startswith("obs.fvc-percent lt 50") for child in definition["children"])
