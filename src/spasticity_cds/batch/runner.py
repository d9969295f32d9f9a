"""Run a population worklist: discover input, group per patient, evaluate, write outputs atomically."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spasticity_cds import api
from spasticity_cds.batch import bundles, output, problems
from spasticity_cds.batch.download import Downloader, DownloadProgress
from spasticity_cds.batch.inputs import InputFile, InputSet, discover, unterminated_last_line
from spasticity_cds.batch.patient import EvaluationSpec, PatientEvaluator, cached_evaluator
from spasticity_cds.batch.scan import BLOCK_BYTES
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.engine.facts import Value
from spasticity_cds.errors import BatchError, InputError

ENGINES = ("local", "spark")
#: The folder, inside the run's work folder, of files downloaded from a manifest's remote URLs.
DOWNLOADS = "download"
#: Called with (patients done, patients in total) as the run advances.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """What one ``spasticity-cds batch`` run does."""

    source: Path
    out: Path
    now: datetime
    engine: str = "local"
    workers: int = 1
    since: Path | None = None
    kb_path: Path | None = None
    app_url: str = ""
    memory_limit: str = "512MB"
    block_bytes: int = BLOCK_BYTES
    spark_master: str | None = None
    #: Knowledge-base setting overrides, as ``evaluate --jurisdiction/--set`` takes them.
    settings: Mapping[str, Value] = field(default_factory=dict)
    #: Bearer token for a manifest's remote files when it says they need one; kept out of every repr and log.
    access_token: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class BatchSummary:
    """The outcome of a finished run: where it is and its manifest."""

    out: Path
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        """The manifest's counts."""
        result: dict[str, Any] = self.manifest["counts"]
        return result


@dataclass(slots=True)
class EngineReport:
    """What an engine tells the runner besides the per-patient outcomes it streamed to the writer."""

    patients: int
    file_stats: list[dict[str, int]]
    engine: dict[str, Any] = field(default_factory=dict)
    #: Files that could not be read to their end, by name, with why: the input is incomplete.
    unreadable: dict[str, str] = field(default_factory=dict)
    #: Files read to their end that hold less than the export wrote, by name, with why (the runner finds them,
    #: alike for every engine): the input is incomplete.
    cut_short: dict[str, str] = field(default_factory=dict)


