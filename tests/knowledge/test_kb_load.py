"""The shipped knowledge base: loads, is versioned and digested, and refuses unknown settings."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.errors import InputError
from spasticity_cds.knowledge import loader
from spasticity_cds.knowledge.schema import Node

ENGINE = load_knowledge_base()
KB = ENGINE.kb


def test_the_shipped_knowledge_base_loads_with_every_rule_active() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", KB.version)
    assert KB.manifest.releases[0].version == KB.version, "the newest release entry is the current version"
    assert len(KB.rules) >= 56
    assert len(ENGINE.rules) == sum(1 for rule in KB.rules.values() if rule.active)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", KB.digest)
    assert "manifest.yaml" in KB.files and any(f.startswith("rules/") for f in KB.files)


def test_the_default_engine_is_loaded_once() -> None:
    assert load_knowledge_base() is load_knowledge_base()


def test_digest_is_stable_and_follows_content(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    shutil.copytree(loader.default_root(), root)
    assert loader.load(root).digest == KB.digest
    settings = root / "settings.yaml"
    settings.write_text(settings.read_text(encoding="utf-8") + "\n# a comment\n", encoding="utf-8")
    assert loader.load(root).digest != KB.digest


def test_every_rule_is_cited_and_versioned() -> None:
    for rule in KB.rules.values():
        assert rule.citations, rule.id
        assert max(change.version for change in rule.changes) == rule.version, rule.id
        assert all(ref.id in KB.citations for ref in rule.citations)
        assert set(rule.effects) <= set(rule.agents), rule.id


def test_hard_stops_rest_on_a_primary_source() -> None:
    for rule in KB.rules.values():
        if rule.kind == "contraindication" and "critical" in (rule.severity, rule.escalate_if_current):
            assert any(KB.citations[ref.id].status == "C-primary" for ref in rule.citations), rule.id


def test_thresholds_the_sources_do_not_give_are_named_settings() -> None:
    for name in ("severe_mas_grade", "focal_max_muscle_groups", "low_systolic_mmHg", "baclofen_severe_ckd_policy"):
        setting = KB.settings[name]
        assert setting.basis and setting.description, name


def test_settings_overrides_are_checked() -> None:
    assert ENGINE.settings_for({"jurisdiction": "uk"})["jurisdiction"] == "uk"
    assert ENGINE.settings_for({"severe_mas_grade": 2})["severe_mas_grade"] == 2
    with pytest.raises(InputError, match="unknown setting 'jurisdictoin'; did you mean 'jurisdiction'"):
        ENGINE.settings_for({"jurisdictoin": "uk"})
    with pytest.raises(InputError, match="jurisdiction must be one of us, uk"):
        ENGINE.settings_for({"jurisdiction": "fr"})


@pytest.mark.parametrize("value", ["abc", True, -5, float("nan"), float("inf"), None])
def test_a_numeric_setting_takes_only_a_number_from_zero_up(value: object) -> None:
    with pytest.raises(InputError, match="severe_mas_grade must be a number from 0 up"):
        ENGINE.settings_for({"severe_mas_grade": value})  # type: ignore[dict-item]


def test_suggest_finds_close_names_only() -> None:
    assert loader.suggest("baclofn", ["baclofen", "tizanidine"]) == "baclofen"
    assert loader.suggest("zzz", ["baclofen", "tizanidine"]) is None


def _facts_read(node: Node) -> set[str]:
    out = {node.check.fact} if node.check is not None else set()
    for child in (node.all or []) + (node.any or []) + ([node.not_] if node.not_ is not None else []):
        out |= _facts_read(child)
    return out


def test_the_palliative_benzodiazepine_s_company_covers_what_added_sedation_reads() -> None:
    """BENZO-PALLIATIVE-SEDATION speaks for ADDED-SEDATION's drugs beside a palliative benzodiazepine (1.6.1): the
    definition names them one by one (so the finding names the drug), and must name every concept of the class."""
    read = _facts_read(KB.definitions["sedating_beside_palliative_benzodiazepine"].when)
    members = {c.id for c in KB.valuesets.concepts if "sedating-co-medication" in c.classes}
    assert members and {f"med.{concept}.current_or_proposed" for concept in members} <= read
    assert KB.rules["ADDED-SEDATION"].quiet_when == "palliative_benzodiazepine_sedation_only"
