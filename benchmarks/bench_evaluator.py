"""Evaluator benchmark: per-patient time against orjson and msgspec floors and fhir.resources; start-up; memory."""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
QUICK_DIR = REPO / "benchmarks" / "work" / "quick"
SEED = 20261124
METHODS = ("orjson", "msgspec", "evaluator", "fhir")
LABELS = {
    "orjson": "orjson.loads",
    "msgspec": "msgspec fields",
    "evaluator": "evaluator",
    "fhir": "fhir.resources",
}
LIBRARIES = (
    "spasticity-cds",
    "orjson",
    "msgspec",
    "fhir.resources",
    "fhir-core",
    "pydantic",
    "pydantic-core",
    "pyinstrument",
)
MIB = 1024 * 1024
BANNER = "!" * 100

# -- configuration and data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What to run; ``quick`` is the tiny smoke mode the unit test uses."""

    profiles: tuple[str, ...]
    sizes: tuple[int, ...]
    budget: float
    fhir_max: int
    fhir_max_heavy: int
    heavy_max_n: int
    seed: int
    out_dir: Path
    quick: bool
    startup_runs: int
    memory_n: int
    fail_on_change: bool
    profile_always: bool


@dataclass
class Cell:
    """One (profile, N) measurement: per-round per-patient means in microseconds, paired ratios, answers."""

    profile: str
    n: int
    fhir_n: int
    rounds: int = 0
    samples: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    ratios: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    output_sha256: str = ""
    fhir_rejected: int = 0
    fhir_error: str | None = None
    seconds: float = 0.0

    @property
    def key(self) -> str:
        """The name of the cell in the results file."""
        return f"{self.profile}/N={self.n}"


def bundles(profile: str, n: int, seed: int) -> list[bytes]:
    """``n`` synthetic patients of ``profile`` serialised once as collection Bundles."""
    from spasticity_cds.synth import AS_OF, generate_patient
    from spasticity_cds.synth.writer import bundle_of

    return [orjson.dumps(bundle_of(generate_patient(seed, i, profile), seed, i, AS_OF)) for i in range(n)]


def evaluation_time() -> datetime:
    """The evaluation instant: noon UTC on the synthetic cohort's as-of date."""
    from spasticity_cds.synth import AS_OF

    return datetime(AS_OF.year, AS_OF.month, AS_OF.day, 12, tzinfo=UTC)


def evaluator_fn() -> Callable[[bytes], bytes]:
    """Bytes in, canonical result bytes out, on the loaded engine."""
    from spasticity_cds import load_knowledge_base, read_patient, to_json

    engine = load_knowledge_base()
    now = evaluation_time()

    def run(data: bytes) -> bytes:
        return to_json(engine.evaluate(read_patient(data), now))

    return run


