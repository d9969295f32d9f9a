"""Regenerate the golden ``expected.json`` of the clinical vignettes.

    python tests/vignettes/regenerate.py              # every vignette
    python tests/vignettes/regenerate.py 07 21-itb     # folders whose name starts with these
    python tests/vignettes/regenerate.py --summary     # print findings and options, write nothing

Review every changed ``expected.json`` clinically (``git diff``) before committing it: the golden files are
the clinical sign-off of the engine's output, not a snapshot to refresh blindly.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent
DIGEST_MASK = "<knowledge-base digest: not compared>"

try:
    import spasticity_cds  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT.parents[1] / "src"))

from spasticity_cds.api import evaluate, load_knowledge_base, to_json  # noqa: E402
from spasticity_cds.engine.evaluator import Engine  # noqa: E402


def folders() -> list[Path]:
    """Every vignette folder, in name order."""
    return sorted(path for path in ROOT.iterdir() if path.is_dir() and (path / "bundle.json").is_file())


def expectations(folder: Path) -> dict[str, Any]:
    """The hand-written ``expect.json`` of one vignette."""
    loaded: dict[str, Any] = orjson.loads((folder / "expect.json").read_bytes())
    return loaded


def run(folder: Path, engine: Engine | None = None) -> dict[str, Any]:
    """The engine's result for one vignette at its fixed ``now``, settings applied, digest masked."""
    expect = expectations(folder)
    result = evaluate(
        (folder / "bundle.json").read_bytes(),
        now=datetime.fromisoformat(expect["now"]),
        engine=engine or load_knowledge_base(),
        settings=expect.get("settings"),
    )
    canonical: dict[str, Any] = orjson.loads(to_json(result))
    canonical["knowledge_base"]["digest"] = DIGEST_MASK
    return canonical


def summary(folder: Path, result: dict[str, Any]) -> str:
    """A few lines a clinician can scan: findings and option statuses."""
    lines = [f"== {folder.name}  confidence={result['confidence']} in_scope={result['in_scope']}"]
    lines += [f"   {f['severity']:8} {f['kind']:16} {f['id']}: {f['summary']}" for f in result["findings"]]
    lines.append("   options: " + ", ".join(f"{o['agent']}={o['status']}" for o in result["options"]))
    lines += [f"   note: {note}" for note in result["input_notes"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    show_only = "--summary" in argv
    prefixes = [arg for arg in argv if not arg.startswith("--")]
    engine = load_knowledge_base()
    for folder in folders():
        if prefixes and not any(folder.name.startswith(prefix) for prefix in prefixes):
            continue
        result = run(folder, engine)
        if show_only:
            print(summary(folder, result))
            continue
        (folder / "expected.json").write_bytes(to_json(result, pretty=True) + b"\n")
        print(f"wrote {folder.name}/expected.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
