"""The store sits low in the layers: it may import only `spasticity_cds.errors` and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import spasticity_cds.store

STORE_DIR = Path(spasticity_cds.store.__file__).parent
ALLOWED = ("spasticity_cds.errors", "spasticity_cds.store")


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "spasticity_cds" or name.startswith("spasticity_cds.")}


def test_store_imports_only_errors_and_itself() -> None:
    offending = {
        f"{path.relative_to(STORE_DIR)}: {name}"
        for path in STORE_DIR.rglob("*.py")
        for name in _project_imports(path)
        if not any(name == allowed or name.startswith(f"{allowed}.") for allowed in ALLOWED)
    }

    assert offending == set()


def test_store_modules_use_no_relative_imports() -> None:
    relative = [
        str(path.relative_to(STORE_DIR))
        for path in STORE_DIR.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]

    assert relative == []