def fhir_fn(errors: list[str]) -> Callable[[bytes], None]:
    """fhir.resources R4B validation of the Bundle bytes; a rejection is recorded and timed like a success."""
    from fhir.resources.R4B.bundle import Bundle as FhirBundle
    from pydantic import ValidationError

    def run(data: bytes) -> None:
        try:
            FhirBundle.model_validate_json(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            errors.append(f"{error.error_count()} error(s), first at {where}: {first['msg']}")

    return run


def tally(counts: dict[str, Counter[str]], digest: Any, output: bytes) -> None:
    """Add one result's findings (by kind and by finding id), scope and option statuses to ``counts``."""
    digest.update(output)
    result = orjson.loads(output)
    counts["in_scope"][str(result["in_scope"])] += 1
    for finding in result["findings"]:
        counts["kinds"][finding["kind"]] += 1
        counts["rules"][finding["id"]] += 1
    for option in result["options"]:
        counts["options"][f"{option['agent']}:{option['status']}"] += 1


# -- timing ----------------------------------------------------------------------------------------------


def timed_pass(fn: Callable[[bytes], object], data: Sequence[bytes]) -> list[int]:
    """Nanoseconds of ``fn`` on each item; the result is dropped inside the timing, as a caller would."""
    times: list[int] = []
    clock = time.perf_counter_ns
    for item in data:
        start = clock()
        fn(item)
        times.append(clock() - start)
    return times


def run_cell(profile: str, n: int, config: Config, evaluator: Callable[[bytes], bytes]) -> Cell:
    """Measure one cell: generate, warm (counting answers), then rounds of A B C D until the budget is spent."""
    began = time.perf_counter()
    data = bundles(profile, n, config.seed)
    fhir_n = min(n, config.fhir_max_heavy if profile == "heavy" else config.fhir_max)
    cell = Cell(profile, n, fhir_n)
    from spasticity_cds.fhir.model import RESOURCE_DECODER

    errors: list[str] = []
    functions: dict[str, Callable[[bytes], object]] = {
        "orjson": orjson.loads,
        "msgspec": RESOURCE_DECODER.decode,
        "evaluator": evaluator,
        "fhir": fhir_fn(errors),
    }
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("kinds", "rules", "in_scope", "options")}
    digest = hashlib.sha256()
    for item in data:  # warm-up: every patient evaluated once (N=1 warm), answers counted
        tally(counts, digest, evaluator(item))
    for name in ("orjson", "msgspec", "fhir"):
        functions[name](data[0])
    errors.clear()
    cell.counts = {k: dict(sorted(v.items())) for k, v in counts.items()}
    cell.output_sha256 = digest.hexdigest()
    max_rounds, min_rounds = (1, 1) if config.quick else (101, 5) if n == 1 else (21, 3) if n <= 100 else (9, 3)
    rounds_began = time.perf_counter()
    paired: dict[str, list[float]] = {"evaluator/orjson": [], "evaluator/msgspec": [], "fhir/evaluator": []}
    while cell.rounds < max_rounds:
        elapsed = time.perf_counter() - rounds_began
        if cell.rounds >= min_rounds and elapsed * (cell.rounds + 1) / cell.rounds > config.budget:
            break
        means: dict[str, float] = {}
        eval_subset = 0.0
        for name in METHODS:
            gc.collect()
            subset = data[:fhir_n] if name == "fhir" else data
            times = timed_pass(functions[name], subset)
            means[name] = sum(times) / len(times) / 1000.0
            cell.samples[name].append(means[name])
            if name == "evaluator":
                eval_subset = sum(times[:fhir_n]) / fhir_n / 1000.0
        if cell.rounds == 0:
            cell.fhir_rejected = len(errors)
            cell.fhir_error = errors[0] if errors else None
        errors.clear()
        paired["evaluator/orjson"].append(means["evaluator"] / means["orjson"])
        paired["evaluator/msgspec"].append(means["evaluator"] / means["msgspec"])
        paired["fhir/evaluator"].append(means["fhir"] / eval_subset)
        cell.rounds += 1
    cell.ratios = paired
    cell.seconds = time.perf_counter() - began
    return cell


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, min and max of a sample."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "p10": p10,
        "p90": p90,
        "min": ordered[0],
        "max": ordered[-1],
    }


# -- start-up and memory (fresh subprocesses) ------------------------------------------------------------

STARTUP_CODE = {
    "python": "pass",
    "import": "import spasticity_cds",
    "import+kb": "import spasticity_cds; spasticity_cds.load_knowledge_base()",
}


def measure_startup(runs: int) -> dict[str, dict[str, float]]:
    """Wall seconds of fresh interpreters (bare, import, import + knowledge base), interleaved, after a warm run."""
    samples: dict[str, list[float]] = {name: [] for name in STARTUP_CODE}
    cpu: dict[str, list[float]] = {name: [] for name in STARTUP_CODE}
    for round_index in range(runs + 1):
        for name, code in STARTUP_CODE.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_index:  # the first round only fills the bytecode and page caches
                samples[name].append(wall)
                cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {
        name: stats(values) | {"runs": float(len(values)), "cpu_median": statistics.median(cpu[name])}
        for name, values in samples.items()
    }


