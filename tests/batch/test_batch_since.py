"""Idempotent reruns: stable Task ids, ``--since`` writes only new items and closes those that no longer fire."""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from spasticity_cds.batch import cli
from spasticity_cds.batch.tasks import LABEL_LIMIT
from spasticity_cds.errors import BatchError
from spasticity_cds.synth import write_cohort

from .batch_helpers import NOW, read_ndjson, run


def _patients_with_tasks(run_dir: Path) -> list[str]:
    seen: dict[str, None] = {}
    for task in read_ndjson(run_dir / "Task.ndjson"):
        seen[task["for"]["reference"]] = None
    return list(seen)


def _rewrite(folder: Path, keep: Callable[[str, bytes], bool]) -> None:
    """A later export: the lines ``keep`` keeps, and a manifest that counts them (one that counted the old lines
    would make the input incomplete)."""
    kept: dict[str, int] = {}
    for path in folder.glob("*.ndjson"):
        lines = [line for line in path.read_bytes().splitlines() if keep(path.name, line)]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        kept[path.name] = len(lines)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        document = orjson.loads(manifest.read_bytes())
        for entry in document.get("output", []):
            entry["count"] = kept.get(entry["url"].rsplit("/", 1)[-1], entry.get("count"))
        manifest.write_bytes(orjson.dumps(document))


