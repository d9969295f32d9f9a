"""A folder of Bundle files (Synthea's default output: one transaction Bundle per patient, ``urn:uuid:`` links)
gives the Tasks of the evaluator run on each Bundle file: real Synthea Bundles, and the vendored export rebuilt in
that layout, which gives the same run as the export itself."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson

from spasticity_cds import api
from spasticity_cds.batch.bundles import bundle_lines

from .batch_helpers import NOW, evaluator_tasks, read_ndjson, run
from .synthea_export import CONTEXT_FILES, als_with, resources_of, vendored


def test_a_folder_of_patient_bundles_gives_the_evaluators_tasks_bundle_by_bundle(
    bundle_folder: Path, synthea_export: Path, tmp_path: Path
) -> None:
    summary = run(bundle_folder, tmp_path / "bundles", workers=2)
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "bundles" / "Task.ndjson")}
    patient_files = sorted(set(bundle_folder.glob("*.json")) - {bundle_folder / "hospitalInformation.json"})
    expected = evaluator_tasks(path.read_bytes() for path in patient_files)  # as the one-patient CLI reads them
    assert expected
    assert tasks == expected
    counts = summary.counts
    assert (counts["patients"], counts["patientsDeceased"], counts["patientsInScope"]) == (13, 3, 10)
    assert counts["problems"] == {}, "Provenance reaches its patient through its targets; places are context"
    assert counts["context"] == sum(
        1 for resource in resources_of(synthea_export) if resource["resourceType"] in CONTEXT_FILES
    )
    run(synthea_export, tmp_path / "export")
    exported = (tmp_path / "export" / "Task.ndjson").read_bytes()
    assert (tmp_path / "bundles" / "Task.ndjson").read_bytes() == exported, "same Tasks as from the export"


def test_bundle_lines_number_entries_rewrite_links_and_pass_on_what_is_not_a_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1"}},
            {"request": {"method": "DELETE", "url": "Observation/x"}},
            {
                "fullUrl": "urn:uuid:o1",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "subject": {"reference": "urn:uuid:p1"},
                    "hasMember": [{"reference": "urn:uuid:elsewhere"}],
                    "derivedFrom": [{"reference": "urn:uuid:p1", "display": 'not "reference":"urn:uuid:p1"'}],
                },
            },
        ],
    }
    lines = list(bundle_lines(orjson.dumps(bundle, option=orjson.OPT_INDENT_2)))
    assert lines[0] == b'{"resourceType":"Patient","id":"p1"}'
    assert lines[1] == b"", "an entry without a resource keeps its line number as a blank line"
    observation = orjson.loads(lines[2])
    assert observation["subject"] == {"reference": "Patient/p1"}
    assert observation["hasMember"] == [{"reference": "urn:uuid:elsewhere"}], "a link outside the Bundle is kept"
    assert observation["derivedFrom"][0] == {"reference": "Patient/p1", "display": 'not "reference":"urn:uuid:p1"'}
    assert list(bundle_lines(b'{"resourceType": "Patient",\n "id": "solo"}')) == [
        b'{"resourceType":"Patient","id":"solo"}'
    ]
    assert list(bundle_lines(b"{not json\n at all")) == [b"{not json at all"]
    assert list(bundle_lines(b"[1,\n 2]")) == [b"[1,2]"], "a JSON list is one line, reported as not an object"
    assert list(bundle_lines(b'{"resourceType": "Bundle", "entry": [7, {"resource": null}]}')) == [b"7", b""]
    assert list(bundle_lines(b'{"resourceType": "Bundle", "type": "searchset", "total": 0}')) == []


def test_a_broken_json_file_is_reported_where_it_is_and_the_run_goes_on(bundle_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(bundle_folder.glob("*.json"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.json").write_bytes(b'{"resourceType": "Bundle", "entry": [')
    summary = run(folder, tmp_path / "out")
    assert summary.counts["problems"] == {"malformed": 1}
    outcome = read_ndjson(tmp_path / "out" / "OperationOutcome.ndjson")[0]
    assert outcome["issue"][0]["location"] == ["broken.json:1"]
    assert summary.counts["patientsEvaluated"] + summary.counts["patientsDeceased"] >= 2


def test_a_transaction_without_ids_takes_them_from_the_urns_and_odd_bytes_are_read_as_on_a_line() -> None:
    posted = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359", "resource": {"resourceType": "Patient"}},
            {
                "fullUrl": "urn:uuid:88f151c0",
                "resource": {"resourceType": "Condition", "subject": {"reference": "urn:uuid:61ebe359"}},
            },
        ],
    }
    patient, condition = (orjson.loads(line) for line in bundle_lines(orjson.dumps(posted)))
    assert patient == {"resourceType": "Patient", "id": "61ebe359"}
    assert condition["id"] == "88f151c0"
    assert condition["subject"] == {"reference": "Patient/61ebe359"}
    assert list(bundle_lines(b"\xef\xbb\xbf" + orjson.dumps(posted))) == list(bundle_lines(orjson.dumps(posted)))
    (line,) = bundle_lines(b'{"resourceType": "Patient", "id": "p", "name": [{"text": "\xff"}]}')
    assert orjson.loads(line)["name"] == [{"text": "\ufffd"}]


def test_real_synthea_bundles_run_clean_and_the_deceased_patient_gets_no_tasks(tmp_path: Path) -> None:
    folder = vendored("synthea-bundles/vger", tmp_path / "in")
    summary = run(folder, tmp_path / "out")
    counts = summary.counts
    assert (counts["patients"], counts["patientsDeceased"], counts["patientsEvaluated"]) == (1, 1, 0)
    assert counts["problems"] == {}, "claims, provenance, supply deliveries and the rest all reach the patient"
    assert counts["context"] == 9 + 10 + 9 + 9, "the companion Bundles' organisations, places and practitioners"
    assert (tmp_path / "out" / "Task.ndjson").read_bytes() == b""
    (patient_file,) = folder.glob("Laquanda*.json.gz")
    result = api.evaluate(gzip.decompress(patient_file.read_bytes()), now=NOW)
    assert "the Patient resource records a death (deceasedDateTime 2016-01-06T20:23:17+00:00)" in result["input_notes"]


def test_a_real_synthea_bundle_with_als_added_gives_the_evaluators_tasks(tmp_path: Path) -> None:
    folder = vendored("synthea-bundles/iris", tmp_path / "in")
    (patient_file,) = folder.glob("Carroll*.json.gz")
    bundle = orjson.loads(gzip.decompress(patient_file.read_bytes()))
    patient_id = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    added = als_with(patient_id, "carroll", order=1)
    (folder / "added.json").write_bytes(
        orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in added]})
    )
    summary = run(folder, tmp_path / "out")
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "out" / "Task.ndjson")}
    expected = evaluator_tasks([[bundle, *added]])
    assert expected, "tizanidine without liver tests should put this patient on the worklist"
    assert tasks == expected
    counts = summary.counts
    assert (counts["patients"], counts["patientsInScope"], counts["problems"]) == (1, 1, {})
    assert counts["context"] == 18 + 18 + 2 + 2, "the companion Bundles, and the patient Bundle's own two of each"


def test_a_deeply_nested_entry_or_a_broken_gzip_never_crashes_a_run(tmp_path: Path) -> None:
    deep: Any = "bottom"
    for _ in range(300):  # deeper than orjson writes (254), shallower than it reads (1024)
        deep = {"valueString": deep} if isinstance(deep, str) else {"extension": [deep]}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1"}},
            {
                "fullUrl": "urn:uuid:o1",
                "resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "urn:uuid:p1"}} | deep,
            },
        ],
    }
    lines = list(bundle_lines(json.dumps(bundle).encode()))
    assert orjson.loads(lines[1].replace(b"urn:uuid:p1", b"x"))["resourceType"] == "Observation"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "deep.json").write_text(json.dumps(bundle))
    summary = run(folder, tmp_path / "out", workers=2)
    assert (summary.counts["patients"], summary.counts["problems"]) == (1, {})
    (folder / "broken.json.gz").write_bytes(gzip.compress(b'{"resourceType": "Bundle"}')[:-9])
    again = run(folder, tmp_path / "again")  # reported and read past: the input is incomplete
    (broken,) = [entry for entry in again.manifest["input"]["files"] if entry["url"] == "broken.json.gz"]
    assert "cannot read the file" in broken["unreadable"] and again.manifest["input"]["complete"] is False
    assert (again.counts["patients"], again.counts["problems"]) == (1, {"unreadable-file": 1})


def test_ndjson_of_whole_bundles_reads_as_the_bulk_export_of_the_same_patients(
    clean_cohort: Path, tmp_path: Path
) -> None:
    from spasticity_cds.synth import write_cohort

    from .batch_helpers import CLEAN_PROBLEMS, SEED, N, run

    source = tmp_path / "bundles"
    write_cohort(source, n=N, profile="lean", seed=SEED, fmt="bundles")  # synth's default: one Bundle per line
    lines = run(source, tmp_path / "lines")
    bulk = run(clean_cohort, tmp_path / "bulk")
    assert lines.counts["patients"] == bulk.counts["patients"] == N
    # synth's Bundles repeat some resources, as a server's search results do (its Bulk files do not): reported.
    assert set(lines.counts["problems"]) == {"duplicate"}
    assert bulk.counts["problems"] == CLEAN_PROBLEMS
    assert (tmp_path / "lines" / "Task.ndjson").read_bytes() == (tmp_path / "bulk" / "Task.ndjson").read_bytes()
