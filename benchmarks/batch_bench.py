"""Batch benchmark: local engine against a streaming orjson floor, 2 workers against 1, memory in N, Spark overhead.

    python benchmarks/batch_bench.py                       # 10 000 typical patients; prints a markdown report
    python benchmarks/batch_bench.py --large-n 30000 --spark --profile 1000 --output benchmarks/results/batch.md

Every measurement runs in a fresh subprocess; peak RSS is its own ``ru_maxrss`` and the summed RSS of its process
tree sampled from /proc every 0.2 s (workers, Spark's JVM and Python workers included).
Cohorts are written once with ``spasticity_cds.synth.write_cohort(..., fmt="bulk")`` under ``benchmarks/work/``
(git-ignored) and reused. Not a test: numbers depend on the machine and its load; ratios come from one run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "work"
SEED = 20261124
NOW = "2026-11-01T09:00:00-05:00"
MiB = 1024 * 1024


def cohort(n: int) -> Path:
    """A Bulk export of ``n`` typical patients, generated on first use."""
    from spasticity_cds.synth import write_cohort

    folder = WORK / f"batch-typical-{n}"
    if not (folder / "manifest.json").is_file():
        started = time.perf_counter()
        write_cohort(folder, n=n, profile="typical", seed=SEED, fmt="bulk")
        print(f"generated {n} typical patients in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


def _cpu() -> dict[str, float]:
    """CPU seconds of this process and its finished children (pool workers), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 2)}


def _peak() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mib": round(own, 1)}


class TreeSampler(threading.Thread):
    """Samples the summed RSS of this process and all its descendants (Linux /proc) every ``interval`` seconds.

    ``ru_maxrss`` of children is useless here: a child forked from a large parent counts the parent's pages
    until it execs, so the largest sum seen while sampling is the honest peak of the whole run.
    """

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_kib = 0
        self.peak_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, count = _tree_rss_kib(os.getpid())
            if total > self.peak_kib:
                self.peak_kib, self.peak_processes = total, count
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        return {"tree_peak_mib": round(self.peak_kib / 1024, 1), "tree_processes": self.peak_processes}


def _tree_rss_kib(root: int) -> tuple[int, int]:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(rss.get(pid, 0) for pid in tree), len(tree)


def child(mode: str, folder: Path, workers: int) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import orjson

    files = sorted(p for p in folder.iterdir() if p.name.endswith(".ndjson"))
    sampler = TreeSampler()
    sampler.start()
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if mode == "orjson":
        lines = 0
        for path in files:
            with path.open("rb") as handle:
                for line in handle:
                    orjson.loads(line)
                    lines += 1
        extra["lines"] = lines
    elif mode == "group":  # the batch machinery without the evaluator: scan, group, decode each line
        from spasticity_cds.batch.inputs import discover
        from spasticity_cds.batch.local import grouped
        from spasticity_cds.batch.patient import decode_line

        spill = WORK / f"spill-{os.getpid()}"
        spill.mkdir(parents=True, exist_ok=True)
        patients = 0
        for _, lines_of in grouped(discover(folder).files, spill):
            for _, _, raw in lines_of:
                decode_line(raw)
            patients += 1
        shutil.rmtree(spill, ignore_errors=True)
        extra["patients"] = patients
    elif mode in ("local", "spark"):
        from spasticity_cds.batch import BatchOptions, run_batch

        if mode == "spark":
            from pyspark.sql import SparkSession

            os.environ["PYSPARK_PYTHON"] = sys.executable

            session = (
                SparkSession.builder.master("local[2]")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.pyspark.python", sys.executable)
                .getOrCreate()
            )
            session.sparkContext.setLogLevel("ERROR")
            extra["session_s"] = round(time.perf_counter() - started, 2)
        out = WORK / f"out-{mode}-{workers}-{os.getpid()}"
        marks: dict[str, float] = {}

        def progress(done: int, total: int) -> None:
            if done == 0:
                marks["grouped_s"] = round(time.perf_counter() - started, 2)
            marks["evaluated_s"] = round(time.perf_counter() - started, 2)

        summary = run_batch(
            BatchOptions(
                source=folder,
                out=out,
                now=datetime.fromisoformat(NOW),
                engine=mode,
                workers=workers,
            ),
            progress,
        )
        extra.update(marks)
        extra["patients"] = summary.counts["patients"]
        extra["tasks"] = summary.counts["tasks"]["open"]
        extra["task_sha"] = _digest(out / "Task.ndjson")
        extra["kb"] = summary.manifest["knowledgeBase"]["digest"][7:19]
        shutil.rmtree(out)
        if mode == "spark":
            session.stop()
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "workers": workers,
        "seconds": round(seconds, 2),
        **_peak(),
        **_cpu(),
        **sampler.stop(),
        **extra,
    }


