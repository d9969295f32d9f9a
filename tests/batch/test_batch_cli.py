"""The ``batch`` sub-command: options, the summary line, and a run killed half-way leaving no half output."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from spasticity_cds.batch import cli
from spasticity_cds.errors import BatchError, SpasticityCdsError
from spasticity_cds.synth import generate_patient, write_cohort

from .batch_helpers import NOW, SEED, N, evaluator_tasks, read_ndjson


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spasticity-cds batch")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = parse("in", "--out", "out")
    assert (args.engine, args.workers, args.since, args.now, args.app_url) == ("local", 1, None, None, "")


@pytest.mark.parametrize("bad", [["--now", "2026-11-01T09:00:00"], ["--workers", "0"], ["--engine", "ray"]])
def test_bad_options_are_usage_errors(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("in", "--out", "out", *bad)
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_run_prints_one_summary_line(clean_cohort: Path, tmp_path: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    args = parse(str(clean_cohort), "--out", str(tmp_path / "run"), "--now", NOW.isoformat(), "--workers", "2")
    assert cli.run(args, console) == 0
    lines = buffer.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Evaluated 30 of 30 patients in ")
    assert "patients/s" in lines[0]
    assert (tmp_path / "run" / "manifest.json").is_file()


SCRIPT = """
import argparse, sys
from rich.console import Console
from spasticity_cds.batch import cli
parser = argparse.ArgumentParser()
cli.add_arguments(parser)
sys.exit(cli.run(parser.parse_args(sys.argv[1:]), Console()))
"""


def _batch(source: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(source), "--out", str(out), "--now", NOW.isoformat()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _run_to_the_end(source: Path, out: Path) -> None:
    with _batch(source, out) as run:
        _, errors = run.communicate(timeout=300)
    assert run.returncode == 0, errors.decode()


def test_a_killed_run_leaves_the_previous_output_and_a_rerun_succeeds(clean_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run_to_the_end(clean_cohort, out)
    before = (out / "manifest.json").read_bytes()
    bigger = tmp_path / "bigger"
    write_cohort(bigger, n=400, profile="lean", seed=11, fmt="bulk")
    with _batch(bigger, out) as victim:
        deadline = time.monotonic() + 120
        evaluating = None
        while time.monotonic() < deadline and victim.poll() is None:
            # A partition's outcome file is created when its patients start being evaluated. Its size is no
            # signal: write buffers follow the file system's block size and may hold the whole partition.
            evaluating = next(tmp_path.glob(".out.partial-*/_work/local/part-*.bin"), None)
            if evaluating is not None:
                break
            time.sleep(0.005)
        if evaluating is None:
            victim.kill()
            pytest.fail(f"the run should be killed while it evaluates; it said: {victim.communicate(timeout=30)[1]!r}")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    assert (out / "manifest.json").read_bytes() == before, "the previous output is untouched"
    assert list(tmp_path.glob(".out.partial-*")), "the killed run left only its hidden partial folder"
    _run_to_the_end(bigger, out)
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["counts"]["patients"] == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigger", "out"], "stale partial folders are cleaned"


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_processes_exit_when_the_main_process_is_killed_outright(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    write_cohort(cohort, n=400, profile="lean", seed=12, fmt="bulk")
    command = [sys.executable, "-c", SCRIPT, str(cohort), "--out", str(tmp_path / "out"), "--workers", "2"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as victim:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and victim.poll() is None and len(workers) < 2:
            workers = {pid for pid in _children(victim.pid) if "spawn_main" in _command_line(pid)}
            time.sleep(0.01)
        assert len(workers) == 2, "the run should be killed while its pool is up"
        victim.kill()
        victim.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "orphaned pool processes would hold the caller's pipes open"


def _command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_sigterm_is_an_interrupt_partial_output_removed_exit_130(clean_cohort: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    write_cohort(cohort, n=400, profile="lean", seed=13, fmt="bulk")
    entry = Path(sys.executable).with_name("spasticity-cds")
    command = [str(entry), "batch", str(cohort), "--out", str(tmp_path / "out"), "--workers", "2"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as victim:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim.poll() is None:
            if next(tmp_path.glob(".out.partial-*/_work"), None) is not None:
                break
            time.sleep(0.005)
        victim.send_signal(signal.SIGTERM)
        _, errors = victim.communicate(timeout=120)
    assert victim.returncode == 130, errors.decode()
    assert errors.decode().strip() == "interrupted"
    assert not list(tmp_path.glob(".out.partial-*")) and not (tmp_path / "out").exists()


def test_an_evaluator_error_is_reported_the_run_finishes_and_exits_4(
    clean_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spasticity_cds.engine.evaluator import Engine

    original = Engine.evaluate

    def failing(self: Engine, record: Any, now: Any, settings: Any = None) -> dict[str, Any]:
        if record.patient_reference == "Patient/p-3-4":
            raise ZeroDivisionError("boom")
        return original(self, record, now, settings)

    monkeypatch.setattr(Engine, "evaluate", failing)
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    args = parse(str(clean_cohort), "--out", str(tmp_path / "run"), "--now", NOW.isoformat())
    assert cli.run(args, console) == 4
    assert "1 patients hit an evaluator error" in buffer.getvalue()
    outcomes = [orjson.loads(line) for line in (tmp_path / "run" / "OperationOutcome.ndjson").read_bytes().splitlines()]
    outcomes = [outcome for outcome in outcomes if outcome["issue"][0]["code"] != "duplicate"]
    assert len(outcomes) == 1
    issue = outcomes[0]["issue"][0]
    assert issue["code"] == "exception"
    assert issue["location"][0].startswith("Patient/p-3-4 (")
    assert "ZeroDivisionError: boom" in issue["diagnostics"]


def test_a_run_on_an_export_that_reports_errors_exits_6_with_a_warning(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    manifest = orjson.loads((export / "manifest.json").read_bytes())
    manifest["error"] = [{"type": "OperationOutcome", "url": "https://fhir.example.org/jobs/1/error.ndjson"}]
    (export / "manifest.json").write_bytes(orjson.dumps(manifest))
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    args = parse(str(export / "manifest.json"), "--out", str(tmp_path / "run"), "--now", NOW.isoformat())
    assert cli.run(args, console) == cli.INCOMPLETE_INPUT_EXIT == 6
    said = buffer.getvalue()
    assert "The input is incomplete (1 error files the export reported, 0 listed files not in the folder," in said


def test_the_summary_names_folder_entries_that_were_not_read(clean_cohort: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    (export / "Condition.ndjson").rename(export / "Condition.NDJSON")
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    code = cli.run(parse(str(export), "--out", str(tmp_path / "run"), "--now", NOW.isoformat()), console)
    assert "Not read: 1 entries of the input folder (Condition.NDJSON)" in buffer.getvalue()
    # the export's manifest lists Condition.ndjson, which the run did not read: its data is missing
    assert code == cli.INCOMPLETE_INPUT_EXIT
    assert "1 listed files not in the folder" in buffer.getvalue()


def test_a_worker_process_that_dies_is_a_clear_batch_error() -> None:
    from spasticity_cds.batch import local

    with pytest.raises(BatchError, match=r"a worker process died \(exit status 3\)"), local._pool(2) as pool:
        list(pool.map(os._exit, [3]))  # the worker exits as if killed mid-task


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (signal.SIGKILL, "killed by signal SIGKILL, perhaps by the out-of-memory killer"),
        (signal.SIGINT, "interrupted by SIGINT"),
    ],
)
def test_a_worker_killed_by_a_signal_is_reported_with_it(sent: signal.Signals, said: str) -> None:
    from spasticity_cds.batch import local

    with pytest.raises(BatchError) as raised, local._pool(2) as pool:
        list(pool.map(signal.raise_signal, [sent]))
    assert said in raised.value.message
    assert ("out-of-memory" in raised.value.message) == (sent == signal.SIGKILL)


def test_batch_takes_the_settings_evaluate_takes_gives_their_answers_and_records_them(
    clean_cohort: Path, tmp_path: Path
) -> None:
    console = Console(file=io.StringIO(), width=300, force_terminal=False, color_system=None)
    settings = ["--jurisdiction", "uk", "--set", "severe_mas_grade=2", "--set", "validity_days_renal=30"]
    args = parse(str(clean_cohort), "--out", str(tmp_path / "uk"), "--now", NOW.isoformat(), *settings)
    assert cli.run(args, console) == 0
    overrides = {"jurisdiction": "uk", "severe_mas_grade": 2, "validity_days_renal": 30}
    assert orjson.loads((tmp_path / "uk" / "manifest.json").read_bytes())["settings"] == overrides
    tasks = {task["id"]: task for task in read_ndjson(tmp_path / "uk" / "Task.ndjson")}
    assert tasks == evaluator_tasks((generate_patient(SEED, index, "lean") for index in range(N)), overrides)
    assert tasks.keys() != evaluator_tasks(generate_patient(SEED, index, "lean") for index in range(N)).keys()


def test_a_changed_setting_supersedes_the_items_of_the_previous_run(clean_cohort: Path, tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=300, force_terminal=False, color_system=None)
    us = ["--now", NOW.isoformat(), "--jurisdiction", "us"]  # the default: the same items as no setting at all
    assert cli.run(parse(str(clean_cohort), "--out", str(tmp_path / "us"), *us), console) == 0
    assert orjson.loads((tmp_path / "us" / "manifest.json").read_bytes())["settings"] == {}
    uk = ["--now", NOW.isoformat(), "--jurisdiction", "uk", "--since", str(tmp_path / "us")]
    assert cli.run(parse(str(clean_cohort), "--out", str(tmp_path / "uk"), *uk), console) == 0
    before = {task["id"] for task in read_ndjson(tmp_path / "us" / "open.ndjson")}
    closed = read_ndjson(tmp_path / "uk" / "closed.ndjson")
    assert before and {task["id"] for task in closed} == before
    assert {task["status"] for task in closed} == {"cancelled"}
    assert before.isdisjoint(task["id"] for task in read_ndjson(tmp_path / "uk" / "Task.ndjson"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [(["--set", "severe_mas_grde=2"], "did you mean 'severe_mas_grade'"), (["--set", "nonsense"], "NAME=VALUE")],
)
def test_a_bad_setting_is_refused_before_any_work(
    clean_cohort: Path, tmp_path: Path, setting: list[str], message: str
) -> None:
    console = Console(file=io.StringIO(), width=300, force_terminal=False, color_system=None)
    args = parse(str(clean_cohort), "--out", str(tmp_path / "run"), "--now", NOW.isoformat(), *setting)
    with pytest.raises(SpasticityCdsError, match=message) as raised:
        cli.run(args, console)
    assert raised.value.exit_code == 2
    assert not list(tmp_path.iterdir())
