"""Hold the package's layering (design.md section 2) and its public API.

Imports point down only::

    errors <- knowledge <- fhir <- engine <- api <- cds_hooks / batch <- interfaces
    store  <- errors only

The pure core (knowledge, fhir, engine) never reads a clock, the network or an interface: ``now`` is an argument.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import spasticity_cds

PACKAGE = Path(spasticity_cds.__file__).resolve().parent
CORE = {"errors", "knowledge", "fhir", "engine"}

# Which sibling layers each layer may import (itself is always allowed).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "knowledge": {"errors"},
    "fhir": {"errors"},
    "engine": {"errors", "knowledge", "fhir"},
    "api": {"errors", "knowledge", "fhir", "engine"},
    "cds_hooks": {"errors", "knowledge", "fhir", "engine", "api"},
    "batch": {"errors", "knowledge", "fhir", "engine", "api"},
    "store": {"errors"},
    "demo": {"errors"},
    "synth": {"errors"},
}
# Third-party or standard modules the pure core must not touch.
FORBIDDEN_IN_CORE = {
    "httpx",
    "requests",
    "urllib",
    "socket",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "rich",
    "time",
    "random",
    "secrets",
    "os",
    "subprocess",
    "duckdb",
    "pyspark",
    "jwt",
}
CLOCK_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield parts[0], path


def imported(path: Path) -> Iterator[str]:
    """Absolute module names a file imports (relative imports resolved against the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package_parts = ["spasticity_cds", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield module
            if module == "spasticity_cds":
                yield from (f"spasticity_cds.{alias.name}" for alias in node.names)


def internal_layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "spasticity_cds" and len(parts) > 1 else None


LAYERED = [(layer, path) for layer, path in modules() if layer in ALLOWED]


@pytest.mark.parametrize(("layer", "path"), LAYERED, ids=[str(p.relative_to(PACKAGE)) for _, p in LAYERED])
def test_imports_point_down_only(layer: str, path: Path) -> None:
    for module in imported(path):
        target = internal_layer(module)
        if target is None or target == layer:
            continue
        assert target in ALLOWED[layer], f"{path.relative_to(PACKAGE)} ({layer}) imports {module}"


CORE_FILES = [path for layer, path in modules() if layer in CORE | {"api"}]


@pytest.mark.parametrize("path", CORE_FILES, ids=[str(p.relative_to(PACKAGE)) for p in CORE_FILES])
def test_the_core_has_no_io_clock_or_interface_imports(path: Path) -> None:
    for module in imported(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN_IN_CORE, f"{path.relative_to(PACKAGE)} imports {module}"
        assert internal_layer(module) not in {"interfaces", "store", "cds_hooks", "batch", "web"}, module


@pytest.mark.parametrize("path", CORE_FILES, ids=[str(p.relative_to(PACKAGE)) for p in CORE_FILES])
def test_the_core_never_reads_the_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in CLOCK_CALLS, (
                f"{path.relative_to(PACKAGE)}:{node.lineno} calls {node.value.id}.{node.attr}; pass `now` in"
            )


def test_every_layer_is_known() -> None:
    known = set(ALLOWED) | {"interfaces", "__init__"}
    for layer, path in modules():
        assert layer in known, f"{path.relative_to(PACKAGE)} is in no declared layer; add it to ALLOWED"


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that silently checks nothing."""
    engine_imports = set(imported(PACKAGE / "engine" / "evaluator.py"))
    assert "spasticity_cds.knowledge.loader" in engine_imports
    assert any(m.startswith("spasticity_cds.fhir") for m in engine_imports)


PUBLIC_API = [
    "AuthenticationError",
    "BatchError",
    "Engine",
    "EvaluationError",
    "HookRequestError",
    "InputError",
    "KnowledgeBaseError",
    "PatientRecord",
    "PrefetchUnavailableError",
    "SpasticityCdsError",
    "StoreError",
    "__version__",
    "evaluate",
    "explain",
    "load_knowledge_base",
    "read_patient",
    "to_json",
]


def test_public_api_is_pinned() -> None:
    assert sorted(spasticity_cds.__all__) == sorted(PUBLIC_API), "public API changed: update PUBLIC_API knowingly"
    for name in spasticity_cds.__all__:
        assert hasattr(spasticity_cds, name), name


def test_public_names_are_documented() -> None:
    for name in spasticity_cds.__all__:
        if name.startswith("__"):
            continue
        assert getattr(spasticity_cds, name).__doc__, f"{name} has no docstring"


def test_every_error_derives_from_the_base() -> None:
    for name in spasticity_cds.__all__:
        value = getattr(spasticity_cds, name)
        if isinstance(value, type) and name.endswith("Error"):
            assert issubclass(value, spasticity_cds.SpasticityCdsError)