def run_batch(
    options: BatchOptions, progress: Progress | None = None, downloads: DownloadProgress | None = None
) -> BatchSummary:
    """Run the whole batch; raises ``BatchError`` when it cannot start. Bad input lines and patients are reported.
    ``progress`` is told (patients done, patients in all) and ``downloads`` how far each remote file has come."""
    if options.engine not in ENGINES:
        raise BatchError(f"unknown engine {options.engine!r}; choose local or spark")
    if options.workers < 1:
        raise BatchError(f"--workers must be at least 1 (got {options.workers})")
    if options.now.tzinfo is None:
        raise BatchError("--now must carry a UTC offset")
    engine = _checked_engine(options)
    started = time.perf_counter()
    out = options.out.absolute()
    partial = _prepare(out)  # first: it restores an output a killed run left between its two renames
    try:
        previous = _previous_run(options.since) if options.since is not None else None
        if previous is not None:
            output.check_memory_limit(options.memory_limit)
        # A manifest's remote files are downloaded into the run's work folder, removed with it at the end.
        downloader = Downloader(partial / output.WORK / DOWNLOADS, options.access_token, progress=downloads)
        inputs = discover(options.source, downloader)
        _check_outside(out, inputs)
        manifest = _run_into(partial, inputs, previous, options, progress, engine)
        _swap(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BatchSummary(out=out, seconds=time.perf_counter() - started, manifest=manifest)


def _checked_engine(options: BatchOptions) -> Engine:
    """The run's knowledge base, its settings checked: a bad setting is the whole run's mistake, refused before any
    input is read, as ``evaluate`` refuses it."""
    engine = api.load_knowledge_base(options.kb_path)
    try:
        engine.settings_for(options.settings)
    except InputError as error:
        raise BatchError(error.message, where="--set/--jurisdiction") from None
    return engine


def _run_into(
    partial: Path,
    inputs: InputSet,
    previous: Path | None,
    options: BatchOptions,
    progress: Progress | None,
    engine: Engine,
) -> dict[str, Any]:
    spec = EvaluationSpec(
        now=options.now,
        files=tuple(item.name for item in inputs.files),
        kb_path=str(options.kb_path) if options.kb_path else None,
        settings=tuple(sorted(options.settings.items())),
    )
    evaluator = cached_evaluator(spec, engine)  # this process's evaluations use the knowledge base loaded already
    writer = output.RunWriter(partial, previous)
    try:
        if options.engine == "spark":
            from spasticity_cds.batch.spark import run_spark

            # Spark reads files as text lines: Bundles are written out as NDJSON first (the local scan reads them).
            report = run_spark(bundles.converted(inputs, writer.work / "bundles"), spec, writer, options, progress)
        else:
            from spasticity_cds.batch.local import run_local

            report = run_local(inputs, spec, writer, options, progress)
        for stats in report.file_stats:
            for category in problems.LINE_PROBLEMS:
                if stats.get(category):
                    writer.counts.problem(category, stats[category])
        report.cut_short.update(_shortfalls(inputs, report))
        _report_incomplete(writer, inputs, report, since=previous is not None)
        tasks = writer.finish(
            now=options.now.isoformat(),
            app_url=options.app_url,
            memory_limit=options.memory_limit,
            incomplete=_incomplete(inputs, report),
        )
    finally:
        writer.close()
    output.write_json(partial / output.RULE_COUNTS, writer.counts.rule_counts(evaluator.knowledge_base))
    manifest = _manifest(inputs, previous, options, evaluator, report, writer, tasks)
    output.write_json(partial / output.MANIFEST, manifest)
    shutil.rmtree(writer.work)
    return manifest


def _incomplete(inputs: InputSet, report: EngineReport) -> bool:
    """Whether the input is known to lack data: the export reported errors, a file it lists is not in the input
    folder, or a file could not be read to its end or holds less than the export wrote."""
    return bool(inputs.export_errors or inputs.missing or report.unreadable or report.cut_short)


def _shortfalls(inputs: InputSet, report: EngineReport) -> dict[str, str]:
    """The files read to their end that hold less than the export wrote, by name, with why."""
    short: dict[str, str] = {}
    for item, stats in zip(inputs.files, report.file_stats, strict=True):
        why = None if item.name in report.unreadable else _shortfall(item, stats)
        if why is not None:
            short[item.name] = why
    return short


def _shortfall(item: InputFile, stats: dict[str, int]) -> str | None:
    """Why a file holds less than the export wrote: fewer lines than the resources its manifest entry counts, or a
    plain file whose last line has no line end and is not a resource (cut mid-line); None when neither."""
    read = _lines(stats) - stats.get(problems.BLANK, 0)
    if item.declared_count is not None and read < item.declared_count:
        return f"the manifest counts {item.declared_count:,} resources in it, {read:,} lines were read"
    if item.bundle or item.path.name.endswith(".gz"):  # a Bundle is no line file; a cut .gz does not decompress
        return None
    last = unterminated_last_line(item.path)
    if last is not None and problems.classify(last).status == problems.MALFORMED:
        return "its last line has no line end and is not a resource: the file was cut mid-line"
    return None


def _report_incomplete(writer: output.RunWriter, inputs: InputSet, report: EngineReport, *, since: bool) -> None:
    """An OperationOutcome for the export's own errors and one per file that could not be read to its end or holds
    less than the export wrote."""
    held = (
        "; no item of the previous run was closed and no new item was opened (they are kept as they were)"
        if since
        else ""
    )
    outcomes: list[tuple[str, str, str]] = []
    if inputs.export_errors:
        named = ", ".join(inputs.export_errors[:5]) + (", ..." if len(inputs.export_errors) > 5 else "")
        diagnostics = (
            f"the export reported errors ({len(inputs.export_errors)} error files: {named}): the input is "
            f"incomplete, so the worklist may miss items{held}. Export again, then run the batch on the complete export"
        )
        outcomes.append((problems.INCOMPLETE_EXPORT, diagnostics, str(inputs.source)))
    for name in inputs.missing:
        diagnostics = (
            "the export's manifest lists this file, which the input folder does not hold; "
            f"the input is incomplete{held}"
        )
        outcomes.append((problems.INCOMPLETE_EXPORT, diagnostics, name))
    for name, why in report.unreadable.items():
        diagnostics = f"the file cannot be read to its end: {why}; the input is incomplete{held}"
        outcomes.append((problems.UNREADABLE_FILE, diagnostics, name))
    for name, why in report.cut_short.items():
        diagnostics = f"the file holds less than the export wrote: {why}; the input is incomplete{held}"
        outcomes.append((problems.INCOMPLETE_EXPORT, diagnostics, name))
    for category, diagnostics, location in outcomes:
        writer.problem(problems.operation_outcome(category, diagnostics, location))
        writer.counts.problem(category)


def _lines(stats: dict[str, int]) -> int:
    """A file's lines from its counts by status; a flag (invalid UTF-8) counts a line a second time."""
    return sum(number for status, number in stats.items() if status not in problems.LINE_FLAGS)


def _manifest(
    inputs: InputSet,
    previous: Path | None,
    options: BatchOptions,
    evaluator: PatientEvaluator,
    report: EngineReport,
    writer: output.RunWriter,
    tasks: dict[str, int],
) -> dict[str, Any]:
    counts = writer.counts
    files = []
    for item, stats in zip(inputs.files, report.file_stats, strict=True):
        entry: dict[str, Any] = {
            "url": item.name,
            "lines": _lines(stats),
            "resources": stats.get(problems.OK, 0),
            "context": stats.get(problems.CONTEXT, 0),
            "problems": {category: stats[category] for category in problems.LINE_PROBLEMS if stats.get(category)},
        }
        if item.declared_type:
            entry["type"] = item.declared_type
        if item.name in report.unreadable:
            entry["unreadable"] = report.unreadable[item.name]
        if item.name in report.cut_short:
            entry["incomplete"] = report.cut_short[item.name]
        files.append(entry)
    error = []
    if writer.outcome_count:
        error.append({"type": "OperationOutcome", "url": output.OUTCOMES, "count": writer.outcome_count})
    return {
        "transactionTime": inputs.transaction_time or options.now.isoformat(),
        "request": f"spasticity-cds batch {inputs.source}",
        "requiresAccessToken": False,
        "evaluatedAt": options.now.isoformat(),
        "knowledgeBase": evaluator.knowledge_base,
        "settings": evaluator.settings,
        "engine": report.engine,
        "input": {
            "source": str(inputs.source),
            "kind": inputs.kind,
            "transactionTime": inputs.transaction_time,
            "request": inputs.request,
            "files": files,
            "skipped": [{"url": name, "reason": reason} for name, reason in inputs.skipped],
            "exportErrors": list(inputs.export_errors),
            "missing": list(inputs.missing),
            "complete": not _incomplete(inputs, report),
        },
        "since": {"run": str(previous)} if previous is not None else None,
        "counts": {
            "lines": sum(_lines(stats) for stats in report.file_stats),
            "resources": sum(stats.get(problems.OK, 0) for stats in report.file_stats),
            "context": sum(stats.get(problems.CONTEXT, 0) for stats in report.file_stats),
            "blankLines": sum(stats.get(problems.BLANK, 0) for stats in report.file_stats),
            "patients": report.patients,
            "patientsEvaluated": counts.evaluated,
            "patientsFailed": counts.failed,
            "patientsDeceased": counts.deceased,
            "patientsInScope": counts.in_scope,
            "tasks": tasks,
            "problems": dict(sorted(counts.problems.items())),
        },
        "output": [
            {"type": "Task", "url": output.TASKS, "count": tasks["new"]},
            {"type": "Task", "url": output.CLOSED, "count": tasks["closed"]},
        ],
        "error": error,
        "worklist": {
            "open": {"type": "Task", "url": output.OPEN, "count": tasks["open"]},
            "csv": output.CSV_NAME,
            "html": output.HTML_NAME,
            "ruleCounts": output.RULE_COUNTS,
        },
    }


# -- output folder: write beside it, rename at the end ------------------------------------------------------


def _is_batch_run(path: Path) -> bool:
    """A finished run's folder; a Bulk Data export has a manifest.json too, but never an open.ndjson."""
    return (path / output.MANIFEST).is_file() and (path / output.OPEN).is_file()


def _previous_run(path: Path) -> Path:
    if not _is_batch_run(path) and path.parent.is_dir():
        _clean_stale(path)  # a previous run killed between its two renames left its output aside: restore it
    if not _is_batch_run(path):
        raise BatchError("not a finished batch run (manifest.json and open.ndjson are missing)", where=str(path))
    return path.absolute()


def _prepare(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise BatchError("the output path exists and is not a folder", where=str(out))
    if out.is_dir() and any(out.iterdir()) and not _is_batch_run(out):
        raise BatchError("the output folder is not empty and does not hold a batch run", where=str(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(out)
        partial = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    except OSError as error:
        raise BatchError(f"cannot create the output folder: {error.strerror or error}", where=str(out)) from None
    return partial


def _check_outside(out: Path, inputs: InputSet) -> None:
    """The run replaces ``out`` whole at its end: no input may live inside it."""
    folder = out.resolve()
    for path in (inputs.source, *(item.path for item in inputs.files)):
        if path.resolve().is_relative_to(folder):
            raise BatchError(f"the input {path} is inside the output folder, which the run replaces", where=str(out))


def _clean_stale(out: Path) -> None:
    """Remove what killed runs left beside ``out``; restore a previous output caught between the two renames."""
    for kind in ("old", "partial"):
        for leftover in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = leftover.name.rsplit("-", 1)[-1]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                leftover.rename(out)
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap(partial: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old)
    else:
        partial.rename(out)
