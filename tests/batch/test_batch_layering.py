"""Batch layering: only api, engine, fhir, knowledge, errors and itself, never interfaces; heavy imports lazy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import spasticity_cds.batch

BATCH_DIR = Path(spasticity_cds.batch.__file__).parent
ALLOWED = (
    "spasticity_cds.api",
    "spasticity_cds.engine",
    "spasticity_cds.fhir",
    "spasticity_cds.knowledge",
    "spasticity_cds.errors",
    "spasticity_cds.batch",
)


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module if node.module != "spasticity_cds" else f"spasticity_cds.{node.names[0].name}")
    return {name for name in names if name.startswith("spasticity_cds")}


def test_batch_imports_only_lower_layers() -> None:
    offending = {
        f"{path.name}: {name}"
        for path in BATCH_DIR.rglob("*.py")
        for name in _project_imports(path)
        if not any(name == allowed or name.startswith(f"{allowed}.") for allowed in ALLOWED)
    }
    assert offending == set()


def test_registering_the_command_imports_neither_duckdb_nor_pyspark() -> None:
    code = (
        "import argparse, sys; from spasticity_cds.batch import cli; cli.add_arguments(argparse.ArgumentParser()); "
        "print(sorted(m for m in ('duckdb', 'pyspark') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