def memory_child(n: int, profile: str, seed: int) -> None:
    """In a fresh process: evaluate ``n`` patients one after another under tracemalloc; print JSON samples."""
    data = bundles(profile, n, seed)
    evaluator = evaluator_fn()
    evaluator(data[0])
    checkpoints = sorted({max(1, n // 10), max(1, n // 2), n})
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    window_peak = 0
    samples = []
    for index, item in enumerate(data, start=1):
        evaluator(item)
        if index in checkpoints:
            current, peak = tracemalloc.get_traced_memory()
            window_peak = peak - baseline
            tracemalloc.reset_peak()
            samples.append(
                {
                    "n": index,
                    "retained_mib": (current - baseline) / MIB,
                    "window_peak_mib": window_peak / MIB,
                    "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
    tracemalloc.stop()
    sys.stdout.write(orjson.dumps({"profile": profile, "n": n, "samples": samples}).decode() + "\n")


def measure_memory(n: int, seed: int) -> dict[str, Any]:
    """Run ``memory_child`` for the typical profile in a subprocess and judge whether memory stays flat."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n), "--seed", str(seed)]
    completed = subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    report: dict[str, Any] = orjson.loads(completed.stdout.splitlines()[-1])
    first, last = report["samples"][0], report["samples"][-1]
    growth = last["retained_mib"] - first["retained_mib"]
    top_peak = max(s["window_peak_mib"] for s in report["samples"])
    report["retained_growth_mib"] = growth
    report["peak_growth_mib"] = top_peak - first["window_peak_mib"]
    report["peak_ratio"] = top_peak / max(first["window_peak_mib"], 1e-9)
    # Absolute limits: a patient's evaluation holds well under 1 MiB at its peak, so a ratio of two such peaks
    # mostly measures which patients fell in which window (later windows are larger), not growth.
    report["flat"] = growth <= 2.0 and report["peak_growth_mib"] <= 2.0
    report["rule"] = (
        "flat: retained memory grows <= 2 MiB and no window's peak exceeds the first window's by more than 2 MiB"
    )
    return report


# -- targets, comparison, profile -----------------------------------------------------------------------


def median_ratio(cell: Cell, name: str) -> float:
    """Median of the per-round paired ratio."""
    return statistics.median(cell.ratios[name])


def targets(
    cells: dict[str, Cell], startup: dict[str, Any] | None, memory: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each target with its measured value and PASS/FAIL."""
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, limit: str, ok: bool | None, note: str = "") -> None:
        rows.append({"target": name, "value": value, "limit": limit, "result": _verdict(ok), "note": note})

    typical = sorted((c for c in cells.values() if c.profile == "typical"), key=lambda c: c.n)
    heavy = sorted((c for c in cells.values() if c.profile == "heavy"), key=lambda c: c.n)
    if typical:
        big, small = typical[-1], typical[0]
        value = median_ratio(big, "evaluator/orjson")
        row(f"evaluator / orjson.loads, typical N={big.n}", value, "<= 2.0x", value <= 2.0)
        value = median_ratio(small, "evaluator/orjson")
        row(f"evaluator / orjson.loads, typical N={small.n} warm", value, "<= 2.0x", value <= 2.0)
        value = median_ratio(big, "fhir/evaluator")
        row(
            f"fhir.resources / evaluator, typical N={big.n}",
            value,
            ">= 30x",
            value >= 30.0,
            f"fhir.resources on the first {big.fhir_n} patients, evaluator on the same ones",
        )
    if typical and heavy:
        big_t, big_h = typical[-1], heavy[-1]
        value = median_ratio(big_h, "evaluator/orjson") / median_ratio(big_t, "evaluator/orjson")
        row(
            f"heavy ratio / typical ratio (heavy N={big_h.n}, typical N={big_t.n})",
            value,
            "<= 1.25",
            value <= 1.25,
            "ratios are evaluator / orjson.loads",
        )
    if startup is not None:
        value = startup["import+kb"]["median"]
        cpu = startup["import+kb"]["cpu_median"]
        row(
            "start-up: import + load_knowledge_base (fresh process)",
            value,
            "<= 0.5 s",
            value <= 0.5,
            f"wall median; CPU (user+sys) median {cpu:.3f} s",
        )
    if memory is not None:
        row(
            f"memory flat over N={memory['n']} (typical)",
            memory["retained_growth_mib"],
            "flat",
            bool(memory["flat"]),
            f"retained growth MiB; window peak +{memory['peak_growth_mib']:.2f} MiB (x{memory['peak_ratio']:.2f})",
        )
    return rows


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def previous_results(out_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest earlier results file in ``out_dir``, if any."""
    files = sorted(out_dir.glob("evaluator-*.json"))
    if not files:
        return None
    return files[-1], orjson.loads(files[-1].read_bytes())


def compare_counts(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(changes, cells compared) between two results documents' answer counts, per cell present in both."""
    changes: list[str] = []
    compared: list[str] = []
    if old.get("seed") != new.get("seed"):
        return [], []
    for key, cell in new.get("cells", {}).items():
        before = old.get("cells", {}).get(key)
        if before is None:
            continue
        compared.append(key)
        for group, now_counts in cell["counts"].items():
            then_counts = before.get("counts", {}).get(group, {})
            for name in sorted(set(now_counts) | set(then_counts)):
                a, b = then_counts.get(name, 0), now_counts.get(name, 0)
                if a != b:
                    changes.append(f"{key} {group} {name}: {a} -> {b}")
    return changes, compared


def profile_evaluator(profile: str, n: int, seed: int, passes: int) -> str:
    """pyinstrument flat self-time summary (top 15 lines) of the evaluator over ``n`` patients."""
    from pyinstrument import Profiler

    data = bundles(profile, n, seed)
    evaluator = evaluator_fn()
    for item in data:
        evaluator(item)
    profiler = Profiler(interval=0.001)
    profiler.start()
    for _ in range(passes):
        for item in data:
            evaluator(item)
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, flat=True, flat_time="self")
    lines = text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("Profile at")), 0)
    rows: list[tuple[float, str]] = []
    for line in lines[start:]:
        seconds, _, label = line.strip().partition(" ")
        if not label or (label.startswith("[self]") and "bench_evaluator" in label):
            continue  # the root frame's self time: the sampling overhead of pyinstrument, not the engine
        try:
            rows.append((float(seconds), label))
        except ValueError:
            continue
    total = sum(seconds for seconds, _ in rows) or 1.0
    body = [f"{100 * seconds / total:5.1f}%  {label}" for seconds, label in rows]
    head = f"pyinstrument, self time (% of sampled evaluator time), {profile} x{n} patients x{passes} passes"
    return "\n".join([head, *body[:15]])


# -- machine facts and rendering -------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, Python, library versions, git commit and the files modified in the work tree."""
    cpu = "unknown"
    memory_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "libraries": versions,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_modified": [line[3:] for line in _git("status", "--porcelain", "--", "src").splitlines()],
        "loadavg_start": list(os.getloadavg()),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def knowledge_base_facts() -> dict[str, str]:
    """Name, version and digest of the shipped knowledge base."""
    from spasticity_cds import load_knowledge_base

    manifest = load_knowledge_base().kb.manifest
    return {"name": manifest.name, "version": manifest.version, "digest": load_knowledge_base().kb.digest}


def _span(values: dict[str, float]) -> str:
    return f"{values['median']:.1f} [{values['min']:.1f}–{values['max']:.1f}]"


def _ratio(values: dict[str, float], unit: str = "x") -> str:
    return f"{values['median']:.2f}{unit} [{values['min']:.2f}–{values['max']:.2f}]"


def cell_rows(document: dict[str, Any]) -> list[list[str]]:
    """The main table: per-patient µs median [min–max over rounds] per method, and the paired ratios."""
    rows = []
    for cell in document["cells"].values():
        t = cell["time_us"]
        r = cell["ratio"]
        rows.append(
            [
                cell["profile"],
                str(cell["n"]),
                str(cell["rounds"]),
                _span(t["orjson"]),
                _span(t["msgspec"]),
                _span(t["evaluator"]),
                f"{_span(t['fhir'])} (N={cell['fhir_n']})",
                _ratio(r["evaluator/orjson"]),
                _ratio(r["evaluator/msgspec"]),
                _ratio(r["fhir/evaluator"]),
            ]
        )
    return rows


CELL_HEADER = [
    "profile",
    "N",
    "rounds",
    "orjson.loads µs",
    "msgspec µs",
    "evaluator µs",
    "fhir.resources µs",
    "eval/orjson",
    "eval/msgspec",
    "fhir/eval",
]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table for the terminal."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(str(x) for x in row) + " |" for row in rows)
    return "\n".join(lines)


def target_rows(document: dict[str, Any]) -> list[list[str]]:
    """Targets as table rows."""
    return [
        [t["target"], "" if t["value"] is None else f"{t['value']:.3g}", t["limit"], t["result"], t["note"]]
        for t in document["targets"]
    ]


def render_markdown(document: dict[str, Any]) -> str:
    """benchmarks/results/evaluator.md."""
    m = document["machine"]
    kb = document["knowledge_base"]
    libraries = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    parts = [
        "# Evaluator benchmark",
        "",
        f"Generated by `scripts/bench` (`python -m benchmarks.bench_evaluator`) on {document['date']}."
        + (" **QUICK MODE: smoke test only, numbers are meaningless.**" if document["quick"] else ""),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}; cores: {m['cores']} ({m['cores_usable']} usable, shared with other jobs); "
        f"memory {m['memory_gib']} GiB",
        f"- load average at start {_loads(m['loadavg_start'])}, at end {_loads(m.get('loadavg_end', []))}",
        f"- {m['implementation']} {m['python']} on {m['platform']}",
        f"- libraries: {libraries}",
        f"- git commit {m['git_commit']}"
        + (f"; work tree modified under src: {', '.join(m['git_modified'])}" if m["git_modified"] else "; clean src"),
        f"- knowledge base {kb['name']} {kb['version']} ({kb['digest'][:16]}…)",
        f"- synthetic cohort seed {document['seed']}; evaluated at {document['now']}",
        "",
        "## Per-patient time (µs)",
        "",
        "Median over rounds of the mean per-patient time in each round, [min–max over rounds]. In every round the",
        "methods run one after another on the same in-memory bytes (orjson, msgspec, evaluator, fhir.resources),",
        "so drift hits all of them alike; ratios are paired per round, then the median [min–max] is shown.",
        "fhir.resources runs on the first N patients given in its column and its ratio compares it with the",
        "evaluator on those same patients.",
        "",
        md_table(CELL_HEADER, cell_rows(document)),
        "",
    ]
    rejected = [
        f"- {key}: fhir.resources rejected {c['fhir_rejected']} of {c['fhir_n']} bundles; first: {c['fhir_error']}"
        for key, c in document["cells"].items()
        if c["fhir_rejected"]
    ]
    parts += (
        [
            "fhir.resources rejections (still timed: pydantic validates the whole bundle and collects every error;",
            "the synthetic generator leaves out the required MedicationRequest.intent on about 4% of orders on",
            "purpose, as real feeds do, and the engine reads those orders anyway):",
            "",
            *rejected,
            "",
        ]
        if rejected
        else ["fhir.resources R4B accepted every synthetic bundle it was given.", ""]
    )
    parts += [
        "## Targets",
        "",
        md_table(["target", "value", "limit", "result", "note"], target_rows(document)),
        "",
    ]
    if document.get("startup"):
        s = document["startup"]
        parts += [
            "## Start-up (fresh subprocess, seconds)",
            "",
            md_table(
                ["command", "wall median", "min", "max", "CPU median", "runs"],
                [
                    [
                        f"`python -c {STARTUP_CODE[name]!r}`",
                        f"{v['median']:.3f}",
                        f"{v['min']:.3f}",
                        f"{v['max']:.3f}",
                        f"{v['cpu_median']:.3f}",
                        str(int(v["runs"])),
                    ]
                    for name, v in s.items()
                ],
            ),
            "",
        ]
    if document.get("memory"):
        mem = document["memory"]
        parts += [
            f"## Memory: {mem['n']} {mem['profile']} patients evaluated one after another (tracemalloc, subprocess)",
            "",
            md_table(
                ["after N", "retained MiB", "peak MiB in window", "process max RSS MiB"],
                [
                    [
                        str(s["n"]),
                        f"{s['retained_mib']:.2f}",
                        f"{s['window_peak_mib']:.2f}",
                        f"{s['maxrss_mib']:.0f}",
                    ]
                    for s in mem["samples"]
                ],
            ),
            "",
            f"{mem['rule']}. Max RSS includes the pre-generated bundle bytes.",
            "",
        ]
    parts += ["## Answers (guards against speed-ups that change results)", ""]
    comparison = document["comparison"]
    parts.append(comparison["summary"])
    parts.append("")
    for key, cell in document["cells"].items():
        counts = cell["counts"]
        kinds = ", ".join(f"{k} {v}" for k, v in counts["kinds"].items())
        parts += [
            f"- **{key}**: in scope {counts['in_scope']}; finding kinds: {kinds}; output sha256 "
            f"{cell['output_sha256'][:16]}…",
        ]
    largest = max(document["cells"].values(), key=lambda c: (c["profile"] == "typical", c["n"]))
    parts += [
        "",
        f"Findings by rule in {largest['profile']}/N={largest['n']}:",
        "",
        md_table(["finding", "count"], [[k, str(v)] for k, v in largest["counts"]["rules"].items()]),
        "",
    ]
    if document.get("profiles"):
        parts += [
            "## Where the evaluator spends its time",
            "",
            "An evaluator target was missed (or `--profile-always`), so here is a pyinstrument flat profile of",
            "`bytes -> to_json(evaluate(read_patient(bytes)))`, top 15 lines by self time. `loads <built-in>` is",
            "orjson.loads inside read_patient, i.e. the floor itself; `run` is the benchmark's wrapper (its self",
            "time includes freeing the parsed bundle and the result on return); everything else is the engine's",
            "own Python above the floor. The root frame's self time (pyinstrument's sampling overhead) is left out.",
            "",
        ]
        for text in document["profiles"]:
            parts += ["```", text, "```", ""]
    parts += [
        "## Method",
        "",
        "- Bundles are generated with `spasticity_cds.synth.generate_patient` and serialised with orjson once, up",
        "  front; every method reads the same bytes in memory.",
        "- orjson.loads is the floor for a dict-based engine; msgspec decodes only the fields the rules read",
        "  (the engine's own decoder, `spasticity_cds.fhir.model.RESOURCE_DECODER`, so eval/msgspec is the engine's",
        "  Python work beyond its decode); the evaluator is bytes in -> "
        "`to_json(engine.evaluate(read_patient(bytes), now))` bytes out; fhir.resources is R4B "
        "`Bundle.model_validate_json(bytes)`.",
        "- Warm: the engine is loaded and every patient of the cell has been evaluated once (its answers are counted",
        "  then) before timing; orjson, msgspec and fhir.resources run once on the first patient.",
        "- The garbage collector stays on; `gc.collect()` runs between methods, outside the timing.",
        f"- A cell runs rounds until about {document['budget_s']:.0f} s of rounds are spent (N=1: 5–101 rounds,"
        " N<=100: 3–21, larger: 3–9).",
        "",
    ]
    return "\n".join(parts)


def _loads(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) or "?"


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode: N=2, one round (used by the unit test)")
    parser.add_argument("--profiles", default="typical,heavy")
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of timed rounds per cell (about)")
    parser.add_argument("--fhir-max", type=int, default=50, help="patients per round given to fhir.resources")
    parser.add_argument("--fhir-max-heavy", type=int, default=20, help="the same for the heavy profile")
    parser.add_argument(
        "--heavy-max-n", type=int, default=300, help="cap N for the heavy profile (so a cell fits in ~2 min)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--memory-n", type=int, default=1000)
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--fail-on-change", action="store_true", help="exit 3 when the answer counts changed")
    parser.add_argument("--profile-always", action="store_true", help="add the pyinstrument summary even on PASS")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    config = Config(
        profiles=tuple(p for p in args.profiles.split(",") if p),
        sizes=(2,) if quick else tuple(int(s) for s in args.sizes.split(",") if s),
        budget=args.budget,
        fhir_max=1 if quick else args.fhir_max,
        fhir_max_heavy=1 if quick else args.fhir_max_heavy,
        heavy_max_n=args.heavy_max_n,
        seed=args.seed,
        out_dir=args.out_dir or (QUICK_DIR if quick else RESULTS_DIR),
        quick=quick,
        startup_runs=0 if args.no_startup else 1 if quick else args.startup_runs,
        memory_n=0 if args.no_memory else 10 if quick else args.memory_n,
        fail_on_change=args.fail_on_change,
        profile_always=args.profile_always,
    )
    return config, args


def cell_document(cell: Cell) -> dict[str, Any]:
    """One cell for the results file."""
    return {
        "profile": cell.profile,
        "n": cell.n,
        "fhir_n": cell.fhir_n,
        "rounds": cell.rounds,
        "seconds": round(cell.seconds, 1),
        "time_us": {name: stats(values) for name, values in cell.samples.items()},
        "ratio": {name: stats(values) for name, values in cell.ratios.items()},
        "samples_us": cell.samples,
        "fhir_rejected": cell.fhir_rejected,
        "fhir_error": cell.fhir_error,
        "counts": cell.counts,
        "output_sha256": cell.output_sha256,
    }


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def measure(config: Config) -> dict[str, Any]:
    """Every measurement, as the results document (without the comparison)."""
    started = datetime.now(UTC)
    machine = machine_facts()
    evaluator = evaluator_fn()
    cells: dict[str, Cell] = {}
    for profile in config.profiles:
        for size in config.sizes:
            n = min(size, config.heavy_max_n) if profile == "heavy" else size
            _log(f"{profile} N={n} ...")
            cell = run_cell(profile, n, config, evaluator)
            cells[cell.key] = cell
            ratio = median_ratio(cell, "evaluator/orjson")
            _log(f"  {cell.rounds} rounds in {cell.seconds:.0f} s; evaluator/orjson {ratio:.2f}x")
    startup = None
    if config.startup_runs:
        _log("start-up ...")
        startup = measure_startup(config.startup_runs)
    memory = None
    if config.memory_n:
        _log(f"memory over {config.memory_n} patients ...")
        memory = measure_memory(config.memory_n, config.seed)
    target_list = targets(cells, startup, memory)
    profiles: list[str] = []
    evaluator_missed = any(
        t["result"] == "FAIL" and ("evaluator" in t["target"] or "heavy" in t["target"]) for t in target_list
    )
    if (evaluator_missed or config.profile_always) and not config.quick:
        _log("profiling the evaluator ...")
        profiles = [
            profile_evaluator("typical", 200, config.seed, 5),
            profile_evaluator("heavy", 20, config.seed, 5),
        ]
    machine["loadavg_end"] = list(os.getloadavg())
    return {
        "benchmark": "evaluator",
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "quick": config.quick,
        "seed": config.seed,
        "now": evaluation_time().isoformat(),
        "budget_s": config.budget,
        "machine": machine,
        "knowledge_base": knowledge_base_facts(),
        "cells": {key: cell_document(cell) for key, cell in cells.items()},
        "targets": target_list,
        "startup": startup,
        "memory": memory,
        "profiles": profiles,
    }


def comparison(out_dir: Path, document: dict[str, Any]) -> dict[str, Any]:
    """The answer counts against the newest earlier results file in ``out_dir``."""
    previous = previous_results(out_dir)
    if previous is None:
        return {
            "previous": None,
            "changes": [],
            "summary": "No earlier results file to compare the answer counts with.",
        }
    changes, compared = compare_counts(previous[1], document)
    name = previous[0].name
    if not compared:
        summary = f"No cell in common with {name} (other seed or sizes); answer counts not compared."
    elif changes:
        listed = "\n".join(f"- {c}" for c in changes)
        summary = f"**WARNING: answer counts CHANGED since {name}** ({len(changes)} differences):\n\n{listed}"
    else:
        summary = f"Answer counts identical to {name} for {', '.join(compared)}."
    return {"previous": name, "changes": changes, "summary": summary}


def print_report(document: dict[str, Any]) -> None:
    """The tables, the answer counts and (loudly) any change in them, on stdout."""
    print(text_table(CELL_HEADER, cell_rows(document)))
    print()
    print(text_table(["target", "value", "limit", "result", "note"], target_rows(document)))
    print()
    for key, cell in document["cells"].items():
        counts = cell["counts"]
        print(f"{key}: in scope {counts['in_scope']}; finding kinds {counts['kinds']}")
        print(f"{key}: findings by rule {counts['rules']}")
    print()
    result = document["comparison"]
    if result["changes"]:
        print(BANNER)
        print(f"WARNING: the answers CHANGED compared with {result['previous']}:")
        for change in result["changes"]:
            print(f"  {change}")
        print(BANNER)
        _log(f"WARNING: {len(result['changes'])} answer counts changed since {result['previous']}")
    else:
        print(result["summary"])
    for text in document["profiles"]:
        print()
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the results JSON and markdown; 3 on changed answers if asked."""
    config, args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args.memory_child, "typical", config.seed)
        return 0
    document = measure(config)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    document["comparison"] = comparison(config.out_dir, document)
    out_json = config.out_dir / f"evaluator-{document['date']}.json"
    out_json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    out_md = config.out_dir / "evaluator.md"
    out_md.write_text(render_markdown(document))
    print_report(document)
    print(f"\nwrote {out_json} and {out_md}")
    return 3 if document["comparison"]["changes"] and config.fail_on_change else 0


if __name__ == "__main__":
    sys.exit(main())