def _digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks (reading a 600 MB Task.ndjson whole would count in the peak RSS)."""
    import hashlib

    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()[:16]


def measure(mode: str, folder: Path, workers: int = 1) -> dict[str, Any]:
    """Run ``child`` in a fresh interpreter and return its JSON."""
    command = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--workers", str(workers)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {mode} w={workers} n={folder.name}: {result}", file=sys.stderr)
    return result


def profile(n: int) -> str:
    """pyinstrument text profile of the local engine, one process, on ``n`` typical patients."""
    from pyinstrument import Profiler

    from spasticity_cds.batch import BatchOptions, run_batch

    folder = cohort(n)
    out = WORK / f"out-profile-{os.getpid()}"
    profiler = Profiler(interval=0.002)
    profiler.start()
    run_batch(BatchOptions(source=folder, out=out, now=datetime.fromisoformat(NOW), workers=1))
    profiler.stop()
    shutil.rmtree(out)
    text: str = profiler.output_text(unicode=False, color=False, show_all=False)
    return text


def machine() -> list[str]:
    """Facts about the machine and software the numbers come from."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    versions = []
    for name in ("spasticity-cds", "duckdb", "orjson", "pyspark"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    java = shutil.which("java")
    java_version = ""
    if java:
        probe = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        java_version = probe.stderr.splitlines()[0] if probe.stderr else ""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False)
    return [
        f"- CPU: {cpu}; cores: {os.cpu_count()} (shared with other jobs); memory {memory:.1f} GiB",
        f"- load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- CPython {platform.python_version()} on {platform.platform()}",
        f"- {', '.join(versions)}; Java: {java_version or 'none'}",
        f"- git commit {commit.stdout.strip()[:12]}",
    ]


def _read_through(folder: Path) -> None:
    """Read every input file once, so that the first round does not pay for the disk and the later ones not."""
    for path in sorted(folder.iterdir()):
        with path.open("rb") as source:
            while source.read(8 << 20):
                pass


RUNS = (("orjson", 1), ("group", 1), ("local", 1), ("local", 2))


def _ratio_cell(values: list[float]) -> str:
    """Median [min-max] of per-round ratios."""
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def report(args: argparse.Namespace) -> str:
    """Run every measurement (the main four in ``--rounds`` interleaved rounds) and return the markdown report.

    Each round runs the floor, the grouping, 1 process and 2 workers one after another, so drift on the shared
    machine hits them alike; ratios are taken within each round, then summarised.
    """
    out = io.StringIO()
    folder = cohort(args.n)
    _read_through(folder)
    rounds = [{(mode, workers): measure(mode, folder, workers) for mode, workers in RUNS} for _ in range(args.rounds)]
    rows: list[dict[str, Any]] = [result for round_ in rounds for result in round_.values()]
    floor, one, two = rounds[0][("orjson", 1)], rounds[0][("local", 1)], rounds[0][("local", 2)]
    spark = measure("spark", folder) if args.spark else None
    if spark:
        rows.append(spark)
    large = None
    if args.large_n:
        large = measure("local", cohort(args.large_n), 2)
        rows.append(large)
    size = sum(p.stat().st_size for p in folder.iterdir()) / MiB
    out.write(
        f"# Batch benchmark\n\nGenerated by `python benchmarks/batch_bench.py` on {datetime.now(UTC):%Y-%m-%d}.\n\n"
    )
    out.write("## Machine\n\n" + "\n".join(machine()) + "\n\n")
    out.write(f"Cohort: {args.n:,} typical patients, {floor.get('lines', 0):,} NDJSON lines, {size:,.0f} MiB.\n\n")
    out.write(f"## Measurements ({args.rounds} interleaved rounds)\n\n")
    out.write("| run | N | seconds | patients/s | peak RSS MiB (main process) | peak RSS MiB (process tree, sampled) ")
    out.write("| notes |\n")
    out.write("|---|---|---|---|---|---|---|\n")
    for row in rows:
        n = row.get("patients", args.n)
        notes = {k: v for k, v in row.items() if k.endswith("_s") or k in ("tasks", "task_sha", "kb")}
        label = row["mode"] + (f" workers={row['workers']}" if row["mode"] == "local" else "")
        out.write(
            f"| {label} | {n:,} | {row['seconds']} | {n / row['seconds']:,.0f} | {row['peak_mib']} | "
            f"{row['tree_peak_mib']} ({row['tree_processes']} proc.) | {notes} |\n"
        )

    def ratios(numerator: tuple[str, int], denominator: tuple[str, int]) -> list[float]:
        return [r[numerator]["seconds"] / r[denominator]["seconds"] for r in rounds]

    shas = {r[key]["task_sha"] for r in rounds for key in (("local", 1), ("local", 2))}
    out.write("\n## Targets (median [min-max] of the per-round ratios)\n\n| target | value | limit |\n|---|---|---|\n")
    targets = (
        ("local 1 process / streaming orjson.loads", ("local", 1), ("orjson", 1), "<= 3x"),
        ("grouping + parse (no evaluation) / orjson.loads", ("group", 1), ("orjson", 1), "-"),
        ("2 workers speed-up over 1", ("local", 1), ("local", 2), ">= 1.7x"),
    )
    for label, numerator, denominator, limit in targets:
        out.write(f"| {label} | {_ratio_cell(ratios(numerator, denominator))} | {limit} |\n")
    if spark:
        out.write(f"| Spark local[2] / local 2 workers | {spark['seconds'] / two['seconds']:.2f}x | recorded |\n")
        out.write(f"| same Task.ndjson (Spark vs local) | {spark['task_sha'] == one['task_sha']} | True |\n")
    out.write(f"| same Task.ndjson (1 and 2 workers, every round) | {len(shas) == 1} | True |\n")
    if args.profile:
        out.write(f"\n## Profile (pyinstrument, local engine, 1 process, {args.profile:,} typical patients)\n\n```\n")
        out.write(profile(args.profile))
        out.write("```\n")
    return out.getvalue()


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="typical patients in the main cohort")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the floor and the local runs")
    parser.add_argument("--large-n", type=int, default=0, help="also run 2 workers on this many (memory in N)")
    parser.add_argument("--spark", action="store_true", help="also run the Spark engine (local[2])")
    parser.add_argument("--profile", type=int, default=0, help="append a pyinstrument profile on this many")
    parser.add_argument("--output", type=Path, help="write the markdown report here too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.workers)))
        return
    text = report(args)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
