"""The local engine end to end: same Tasks as the evaluator patient by patient, bad input reported, worker parity."""

from __future__ import annotations

import gzip
import random
import re
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from spasticity_cds.batch.inputs import TAIL_STEP, unterminated_last_line
from spasticity_cds.errors import BatchError
from spasticity_cds.synth import generate_patient

from .batch_helpers import (
    BAD_OBSERVATION_LINES,
    CLEAN_PROBLEMS,
    NOW,
    SEED,
    N,
    evaluator_tasks,
    line_of,
    read_ndjson,
    reported,
    run,
)


def test_batch_equals_the_evaluator_patient_by_patient(clean_cohort: Path, tmp_path: Path) -> None:
    summary = run(clean_cohort, tmp_path / "run")
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "run" / "Task.ndjson")}
    expected = evaluator_tasks(generate_patient(SEED, index, "lean") for index in range(N))
    assert expected, "the cohort should produce some actionable findings"
    assert tasks == expected
    counts = summary.counts
    assert counts["patients"] == counts["patientsEvaluated"] == N
    assert counts["tasks"]["new"] == counts["tasks"]["open"] == len(expected)
    assert counts["problems"] == CLEAN_PROBLEMS


def test_two_workers_write_the_same_bytes_as_one(bad_cohort: Path, tmp_path: Path) -> None:
    one = run(bad_cohort, tmp_path / "one")
    two = run(bad_cohort, tmp_path / "two", workers=2, block_bytes=4096)  # many ranges, blocks and partitions
    for name in ("Task.ndjson", "open.ndjson", "OperationOutcome.ndjson", "worklist.csv", "rule_counts.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert one.manifest["input"] == two.manifest["input"]
    assert one.counts == two.counts


def test_crlf_line_ends_give_the_same_run(bad_cohort: Path, tmp_path: Path) -> None:
    crlf = tmp_path / "crlf"
    crlf.mkdir()
    for source in bad_cohort.iterdir():
        (crlf / source.name).write_bytes(source.read_bytes().replace(b"\n", b"\r\n"))
    lf = run(bad_cohort, tmp_path / "lf")
    other = run(crlf, tmp_path / "other", block_bytes=4096)
    for name in ("Task.ndjson", "OperationOutcome.ndjson", "rule_counts.json"):
        assert (tmp_path / "lf" / name).read_bytes() == (tmp_path / "other" / name).read_bytes(), name
    assert lf.counts == other.counts


#: Vignettes whose records hold results that tie (Modified Ashworth scores of one day, equal in value).
TIED_VIGNETTES = ("02-baclofen-start-order-text-only", "22-itb-pump-in-place", "38-synthea-style-record")


def test_a_re_export_in_another_order_gives_the_same_task_ids_and_tasks(clean_cohort: Path, tmp_path: Path) -> None:
    vignettes = Path(__file__).parents[1] / "vignettes"
    original, reordered = tmp_path / "original", tmp_path / "reordered"
    shutil.copytree(clean_cohort, original, ignore=shutil.ignore_patterns("manifest.json"))
    reordered.mkdir()
    for name in TIED_VIGNETTES:
        shutil.copy(vignettes / name / "bundle.json", original / f"{name}.json")
    for path in sorted(original.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        random.Random(path.name).shuffle(bundle["entry"])
        (reordered / path.name).write_bytes(orjson.dumps(bundle))
    for path in sorted(original.glob("*.ndjson")):
        lines = path.read_bytes().splitlines()
        random.Random(path.name).shuffle(lines)
        (reordered / path.name).write_bytes(b"".join(line + b"\n" for line in lines))
    run(original, tmp_path / "a")
    run(reordered, tmp_path / "b")
    tasks = (tmp_path / "a" / "Task.ndjson").read_bytes()
    assert b"ITB-REFERRAL" in tasks
    assert tasks == (tmp_path / "b" / "Task.ndjson").read_bytes()


def test_bad_input_is_counted_and_located_and_never_stops_the_run(bad_cohort: Path, tmp_path: Path) -> None:
    summary = run(bad_cohort, tmp_path / "run")
    observations = bad_cohort / "Observation.ndjson"
    outcomes = read_ndjson(tmp_path / "run" / "OperationOutcome.ndjson")
    by_location = {o["issue"][0]["location"][0]: o["issue"][0] for o in outcomes}

    def issue(marker: bytes) -> dict[str, Any]:
        issue: dict[str, Any] = by_location[f"Observation.ndjson:{line_of(observations, marker)}"]
        return issue

    assert issue(b"not json at all")["code"] == "structure"
    assert "not valid JSON" in issue(b"not json at all")["diagnostics"]
    assert issue(b"[1, 2, 3]")["diagnostics"].endswith("not a JSON object")
    assert issue(b'"no-type"')["code"] == "structure"
    assert issue(b"unknown-1")["code"] == "not-supported"
    assert "'Foo'" in issue(b"unknown-1")["diagnostics"]
    assert issue(b"orphan-1")["code"] == "processing"
    bad_utf8 = issue(b"bad-utf8")  # still read: its patient is among those evaluated below
    column = next(line for line in BAD_OBSERVATION_LINES if b"bad-utf8" in line).index(b"\xff") + 1
    assert (bad_utf8["severity"], bad_utf8["code"]) == ("warning", "structure")
    assert bad_utf8["diagnostics"].endswith(
        f": not valid UTF-8 (byte 0xff at column {column}); the line is read with U+FFFD in place of the bad bytes"
    )
    assert by_location["Medication.ndjson:2"]["code"] == "processing"
    ghost = [o["issue"][0] for o in outcomes if o["issue"][0]["location"][0].startswith("Patient/ghost")]
    assert len(ghost) == 1
    assert ghost[0]["location"][0] == f"Patient/ghost (Observation.ndjson:{line_of(observations, b'ghost-1')})"
    assert "no Patient resource" in ghost[0]["diagnostics"]
    counts = summary.counts
    assert counts["problems"] == {
        **CLEAN_PROBLEMS,
        "invalid-utf8": 1,
        "malformed": 3,
        "no-patient": 2,
        "patient-input": 1,
        "unknown-type": 1,
    }
    assert counts["patients"] == N + 1
    assert counts["patientsEvaluated"] == N
    assert counts["patientsFailed"] == 1
    assert counts["blankLines"] == 1
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["error"] == [{"type": "OperationOutcome", "url": "OperationOutcome.ndjson", "count": len(outcomes)}]


def test_lines_with_invalid_utf8_are_read_counted_and_located_up_to_the_cap(
    invalid_utf8_export: Path, tmp_path: Path
) -> None:
    from spasticity_cds.batch import problems
    from spasticity_cds.batch.inputs import discover
    from spasticity_cds.batch.local import grouped

    summary = run(invalid_utf8_export, tmp_path / "run", block_bytes=4096)  # the bad lines span several blocks
    outcomes = [o["issue"][0] for o in read_ndjson(tmp_path / "run" / "OperationOutcome.ndjson")]
    flagged = [o for o in outcomes if o["details"]["coding"][0]["code"] == "invalid-utf8"]
    assert [o["location"][0] for o in flagged] == [
        "Bundles.ndjson:1",
        *(f"Observation.ndjson:{number}" for number in range(2, problems.DETAIL_CAP + 2)),
        "Patient.ndjson:1",
        "Observation.ndjson",  # the lines past the cap, summed up
    ]
    assert flagged[-1]["diagnostics"] == "Observation.ndjson: 2 more lines of this kind not listed one by one"
    read_anyway = "the line is read with U+FFFD in place of the bad bytes"
    assert flagged[-2]["diagnostics"] == f"Patient.ndjson:1: not valid UTF-8 (byte 0xe9 at column 81); {read_anyway}"
    assert all(o["severity"] == "warning" for o in flagged) and len(flagged) == len(outcomes)
    counts = summary.counts
    assert counts["problems"] == {"invalid-utf8": problems.DETAIL_CAP + 4}
    lines = problems.DETAIL_CAP + 2 + 1 + 2 + 2  # Observation, the one valid Observation, Patient, Bundle entries
    assert counts["lines"] == counts["resources"] == lines  # a flagged line is still one line, and read
    assert counts["patientsEvaluated"] == counts["patients"] == 3
    files = {entry["url"]: entry for entry in summary.manifest["input"]["files"]}
    assert files["Observation.ndjson"]["problems"] == {"invalid-utf8": problems.DETAIL_CAP + 2}
    assert files["Observation.ndjson"]["lines"] == problems.DETAIL_CAP + 3
    (tmp_path / "spill").mkdir()
    groups = dict(grouped(discover(invalid_utf8_export).files, tmp_path / "spill", block_bytes=4096))
    assert {key: len(found) for key, found in groups.items()} == {
        "Patient/p1": problems.DETAIL_CAP + 4,
        "Patient/p2": 1,
        "Patient/p3": 2,
    }


def test_shared_medication_reaches_the_patient_that_references_it(bad_cohort: Path, tmp_path: Path) -> None:
    from spasticity_cds.batch.inputs import discover
    from spasticity_cds.batch.local import grouped

    inputs = discover(bad_cohort)
    (tmp_path / "spill").mkdir()
    groups = dict(grouped(inputs.files, tmp_path / "spill", block_bytes=4096))
    names = [inputs.files[line[0]].name for line in groups["Patient/p-3-2"]]
    assert names.count("Medication.ndjson") == 1
    assert all("Medication.ndjson" not in [inputs.files[line[0]].name for line in lines]
               for key, lines in groups.items() if key != "Patient/p-3-2")  # fmt: skip


def test_manifest_input_with_gzip_files_gives_the_same_tasks(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "files").mkdir(parents=True)
    manifest = orjson.loads((clean_cohort / "manifest.json").read_bytes())
    for entry in manifest["output"]:
        source = clean_cohort / entry["url"]
        (export / "files" / f"{entry['url']}.gz").write_bytes(gzip.compress(source.read_bytes()))
        entry["url"] = f"files/{entry['url']}.gz"
    (export / "manifest.json").write_bytes(orjson.dumps(manifest))
    run(clean_cohort, tmp_path / "plain")
    summary = run(export / "manifest.json", tmp_path / "gz")
    assert (tmp_path / "gz" / "Task.ndjson").read_bytes() == (tmp_path / "plain" / "Task.ndjson").read_bytes()
    assert summary.manifest["transactionTime"] == manifest["transactionTime"]
    assert summary.manifest["input"]["kind"] == "manifest"
    assert all(f["url"].startswith("files/") for f in summary.manifest["input"]["files"])


def test_a_percent_encoded_relative_manifest_url_names_its_file(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export / "sub dir")
    manifest = orjson.loads((clean_cohort / "manifest.json").read_bytes())
    for entry in manifest["output"]:
        entry["url"] = f"sub%20dir/{entry['url']}"
    (export / "manifest.json").write_bytes(orjson.dumps(manifest))
    run(export / "manifest.json", tmp_path / "run")
    run(clean_cohort, tmp_path / "plain")
    assert (tmp_path / "run" / "Task.ndjson").read_bytes() == (tmp_path / "plain" / "Task.ndjson").read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"output": [{"url": "http://127.0.0.1:9/x.ndjson"}]}', "download of http://127.0.0.1:9/x.ndjson failed"),
        (b'{"output": [{"url": "missing.ndjson"}]}', "is missing"),
        (b'{"output": []}', "lists no output files"),
        (b'{"request": "https://ehr/fhir/$export?_since=2026-11-01T00:00:00Z", "output": []}', "incremental export"),
        (b'{"output": [], "deleted": [{"type": "Bundle", "url": "d.ndjson"}]}', "incremental export"),
    ],
)
def test_an_unusable_manifest_is_a_batch_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(BatchError, match=message):
        run(tmp_path / "manifest.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_incremental_export_folder_is_refused_too(clean_cohort: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(clean_cohort, folder)
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    manifest["request"] = "https://ehr.example.org/fhir/$export?_since=2026-11-01T00:00:00Z"
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(BatchError, match="incremental export"):
        run(folder, tmp_path / "out")


def test_an_empty_folder_or_a_foreign_output_folder_is_a_batch_error(clean_cohort: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match=r"no \.ndjson"):
        run(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BatchError, match="not empty"):
        run(clean_cohort, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_byte_order_mark_at_the_start_of_a_file_is_dropped(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    for name in ("Patient.ndjson", "Condition.ndjson"):
        (export / name).write_bytes(b"\xef\xbb\xbf" + (export / name).read_bytes())
    summary = run(export, tmp_path / "bom")
    run(clean_cohort, tmp_path / "plain")
    assert (tmp_path / "bom" / "Task.ndjson").read_bytes() == (tmp_path / "plain" / "Task.ndjson").read_bytes()
    assert summary.counts["problems"] == CLEAN_PROBLEMS


def test_a_number_beyond_a_double_is_an_unreadable_value_not_a_lost_patient(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    lines = (export / "Observation.ndjson").read_bytes().splitlines(keepends=True)
    for index, line in enumerate(lines):  # every value of one patient, so that the newest ones are read
        if b'"Patient/p-3-0"' in line:
            lines[index] = re.sub(rb'("valueQuantity":\{"value":)[-0-9.]+', rb"\g<1>1e999", line)
    (export / "Observation.ndjson").write_bytes(b"".join(lines))
    summary = run(export, tmp_path / "run")
    assert summary.counts["problems"] == CLEAN_PROBLEMS
    assert summary.counts["patientsEvaluated"] == N
    assert summary.counts["resources"] == run(clean_cohort, tmp_path / "plain").counts["resources"]


def test_an_export_folder_or_the_input_itself_is_never_an_output_folder(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)  # a Bulk Data export: its manifest.json does not make it a batch run
    before = sorted((path.name, path.read_bytes()) for path in export.iterdir())
    with pytest.raises(BatchError, match="not empty"):
        run(clean_cohort, export)
    with pytest.raises(BatchError, match="not empty"):
        run(export, export)
    run(export, tmp_path / "run")
    for name in ("Patient.ndjson", "manifest.json"):  # a finished run that also holds the input
        shutil.copy(export / name, tmp_path / "run" / name)
    with pytest.raises(BatchError, match="inside the output folder"):
        run(tmp_path / "run", tmp_path / "run")
    assert sorted((path.name, path.read_bytes()) for path in export.iterdir()) == before
    assert (tmp_path / "run" / "Patient.ndjson").read_bytes() == (export / "Patient.ndjson").read_bytes()


def test_a_rerun_replaces_a_previous_output_whole(clean_cohort: Path, tmp_path: Path) -> None:
    run(clean_cohort, tmp_path / "run")
    first = (tmp_path / "run" / "Task.ndjson").read_bytes()
    run(clean_cohort, tmp_path / "run")
    assert (tmp_path / "run" / "Task.ndjson").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert not (tmp_path / "run" / "_work").exists()


def test_rule_counts_add_up(clean_cohort: Path, tmp_path: Path) -> None:
    summary = run(clean_cohort, tmp_path / "run")
    counts = orjson.loads((tmp_path / "run" / "rule_counts.json").read_bytes())
    assert counts["patients"]["evaluated"] == N
    assert sum(rule["actionable"] for rule in counts["rules"].values()) == summary.counts["tasks"]["open"]
    assert sum(kind["actionable"] for kind in counts["kinds"].values()) == summary.counts["tasks"]["open"]
    assert counts["knowledgeBase"] == summary.manifest["knowledgeBase"]


def test_copy_of_folder_without_manifest_uses_now_as_transaction_time(clean_cohort: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(clean_cohort, folder)
    (folder / "manifest.json").unlink()
    summary = run(folder, tmp_path / "out")
    assert summary.manifest["transactionTime"] == NOW.isoformat()
    assert summary.manifest["evaluatedAt"] == "2026-11-01T09:30:00-05:00"


def test_every_folder_entry_that_is_not_read_is_listed_with_its_reason(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    (export / "Condition.ndjson").rename(export / "Condition.NDJSON")
    (export / "Procedure.ndjson").rename(export / "Procedure.jsonl")
    (export / "sub").mkdir()
    (export / "notes.txt").write_text("not FHIR", encoding="utf-8")
    summary = run(export, tmp_path / "run")
    skipped = {entry["url"]: entry["reason"] for entry in summary.manifest["input"]["skipped"]}
    assert set(skipped) == {"Condition.NDJSON", "notes.txt", "sub"}
    assert "not an NDJSON" in skipped["Condition.NDJSON"] and "subfolders" in skipped["sub"]
    assert "Procedure.jsonl" in [entry["url"] for entry in summary.manifest["input"]["files"]]


def test_a_lone_cr_inside_a_line_is_json_whitespace_and_line_numbers_hold(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "Patient.ndjson").write_bytes(
        b'{"resourceType":"Patient",\r"id":"a"}\n{"resourceType":"Patient","id":"b"}\r\nGARBAGE\n'
    )
    summary = run(export, tmp_path / "run")
    (entry,) = summary.manifest["input"]["files"]
    assert (entry["lines"], entry["resources"], entry["problems"]) == (3, 2, {"malformed": 1})
    (outcome,) = read_ndjson(tmp_path / "run" / "OperationOutcome.ndjson")
    assert outcome["issue"][0]["location"] == ["Patient.ndjson:3"]


def test_a_file_cut_mid_line_or_short_of_its_count_makes_the_input_incomplete(
    clean_cohort: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    run(clean_cohort, first)
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    observations = (export / "Observation.ndjson").read_bytes()
    (export / "Observation.ndjson").write_bytes(observations[:-20])  # cut inside its last line
    conditions = (export / "Condition.ndjson").read_bytes().splitlines(keepends=True)
    (export / "Condition.ndjson").write_bytes(b"".join(conditions[:-2]))  # whole lines, two short of its count
    patients = export / "Patient.ndjson"
    patients.write_bytes(patients.read_bytes().removesuffix(b"\n"))  # a whole last line without its line end
    summary = run(export / "manifest.json", tmp_path / "run", since=first)
    files = {entry["url"]: entry for entry in summary.manifest["input"]["files"]}
    assert "cut mid-line" in files["Observation.ndjson"]["incomplete"]
    assert files["Condition.ndjson"]["incomplete"] == (
        f"the manifest counts {len(conditions):,} resources in it, {len(conditions) - 2:,} lines were read"
    )
    assert "incomplete" not in files["Patient.ndjson"]
    assert summary.manifest["input"]["complete"] is False
    assert summary.counts["tasks"]["closed"] == summary.counts["tasks"]["new"] == 0
    incomplete = reported(tmp_path / "run", "incomplete-export")
    assert sorted(incomplete) == ["Condition.ndjson", "Observation.ndjson"]
    assert "the file holds less than the export wrote: the manifest counts" in incomplete["Condition.ndjson"]


def test_a_folder_is_checked_against_its_manifest_counts_and_files(clean_cohort: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(clean_cohort, first)
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    conditions = (export / "Condition.ndjson").read_bytes().splitlines(keepends=True)
    (export / "Condition.ndjson").write_bytes(b"".join(conditions[:-1]))  # whole lines, one short of its count
    (export / "Procedure.ndjson").unlink()  # listed by the manifest, not copied
    summary = run(export, tmp_path / "run", since=first)  # the folder, not its manifest
    files = {entry["url"]: entry for entry in summary.manifest["input"]["files"]}
    assert "the manifest counts" in files["Condition.ndjson"]["incomplete"]
    assert summary.manifest["input"]["missing"] == ["Procedure.ndjson"]
    assert summary.manifest["input"]["complete"] is False
    assert summary.counts["tasks"]["closed"] == summary.counts["tasks"]["new"] == 0
    incomplete = reported(tmp_path / "run", "incomplete-export")
    assert sorted(incomplete) == ["Condition.ndjson", "Procedure.ndjson"]
    assert "the input folder does not hold" in incomplete["Procedure.ndjson"]


def test_a_folder_without_a_manifest_has_nothing_missing(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    (export / "manifest.json").unlink()
    (export / "Procedure.ndjson").unlink()
    summary = run(export, tmp_path / "run")
    assert summary.manifest["input"]["missing"] == [] and summary.manifest["input"]["complete"] is True


@pytest.mark.parametrize(
    ("content", "last"),
    [
        (b"", None),
        (b"a\n", None),
        (b"a\nbc", b"bc"),
        (b"z" * (TAIL_STEP * 2 + 3), b"z" * (TAIL_STEP * 2 + 3)),
        (b"a\n" + b"y" * (TAIL_STEP + 5), b"y" * (TAIL_STEP + 5)),
        (b"a\n" + b"y" * (TAIL_STEP - 2), b"y" * (TAIL_STEP - 2)),
    ],
)
def test_the_last_line_without_a_line_end_is_read_from_the_end(
    tmp_path: Path, content: bytes, last: bytes | None
) -> None:
    (tmp_path / "f.ndjson").write_bytes(content)
    assert unterminated_last_line(tmp_path / "f.ndjson") == last


@pytest.mark.parametrize("block_bytes", [4096, 32 * 1024 * 1024])
def test_a_truncated_gzip_keeps_every_whole_line_read_before_it_breaks_off(
    clean_cohort: Path, tmp_path: Path, block_bytes: int
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(clean_cohort / "Patient.ndjson", export)
    whole = gzip.compress((clean_cohort / "Observation.ndjson").read_bytes())
    cut = whole[: len(whole) * 3 // 4]
    (export / "Observation.ndjson.gz").write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)  # all that the cut stream still gives
    whole_lines = readable.count(b"\n")
    assert whole_lines > 0
    summary = run(export, tmp_path / "run", block_bytes=block_bytes)
    entry = {entry["url"]: entry for entry in summary.manifest["input"]["files"]}["Observation.ndjson.gz"]
    assert (entry["lines"], entry["resources"]) == (whole_lines, whole_lines)
    assert entry["unreadable"].endswith(f"(after line {whole_lines:,})")


def test_a_file_that_cannot_be_read_to_its_end_is_reported_and_the_rest_is_run(
    clean_cohort: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    (export / "manifest.json").unlink()
    whole = gzip.compress((export / "Observation.ndjson").read_bytes())
    (export / "Observation.ndjson").unlink()
    (export / "Observation.ndjson.gz").write_bytes(whole[: len(whole) // 2])  # cut short, as by a failed copy
    (export / "Fake.ndjson.gz").write_bytes(b'{"resourceType": "Patient", "id": "plain-text"}\n')
    summary = run(export, tmp_path / "run")
    files = {entry["url"]: entry for entry in summary.manifest["input"]["files"]}
    assert "Compressed file ended" in files["Observation.ndjson.gz"]["unreadable"]
    assert "unreadable" in files["Fake.ndjson.gz"] and "unreadable" not in files["Patient.ndjson"]
    assert summary.manifest["input"]["complete"] is False
    assert summary.counts["problems"]["unreadable-file"] == 2
    assert summary.counts["patientsEvaluated"] == N
    assert set(reported(tmp_path / "run", "unreadable-file")) == {"Observation.ndjson.gz", "Fake.ndjson.gz"}


def test_duplicates_odd_links_and_id_less_patients_are_reported_and_counted(
    odd_links_export: Path, tmp_path: Path
) -> None:
    summary = run(odd_links_export, tmp_path / "run")
    assert summary.counts["problems"] == {"duplicate": 1, "conditional-reference": 1, "no-patient": 1}
    issues = {
        o["issue"][0]["details"]["coding"][0]["code"]: o["issue"][0]
        for o in read_ndjson(tmp_path / "run" / "OperationOutcome.ndjson")
    }
    duplicate = issues["duplicate"]
    assert (duplicate["severity"], duplicate["code"]) == ("warning", "duplicate")
    assert duplicate["location"] == ["Patient/d1 (Condition.ndjson:1)"]
    assert "2 duplicate resources collapsed" in duplicate["diagnostics"]
    assert "Condition/c1 at Condition.ndjson:1, More.ndjson:1;" in duplicate["diagnostics"]
    assert "Patient/d1 at Patient.ndjson:1, Patient.ndjson:2 (copies differ)" in duplicate["diagnostics"]
    assert issues["conditional-reference"]["location"] == ["Condition.ndjson:4"]
    assert (
        "conditional reference (Patient?identifier=...) that finds no" in issues["conditional-reference"]["diagnostics"]
    )
    assert issues["no-patient"]["location"] == ["Patient.ndjson:3"]
    assert "Patient has no id" in issues["no-patient"]["diagnostics"]
    assert summary.counts["resources"] == 6  # c2 and c3, linked by urn:uuid:d1 and d1's identifier, are d1's


def _urn(match: re.Match[bytes]) -> bytes:
    return b'"urn:uuid:p-3-' + match.group(1) + b'"'


def _conditional(match: re.Match[bytes]) -> bytes:
    mrn = b"SYN3-%07d" % int(match.group(1))  # the medical record number synth gives patient p-3-N
    return b'"https://ehr.example/fhir/Patient?identifier=http://synth.spasticity-cds.org/fhir/mrn%7C' + mrn + b'"'


@pytest.mark.parametrize("link", [_urn, _conditional], ids=["urn-uuid", "conditional"])
@pytest.mark.parametrize("workers", [1, 2])
def test_patient_links_by_urn_uuid_or_identifier_reach_their_patient(
    clean_cohort: Path, tmp_path: Path, link: Callable[[re.Match[bytes]], bytes], workers: int
) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export, ignore=shutil.ignore_patterns("manifest.json"))
    for path in export.glob("*.ndjson"):
        if path.name != "Patient.ndjson":
            path.write_bytes(re.sub(rb'"Patient/p-3-(\d+)"', link, path.read_bytes()))
    assert b'"Patient/' not in (export / "Condition.ndjson").read_bytes()
    summary = run(export, tmp_path / "linked", workers=workers)
    run(clean_cohort, tmp_path / "relative")
    assert summary.counts["problems"] == CLEAN_PROBLEMS
    assert (tmp_path / "linked" / "Task.ndjson").read_bytes() == (tmp_path / "relative" / "Task.ndjson").read_bytes()