def test_since_writes_new_items_closes_gone_ones_and_carries_failed_patients(
    clean_cohort: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    run(clean_cohort, first)
    first_open = {task["id"]: task for task in read_ndjson(first / "open.ndjson")}
    assert set(first_open) == {task["id"] for task in read_ndjson(first / "Task.ndjson")}
    focused = [t["for"]["reference"] for t in first_open.values() if "focus" in t]
    assert focused, "the cohort should have a Task about a MedicationRequest"
    changed = focused[0]
    gone, broken = [patient for patient in _patients_with_tasks(first) if patient != changed][:2]

    changed_export = tmp_path / "export"
    shutil.copytree(clean_cohort, changed_export)
    gone_ref, changed_ref = (f'"{ref}"'.encode() for ref in (gone, changed))
    broken_id = broken.removeprefix("Patient/").encode()

    def keep(name: str, line: bytes) -> bool:
        if gone_ref in line or (name == "Patient.ndjson" and f'"id":"{gone[8:]}"'.encode() in line):
            return False
        if name == "Patient.ndjson" and b'"id":"' + broken_id + b'"' in line:
            return False
        return not (name == "MedicationRequest.ndjson" and changed_ref in line)

    _rewrite(changed_export, keep)
    second = tmp_path / "second"
    summary = run(changed_export, second, since=first)

    new = {task["id"]: task for task in read_ndjson(second / "Task.ndjson")}
    closed = {task["id"]: task for task in read_ndjson(second / "closed.ndjson")}
    second_open = {task["id"]: task for task in read_ndjson(second / "open.ndjson")}
    assert not set(new) & set(first_open)
    assert set(new) <= set(second_open)
    assert set(closed) <= set(first_open)
    assert not set(closed) & set(second_open)
    assert set(first_open) <= set(closed) | set(second_open)

    for task in first_open.values():
        patient = task["for"]["reference"]
        if patient == gone:
            assert closed[task["id"]]["status"] == "cancelled"
            assert closed[task["id"]]["statusReason"]["text"] == "the patient is not in this run's input"
        elif patient == broken:
            assert second_open[task["id"]] == task, "a patient that could not be evaluated keeps its open items"
    changed_closed = [t for t in closed.values() if t["for"]["reference"] == changed]
    assert changed_closed, "removing the patient's orders should close at least one item"
    assert {t["status"] for t in changed_closed} <= {"completed", "cancelled"}
    assert all(t["lastModified"] == summary.manifest["evaluatedAt"] for t in closed.values())
    tasks = summary.counts["tasks"]
    assert tasks == {
        "new": len(new),
        "open": len(second_open),
        "closed": len(closed),
        "carried": tasks["carried"],
        "withheld": 0,
    }
    assert tasks["carried"] == sum(1 for t in first_open.values() if t["for"]["reference"] == broken)
    assert summary.manifest["since"] == {"run": str(first.absolute())}
    rows = list(csv.DictReader((second / "worklist.csv").read_text(encoding="utf-8").splitlines()))
    assert {row["task"] for row in rows} == set(second_open), "every open item is on the worklist, carried ones too"
    carried = [row for row in rows if row["patient"] == broken.removeprefix("Patient/")]
    assert carried and all(row["new"] == "no" and row["rule"] and row["severity"] for row in carried)
    assert f"{len(second_open):,} open items" in (second / "worklist.html").read_text(encoding="utf-8")

    third = tmp_path / "third"
    again = run(changed_export, third, since=second)
    assert (third / "Task.ndjson").read_bytes() == b""
    assert (third / "closed.ndjson").read_bytes() == b""
    assert {task["id"] for task in read_ndjson(third / "open.ndjson")} == set(second_open)
    assert again.counts["tasks"]["new"] == again.counts["tasks"]["closed"] == 0


def test_a_day_later_unchanged_input_keeps_every_item(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    write_cohort(cohort, n=60, profile="typical", seed=5, fmt="bulk")
    first = tmp_path / "first"
    run(cohort, first)
    counted = [
        task for task in read_ndjson(first / "open.ndjson")
        if any(item.get("valueQuantity", {}).get("unit") == "days" for item in task["input"])
    ]  # fmt: skip
    assert counted, "the cohort should have an item that counts days (days on dantrolene, since a liver test)"
    later = run(cohort, tmp_path / "later", since=first, now=NOW + timedelta(days=1))
    assert later.counts["tasks"]["new"] == later.counts["tasks"]["closed"] == 0
    assert (tmp_path / "later" / "Task.ndjson").read_bytes() == b""
    raised = {task["id"]: task["authoredOn"] for task in read_ndjson(first / "open.ndjson")}
    assert set(raised.values()) == {NOW.isoformat()}
    kept = {task["id"]: task["authoredOn"] for task in read_ndjson(tmp_path / "later" / "open.ndjson")}
    assert kept == raised, "an item open before keeps the time it was first raised"


@pytest.mark.parametrize("days", [7, 30])
def test_weeks_later_no_item_is_closed_and_reopened_unchanged(tmp_path: Path, days: int) -> None:
    """Results age past their validity as time passes; an item whose finding reads the same stays the same item."""
    cohort = tmp_path / "cohort"
    write_cohort(cohort, n=200, profile="typical", seed=7, fmt="bulk")
    first = tmp_path / "first"
    run(cohort, first)
    later = tmp_path / "later"
    run(cohort, later, since=first, now=NOW + timedelta(days=days))

    def same_item(task: dict[str, Any]) -> tuple[str, str, str]:
        return task["for"]["reference"], task["reasonCode"]["text"], task["description"]

    reopened = {same_item(task) for task in read_ndjson(later / "Task.ndjson")} & {
        same_item(task) for task in read_ndjson(later / "closed.ndjson")
    }
    assert not reopened


def test_an_interrupted_comparison_is_an_interrupt(
    clean_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spasticity_cds.batch import output

    first = tmp_path / "first"
    run(clean_cohort, first)

    def interrupted(*args: object, **options: object) -> dict[str, int]:
        raise RuntimeError("Query interrupted")

    monkeypatch.setattr(output, "_finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(clean_cohort, tmp_path / "second", since=first)
    assert not (tmp_path / "second").exists()


def test_a_patient_recorded_as_deceased_gets_no_tasks_and_the_open_ones_are_cancelled(
    clean_cohort: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    run(clean_cohort, first)
    patient = _patients_with_tasks(first)[0]
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    patient_file = export / "Patient.ndjson"
    marker = f'"id":"{patient.removeprefix("Patient/")}"'.encode()
    patient_file.write_bytes(
        b"".join(
            line.replace(b"{", b'{"deceasedDateTime":"2026-10-20",', 1) + b"\n" if marker in line else line + b"\n"
            for line in patient_file.read_bytes().splitlines()
        )
    )
    second = tmp_path / "second"
    summary = run(export, second, since=first)
    assert summary.counts["patientsDeceased"] == 1
    assert patient not in _patients_with_tasks(second)
    assert all(task["for"]["reference"] != patient for task in read_ndjson(second / "open.ndjson"))
    closed = [task for task in read_ndjson(second / "closed.ndjson") if task["for"]["reference"] == patient]
    assert closed
    assert {(t["status"], t["statusReason"]["text"]) for t in closed} == {
        ("cancelled", "the patient is recorded as deceased")
    }
    assert summary.counts["tasks"]["closed"] == len(closed)


def test_worklist_marks_every_row_new_on_a_first_run_and_only_new_ones_with_since(
    clean_cohort: Path, tmp_path: Path
) -> None:
    run(clean_cohort, tmp_path / "a")
    first = list(csv.DictReader((tmp_path / "a" / "worklist.csv").read_text(encoding="utf-8").splitlines()))
    assert first and all(row["new"] == "yes" for row in first)
    assert "<td>yes</td>" in (tmp_path / "a" / "worklist.html").read_text(encoding="utf-8")
    run(clean_cohort, tmp_path / "b", since=tmp_path / "a")
    body = (tmp_path / "b" / "worklist.csv").read_text().splitlines()[1:]
    assert body
    assert all(",no," in row for row in body)


def test_since_needs_a_finished_run(clean_cohort: Path, tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(BatchError, match="not a finished batch run"):
        run(clean_cohort, tmp_path / "out", since=tmp_path / "half")


def test_a_memory_limit_duckdb_cannot_read_stops_the_run_before_it_starts(clean_cohort: Path, tmp_path: Path) -> None:
    run(clean_cohort, tmp_path / "first")
    with pytest.raises(BatchError, match="--memory-limit 'banana'"):
        run(clean_cohort, tmp_path / "second", since=tmp_path / "first", memory_limit="banana")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first"]


def test_a_name_of_megabytes_is_cut_and_the_next_run_still_compares(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    patients = read_ndjson(export / "Patient.ndjson")
    patients[0]["name"] = [{"family": "x" * (17 * 1024 * 1024)}]
    (export / "Patient.ndjson").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    run(export, tmp_path / "first")
    summary = run(export, tmp_path / "second", since=tmp_path / "first")
    assert summary.counts["tasks"]["new"] == 0
    names = {task["for"].get("display", "") for task in read_ndjson(tmp_path / "first" / "open.ndjson")}
    assert max(len(name) for name in names) == LABEL_LIMIT


def test_since_its_own_output_after_a_crash_between_the_two_renames(clean_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(clean_cohort, out)
    before = (out / "open.ndjson").read_bytes()
    out.rename(tmp_path / ".out.old-999999999")  # a run killed after moving the previous output aside
    summary = run(clean_cohort, out, since=out)
    assert summary.counts["tasks"]["new"] == summary.counts["tasks"]["closed"] == 0
    assert (out / "open.ndjson").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_since_a_run_caught_between_its_two_renames_is_restored_and_read(clean_cohort: Path, tmp_path: Path) -> None:
    previous = tmp_path / "previous"
    run(clean_cohort, previous)
    previous.rename(tmp_path / ".previous.old-999999999")
    summary = run(clean_cohort, tmp_path / "next", since=previous)
    assert summary.counts["tasks"]["new"] == 0 and (previous / "open.ndjson").is_file()


def _export_without(cohort: Path, folder: Path, resource_type: str) -> Path:
    """The cohort as an export whose server failed to export one resource type, and says so in ``error[]``."""
    shutil.copytree(cohort, folder)
    (folder / f"{resource_type}.ndjson").unlink()
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    manifest["output"] = [entry for entry in manifest["output"] if entry["type"] != resource_type]
    failure = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception",
               "diagnostics": f"Export of {resource_type} failed"}]}  # fmt: skip
    (folder / "errors.ndjson").write_bytes(orjson.dumps(failure) + b"\n")
    manifest["error"] = [{"type": "OperationOutcome", "url": "errors.ndjson"}]
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    return folder / "manifest.json"


def test_an_export_that_reports_errors_closes_nothing_and_says_so(clean_cohort: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(clean_cohort, first)
    first_open = {task["id"] for task in read_ndjson(first / "open.ndjson")}
    export = _export_without(clean_cohort, tmp_path / "export", "MedicationRequest")
    summary = run(export, tmp_path / "second", since=first)
    assert read_ndjson(tmp_path / "second" / "closed.ndjson") == []
    assert first_open <= {task["id"] for task in read_ndjson(tmp_path / "second" / "open.ndjson")}
    assert summary.manifest["input"]["exportErrors"] == ["errors.ndjson"]
    assert summary.counts["problems"]["incomplete-export"] == 1
    (issue,) = [
        outcome["issue"][0]
        for outcome in read_ndjson(tmp_path / "second" / "OperationOutcome.ndjson")
        if outcome["issue"][0]["code"] == "incomplete"
    ]
    assert "the export reported errors (1 error files: errors.ndjson)" in issue["diagnostics"]
    assert "no item of the previous run was closed" in issue["diagnostics"]


def _batch_cli(*argv: str) -> tuple[int, str]:
    """Run ``spasticity-cds batch`` with the fixed clock; its exit status and what it printed."""
    parser = argparse.ArgumentParser(prog="spasticity-cds batch")
    cli.add_arguments(parser)
    buffer = io.StringIO()
    console = Console(file=buffer, width=400, force_terminal=False, color_system=None)
    status = cli.run(parser.parse_args([*argv, "--now", NOW.isoformat()]), console)
    return status, buffer.getvalue()


def test_an_incomplete_input_changes_no_item_even_superseded_or_deceased_ones(
    clean_cohort: Path, tmp_path: Path
) -> None:
    """Without its Observations the rules fire on other data (new keys: superseded) or not at all; one patient is
    recorded as deceased too. Nothing of it may open or close an item: the previous run's open items stay as
    they were."""
    first = tmp_path / "first"
    run(clean_cohort, first)
    first_open = (first / "open.ndjson").read_bytes()
    manifest = _export_without(clean_cohort, tmp_path / "export", "Observation")
    patient_file = manifest.parent / "Patient.ndjson"
    lines = patient_file.read_bytes().splitlines()
    lines[0] = lines[0].replace(b"{", b'{"deceasedBoolean":true,', 1)
    patient_file.write_bytes(b"".join(line + b"\n" for line in lines))
    as_if_complete = tmp_path / "as-if-complete"
    shutil.copytree(manifest.parent, as_if_complete, ignore=shutil.ignore_patterns("manifest.json", "errors.ndjson"))
    changes = run(as_if_complete, tmp_path / "changes", since=first).counts["tasks"]
    assert changes["closed"] > 0 and changes["new"] > 0, "read as complete, the same data would change items"

    second = tmp_path / "second"
    status, printed = _batch_cli(str(manifest), "--out", str(second), "--since", str(first))
    assert status == cli.INCOMPLETE_INPUT_EXIT
    assert (second / "closed.ndjson").read_bytes() == b"" and (second / "Task.ndjson").read_bytes() == b""
    assert (second / "open.ndjson").read_bytes() == first_open
    tasks = orjson.loads((second / "manifest.json").read_bytes())["counts"]["tasks"]
    opened = len(read_ndjson(first / "open.ndjson"))
    assert tasks == {"new": 0, "open": opened, "closed": 0, "carried": opened, "withheld": tasks["withheld"]}
    assert tasks["withheld"] > 0
    rows = list(csv.DictReader((second / "worklist.csv").read_text(encoding="utf-8").splitlines()))
    assert sorted(row["task"] for row in rows) == sorted(task["id"] for task in read_ndjson(first / "open.ndjson"))
    assert {row["new"] for row in rows} == {"no"}
    assert f"Nothing was opened or closed: the {opened:,} items open before are kept as they were" in printed
