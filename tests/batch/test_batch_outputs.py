"""The people-facing outputs: CSV and HTML worklists escape everything, link to the patient page, sort inline."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds import api
from spasticity_cds.batch import policy, worklist

from .batch_helpers import NOW, read_ndjson, run


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


HOSTILE = '=HYPERLINK("http://evil")<script>alert(1)</script>&"'


def _hostile_cohort(clean_cohort: Path, tmp_path: Path) -> tuple[Path, str]:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    run(clean_cohort, tmp_path / "probe")
    target = read_ndjson(tmp_path / "probe" / "Task.ndjson")[0]["for"]["reference"].removeprefix("Patient/")
    lines = []
    for line in (export / "Patient.ndjson").read_bytes().splitlines():
        patient = orjson.loads(line)
        if patient["id"] == target:
            patient["name"] = [{"text": HOSTILE}]
        lines.append(orjson.dumps(patient))
    (export / "Patient.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return export, target


def test_html_and_csv_escape_everything_and_link_the_patient_page(clean_cohort: Path, tmp_path: Path) -> None:
    export, target = _hostile_cohort(clean_cohort, tmp_path)
    run(export, tmp_path / "run", app_url="https://cds.example/app/")
    page = (tmp_path / "run" / "worklist.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;" in page
    assert f'<a href="https://cds.example/app/patients/{target}">{target}</a>' in page
    assert page.count("<script") == 1, "one inline script (the sorter), no external script"
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)
    rows = read_csv(tmp_path / "run" / "worklist.csv")
    hostile_rows = [row for row in rows if row["patient"] == target]
    assert hostile_rows
    assert all(row["name"] == "'" + HOSTILE for row in hostile_rows)
    assert all(row["link"] == f"https://cds.example/app/patients/{target}" for row in hostile_rows)


def test_worklists_list_every_open_task_most_severe_first(clean_cohort: Path, tmp_path: Path) -> None:
    summary = run(clean_cohort, tmp_path / "run")
    rows = read_csv(tmp_path / "run" / "worklist.csv")
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "run" / "Task.ndjson")}
    assert len(rows) == len(tasks) == summary.counts["tasks"]["open"]
    assert {row["task"] for row in rows} == set(tasks)
    ranks = [policy.SEVERITY_RANK[row["severity"]] for row in rows]
    assert ranks == sorted(ranks)
    page = (tmp_path / "run" / "worklist.html").read_text(encoding="utf-8")
    assert page.count("<tr><td>") == len(rows)
    assert page.count('<td dir="auto">') == len(rows) * (len(worklist.HTML_COLUMNS) - 2)  # each text cell isolated
    sections = re.findall(r'<section class="severity-(\w+)">', page)
    assert sections == sorted(set(sections), key=policy.SEVERITY_RANK.__getitem__)
    for row in rows:
        task = tasks[row["task"]]
        assert row["summary"] == task["description"]
        assert row["severity"] in policy.ACTIONABLE_SEVERITIES or row["action"] == "referral"


def test_task_shape(clean_cohort: Path, tmp_path: Path) -> None:
    summary = run(clean_cohort, tmp_path / "run")
    for task in read_ndjson(tmp_path / "run" / "Task.ndjson"):
        assert (task["resourceType"], task["status"], task["intent"]) == ("Task", "requested", "proposal")
        assert re.fullmatch(r"[0-9a-f]{32}", task["id"])
        assert task["identifier"] == [{"system": policy.TASK_KEY_SYSTEM, "value": task["id"]}]
        assert task["priority"] in {"urgent", "routine"}
        assert task["code"]["coding"][0]["system"] == policy.ACTION_SYSTEM
        assert task["for"]["reference"].startswith("Patient/")
        assert task["authoredOn"] == "2026-11-01T09:30:00-05:00"
        assert task["reasonCode"]["coding"][0]["system"] == policy.RULE_SYSTEM
        assert task["meta"]["tag"][0]["code"] == summary.manifest["knowledgeBase"]["version"]
        assert task["meta"]["tag"][1]["code"] == summary.manifest["knowledgeBase"]["digest"]
        evidence = [i["valueReference"]["reference"] for i in task["input"] if "valueReference" in i]
        if "focus" in task:
            assert task["focus"]["reference"] in evidence
            assert task["focus"]["reference"].startswith("MedicationRequest/")


def test_policy_table() -> None:
    def finding(kind: str, severity: str, action: str | None = None) -> dict[str, str]:
        return {"kind": kind, "severity": severity} | ({"action": action} if action else {})

    for kind in ("contraindication", "warning", "dose", "monitoring"):
        assert policy.is_actionable(finding(kind, "critical"))
        assert policy.is_actionable(finding(kind, "warning"))
        assert not policy.is_actionable(finding(kind, "info"))
    assert policy.is_actionable(finding("recommendation", "info", "referral"))
    assert not policy.is_actionable(finding("recommendation", "critical"))
    assert not policy.is_actionable(finding("recommendation", "warning", "taper"))
    assert not policy.is_actionable(finding("data-gap", "warning"))
    assert not policy.is_actionable(finding("info", "critical"))
    assert policy.action_code(finding("dose", "warning", "renal-dose")) == "renal-dose"
    assert policy.action_code(finding("warning", "warning")) == "review"


@pytest.mark.parametrize(
    ("patient", "deceased"),
    [
        ({"deceasedBoolean": True}, True),
        ({"deceasedBoolean": False}, False),
        ({}, False),
        ({"deceasedDateTime": "2026-10-31T23:00:00-05:00"}, True),
        ({"deceasedDateTime": "2026-11-01"}, True),
        ({"deceasedDateTime": "2026-11-02"}, False),
        ({"deceasedDateTime": "2026-11"}, True),
        ({"deceasedDateTime": "2026-12"}, False),
        ({"deceasedDateTime": "2027"}, False),
        ({"deceasedDateTime": ""}, False),
        ({"deceasedDateTime": "2026-11-01T14:00:00Z"}, True),  # half an hour before NOW (14:30 UTC)
        ({"deceasedDateTime": "2026-11-01T15:00:00Z"}, False),  # the same day, but after NOW
        ({"deceasedDateTime": "2026-11-01T09:00:00"}, True),  # no offset: its day counts
        ({"deceasedDateTime": "06/01/2016"}, False),  # not a FHIR dateTime: ignored, never a silent exclusion
        ({"deceasedDateTime": " 2016"}, False),
        ({"deceasedDateTime": "2016-1"}, False),
        ({"deceasedDateTime": "2016-01-0"}, False),
        ({"deceasedDateTime": "2016-01-06Tnoon"}, False),
    ],
)
def test_deceased_means_a_death_recorded_by_the_evaluation_instant(patient: dict[str, Any], deceased: bool) -> None:
    record = api.read_patient([{"resourceType": "Patient", "id": "p", **patient}])
    assert policy.is_deceased(record, NOW) is deceased  # NOW is 2026-11-01T09:30-05:00


def test_a_nul_in_a_name_or_record_number_never_reaches_the_worklists() -> None:
    from spasticity_cds.batch.tasks import patient_label

    patient = {"name": [{"text": "Ann\x00 Lee"}], "identifier": [{"type": _MR, "value": "MR\x0012"}]}
    assert patient_label(patient) == ("Ann Lee", None)  # an identifier that cannot be shown whole is left out


_MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


@pytest.mark.parametrize(
    ("identifiers", "shown"),
    [
        ([{"system": "urn:ssn", "value": "123-45-6789"}], None),  # not typed MR: maybe a national id, never shown
        (
            [{"system": "urn:ssn", "value": "123-45-6789"}, {"type": _MR, "system": "urn:mrn", "value": "M-7"}],
            {"system": "urn:mrn", "value": "M-7"},
        ),
        ([{"type": _MR, "value": "M" * 201}], None),  # too long to show whole: left out, never cut
    ],
)
def test_only_a_whole_medical_record_number_with_its_system_labels_a_task(
    identifiers: list[dict[str, Any]], shown: dict[str, str] | None
) -> None:
    from spasticity_cds.batch.tasks import patient_label

    assert patient_label({"identifier": identifiers}) == ("", shown)
