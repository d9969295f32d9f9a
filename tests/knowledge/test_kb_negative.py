"""Knowledge-base negative fixtures: each folder under ``negative/`` names one defect.

A fixture is a ``defect.yaml`` (the file to break, the text to replace, the error expected), applied at test
time to a fresh copy of the shipped knowledge base in ``tmp_path`` - no broken copies are committed. Every
defect must fail at load with a ``KnowledgeBaseError`` that names the file and the path inside it and, for a
misspelt name, suggests the right one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.errors import KnowledgeBaseError
from spasticity_cds.knowledge import loader

NEGATIVE = Path(__file__).resolve().parent / "negative"
DEFECTS = sorted(path for path in NEGATIVE.iterdir() if (path / "defect.yaml").is_file())


def broken_copy(defect: dict[str, Any], tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    shutil.copytree(loader.default_root(), root)
    target = root / defect["file"]
    text = target.read_text(encoding="utf-8")
    if "pattern" in defect:
        changed, count = re.subn(defect["pattern"], defect["new"], text, count=1)
    else:
        count = text.count(defect["old"])
        changed = text.replace(defect["old"], defect["new"], 1)
    assert count >= 1, f"the fixture no longer matches {defect['file']}; update it to the current knowledge base"
    target.write_text(changed, encoding="utf-8")
    return root


def test_there_is_a_fixture_per_required_defect() -> None:
    names = {path.name for path in DEFECTS}
    assert {
        "misspelt-field",
        "unknown-citation",
        "unknown-fact-in-rule",
        "unknown-agent",
        "hard-stop-without-c-primary",
        "rule-version-without-changelog",
        "bad-semver",
        "duplicate-rule-id",
        "yaml-syntax-error",
        "definition-cycle",
        "unknown-setting",
    } <= names


def test_an_unbroken_copy_loads(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    shutil.copytree(loader.default_root(), root)
    engine = load_knowledge_base(root)
    assert engine.kb.digest == load_knowledge_base().kb.digest


@pytest.mark.parametrize("folder", DEFECTS, ids=[path.name for path in DEFECTS])
def test_defect_fails_at_load_naming_file_path_and_fix(folder: Path, tmp_path: Path) -> None:
    defect = yaml.safe_load((folder / "defect.yaml").read_text(encoding="utf-8"))
    root = broken_copy(defect, tmp_path)
    with pytest.raises(KnowledgeBaseError) as raised:
        load_knowledge_base(root)
    error = raised.value
    assert error.where is not None
    assert defect["where"] in error.where, f"{error.where!r} does not name {defect['where']!r}"
    for fragment in defect["message"]:
        assert fragment in error.message, f"{error.message!r} lacks {fragment!r}"
    assert error.exit_code == 3


def test_a_missing_folder_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match="knowledge-base folder not found"):
        load_knowledge_base(tmp_path / "nowhere")
    root = tmp_path / "kb"
    shutil.copytree(loader.default_root(), root)
    (root / "ladder.yaml").unlink()
    with pytest.raises(KnowledgeBaseError, match="file is missing") as raised:
        load_knowledge_base(root)
    assert raised.value.where == "ladder.yaml"
