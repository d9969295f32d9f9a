"""The ``spasticity-cds batch`` sub-command: population worklists over Bulk Data NDJSON, with a progress bar."""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from spasticity_cds.api import add_settings_arguments, parse_instant, parse_settings
from spasticity_cds.errors import BatchError, EvaluationError, InputError

ENGINES = ("local", "spark")
#: Exit status of a run that finished on an incomplete input (the export reported errors, or a file could not be
#: read to its end): its worklist may miss items, and nothing was closed.
INCOMPLETE_INPUT_EXIT = 6


def _instant(text: str) -> datetime:
    try:
        return parse_instant(text, name="--now")
    except InputError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``spasticity-cds batch``."""
    parser.add_argument(
        "input",
        type=Path,
        metavar="INPUT",
        help="folder of .ndjson(.gz) files or of Bundle .json(.gz) files (Synthea's), or a Bulk Data manifest.json",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (written whole at the end)")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="local (partitions + processes) or spark")
    parser.add_argument("--workers", type=_workers, default=1, help="worker processes of the local engine (1: none)")
    parser.add_argument("--since", type=Path, metavar="PREVIOUS_RUN", help="previous run: write only changes")
    parser.add_argument("--now", type=_instant, help="evaluation instant, ISO 8601 with offset (default: now)")
    parser.add_argument("--kb", type=Path, dest="kb_path", help="knowledge-base folder (default: the shipped one)")
    add_settings_arguments(parser)
    parser.add_argument("--app-url", default="", help="base URL of the web app for patient links (default: /)")
    parser.add_argument("--memory-limit", default="512MB", help="DuckDB memory for the --since join before spilling")
    parser.add_argument(
        "--spark-master", help="Spark master for --engine spark (default: spark-submit's, else local[2])"
    )
    parser.add_argument(
        "--access-token-env",
        metavar="VARIABLE",
        help="environment variable holding the bearer token for a manifest's remote files (requiresAccessToken)",
    )


def _access_token(variable: str | None) -> str | None:
    """The token in the environment variable ``variable`` (read from there so that it never shows in a process
    list or a shell history)."""
    if variable is None:
        return None
    token = os.environ.get(variable, "").strip()
    if not token:
        raise BatchError(f"--access-token-env names {variable!r}, which is not set or empty")
    return token


#: The task field that marks a download (counted in bytes) rather than the evaluation (counted in patients).
_BYTES = "bytes"


class _CountColumn(ProgressColumn):
    """Patients done of all, or bytes received of those announced."""

    def render(self, task: Task) -> Text:
        if not task.fields.get(_BYTES):
            total = "?" if task.total is None else f"{task.total:,.0f}"
            return Text(f"{task.completed:,.0f}/{total}", style="progress.download")
        total = "?" if task.total is None else filesize.decimal(int(task.total))
        return Text(f"{filesize.decimal(int(task.completed))}/{total}", style="progress.download")


class _RateColumn(ProgressColumn):
    """Patients per second, or bytes per second for a download."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if task.fields.get(_BYTES):
            text = "-- B/s" if speed is None else f"{filesize.decimal(int(speed))}/s"
        else:
            text = "-- patients/s" if speed is None else f"{speed:,.0f} patients/s"
        return Text(text, style="progress.data.speed")


def run(args: argparse.Namespace, console: Console) -> int:
    """Run the batch and print a summary; raises ``BatchError`` when it cannot start."""
    from spasticity_cds.batch.runner import BatchOptions, run_batch

    options = BatchOptions(
        access_token=_access_token(args.access_token_env),
        source=args.input,
        out=args.out,
        now=args.now or datetime.now().astimezone(),
        engine=args.engine,
        workers=args.workers,
        since=args.since,
        kb_path=args.kb_path,
        settings=parse_settings(args),
        app_url=args.app_url,
        memory_limit=args.memory_limit,
        spark_master=args.spark_master,
    )
    columns = (
        TextColumn("[bold]batch[/bold] {task.description}"),
        BarColumn(),
        _CountColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("grouping", total=None)
        downloading: dict[int, TaskID] = {}

        def advance(done: int, total: int) -> None:
            progress.update(task, description="patients", completed=done, total=total)

        def download(number: int, name: str, received: int, announced: int | None) -> None:
            if number not in downloading:
                downloading[number] = progress.add_task(f"download {name}", total=announced, **{_BYTES: True})
            progress.update(downloading[number], completed=received)

        summary = run_batch(options, advance, download)
    counts = summary.counts
    tasks = counts["tasks"]
    problem_count = sum(counts["problems"].values())
    rate = counts["patients"] / summary.seconds if summary.seconds > 0 else 0.0
    deceased = f" ({counts['patientsDeceased']:,} recorded as deceased)" if counts["patientsDeceased"] else ""
    console.print(
        f"Evaluated {counts['patientsEvaluated']:,} of {counts['patients']:,} patients{deceased} in "
        f"{summary.seconds:.1f} s "
        f"({rate:,.0f} patients/s): {tasks['new']:,} new tasks, {tasks['open']:,} open, {tasks['closed']:,} closed; "
        f"{problem_count:,} problems reported. Output: {summary.out}",
        highlight=False,
        soft_wrap=True,
    )
    skipped = summary.manifest["input"]["skipped"]
    if skipped:
        names = ", ".join(entry["url"] for entry in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        console.print(
            f"Not read: {len(skipped):,} entries of the input folder ({names}); their reasons are in the manifest's "
            "input.skipped.",
            highlight=False,
            soft_wrap=True,
        )
    if not summary.manifest["input"]["complete"]:
        export_errors = len(summary.manifest["input"]["exportErrors"])
        missing = len(summary.manifest["input"]["missing"])
        short = sum(1 for entry in summary.manifest["input"]["files"] if {"unreadable", "incomplete"} & entry.keys())
        held = (
            f" Nothing was opened or closed: the {tasks['carried']:,} items open before are kept as they were, and "
            f"the {tasks['withheld']:,} items only this input gives were not opened."
            if summary.manifest["since"]
            else ""
        )
        console.print(
            f"The input is incomplete ({export_errors:,} error files the export reported, {missing:,} listed files "
            f"not in the folder, {short:,} files that could not be read to their end or hold less than the export "
            f"wrote): the worklist may miss items.{held} "
            "See OperationOutcome.ndjson.",
            highlight=False,
            soft_wrap=True,
        )
        return INCOMPLETE_INPUT_EXIT
    crashed = counts["problems"].get("evaluation", 0)
    if crashed:
        console.print(
            f"{crashed:,} patients hit an evaluator error (see OperationOutcome.ndjson); please report it.",
            highlight=False,
            soft_wrap=True,
        )
        return EvaluationError.exit_code
    return 0
