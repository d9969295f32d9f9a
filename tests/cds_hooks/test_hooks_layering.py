"""cds_hooks is pure: it imports only api, engine, knowledge, fhir, errors and itself (plus httpx in the client)."""

from __future__ import annotations

import ast
from pathlib import Path

import spasticity_cds.cds_hooks as package

ALLOWED_INTERNAL = ("api", "engine", "knowledge", "fhir", "errors", "cds_hooks")
ALLOWED_EXTERNAL = {"msgspec", "orjson"}
EXTRA = {"fhir_client.py": {"httpx"}, "security.py": {"jwt"}}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_cds_hooks_imports_only_lower_layers() -> None:
    import sys

    folder = Path(package.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "spasticity_cds":
                assert name.split(".")[1] in ALLOWED_INTERNAL, f"{path.name} imports {name}"
            elif top not in sys.stdlib_module_names:
                assert top in ALLOWED_EXTERNAL | EXTRA.get(path.name, set()), f"{path.name} imports {name}"
