"""The evaluator benchmark runs end to end in quick mode and flags changed answers; no timing is asserted."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "benchmarks" / "bench_evaluator.py"


def load_harness() -> ModuleType:
    """The harness module, loaded from its file (the repo root is not on sys.path under importlib mode)."""
    spec = importlib.util.spec_from_file_location("bench_evaluator_under_test", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_quick(out_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks.bench_evaluator", "--quick", "--out-dir", str(out_dir), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)


def test_quick_run_writes_results_and_compares_answers(tmp_path: Path) -> None:
    first = run_quick(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "eval/orjson" in first.stdout
    assert "No earlier results file" in first.stdout
    [results] = sorted(tmp_path.glob("evaluator-*.json"))
    document: dict[str, Any] = orjson.loads(results.read_bytes())
    assert document["quick"] is True
    assert set(document["cells"]) == {"typical/N=2", "heavy/N=2"}
    for cell in document["cells"].values():
        assert set(cell["time_us"]) == {"orjson", "msgspec", "evaluator", "fhir"}
        assert cell["rounds"] == 1
        assert sum(cell["counts"]["in_scope"].values()) == 2
        assert cell["counts"]["kinds"]
    assert {t["result"] for t in document["targets"]} <= {"PASS", "FAIL", "n/a"}
    assert [s["n"] for s in document["memory"]["samples"]] == [1, 5, 10]
    markdown = (tmp_path / "evaluator.md").read_text()
    assert "## Machine" in markdown
    assert "## Targets" in markdown

    # Tamper with the stored answers: the next run must say loudly that they changed.
    document["cells"]["typical/N=2"]["counts"]["kinds"]["bogus-kind"] = 7
    results.write_bytes(orjson.dumps(document))
    second = run_quick(tmp_path, "--no-startup", "--no-memory", "--fail-on-change")
    assert second.returncode == 3, second.stderr
    assert "WARNING: the answers CHANGED" in second.stdout
    assert "typical/N=2 kinds bogus-kind: 7 -> 0" in second.stdout


def test_compare_counts_reports_each_difference() -> None:
    harness = load_harness()
    old = {"seed": 1, "cells": {"typical/N=2": {"counts": {"rules": {"A": 1, "B": 2}}}}}
    new = {"seed": 1, "cells": {"typical/N=2": {"counts": {"rules": {"A": 1, "B": 3, "C": 1}}}}}
    changes, compared = harness.compare_counts(old, new)
    assert compared == ["typical/N=2"]
    assert changes == ["typical/N=2 rules B: 2 -> 3", "typical/N=2 rules C: 0 -> 1"]
    assert harness.compare_counts({**old, "seed": 2}, new) == ([], [])
