"""The ``spasticity-cds synth`` sub-command: write a synthetic cohort with a progress bar."""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from spasticity_cds.errors import InputError
from spasticity_cds.synth.patient import AS_OF
from spasticity_cds.synth.profiles import PROFILES
from spasticity_cds.synth.writer import FORMATS, CohortSummary, write_cohort

#: The years --as-of may fall in: patients are born decades before it and their records run after it.
AS_OF_YEARS = range(1900, 9001)


def _iso_date(text: str) -> date:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None
    if day.year not in AS_OF_YEARS:
        raise argparse.ArgumentTypeError(f"{text!r}: the year must be from {AS_OF_YEARS[0]} to {AS_OF_YEARS[-1]}")
    return day


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``spasticity-cds synth``."""
    parser.add_argument("--n", type=int, required=True, help="number of patients to write")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="typical", help="resources per patient")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="bundles", help="output layout")
    parser.add_argument("--start", type=int, default=0, help="index of the first patient (for shards)")
    parser.add_argument("--gzip", action="store_true", help="gzip the NDJSON files")
    parser.add_argument("--as-of", type=_iso_date, default=AS_OF, help="the synthetic world's today")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")


def summary_line(summary: CohortSummary, seconds: float) -> str:
    """One line describing what was written."""
    rate = summary.patients / seconds if seconds > 0 else 0.0
    return (
        f"Wrote {summary.patients:,} {summary.profile} patients ({summary.total_resources:,} resources, "
        f"seed {summary.seed}, start {summary.start}) as {summary.fmt} to {summary.out_dir} "
        f"in {seconds:.1f} s ({rate:,.0f} patients/s)"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    """Write the cohort; raises ``InputError`` for unusable arguments or output paths."""
    if args.n < 0:
        raise InputError(f"--n must not be negative (got {args.n})")
    columns = (
        TextColumn("[bold]synth[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"{args.profile} {args.fmt}", total=args.n)
        summary = write_cohort(
            Path(args.out),
            n=args.n,
            profile=args.profile,
            seed=args.seed,
            fmt=args.fmt,
            start=args.start,
            gzip=args.gzip,
            progress=lambda done: progress.update(task, completed=done),
            as_of=args.as_of,
        )
    console.print(summary_line(summary, time.perf_counter() - started), highlight=False, soft_wrap=True)
    return 0
