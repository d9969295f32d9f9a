"""Golden clinical vignettes: full results compared as parsed JSON, plus the clinician's must / must-not lists."""

from __future__ import annotations

import importlib.util
import random
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from spasticity_cds.api import evaluate, load_knowledge_base, to_json
from spasticity_cds.engine.evaluator import Engine

HERE = Path(__file__).resolve().parent


def _load_regenerate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vignette_regenerate", HERE / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regenerate = _load_regenerate()
FOLDERS: list[Path] = regenerate.folders()
IDS = [folder.name for folder in FOLDERS]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_knowledge_base()


@pytest.fixture(scope="module")
def results(engine: Engine) -> dict[str, dict[str, Any]]:
    return {folder.name: regenerate.run(folder, engine) for folder in FOLDERS}


def _matches(finding: dict[str, Any], wanted: str | dict[str, Any]) -> bool:
    if isinstance(wanted, str):
        return finding["rule_id"] == wanted and finding["kind"] != "data-gap"
    if finding["rule_id"] != wanted["rule_id"]:
        return False
    if "kind" not in wanted and finding["kind"] == "data-gap":
        return False
    return all(finding[key] == value for key, value in wanted.items() if key != "rule_id")


def test_there_are_enough_vignettes() -> None:
    assert len(FOLDERS) >= 30
    for folder in FOLDERS:
        for name in ("narrative.md", "bundle.json", "expect.json", "expected.json"):
            assert (folder / name).is_file(), f"{folder.name} lacks {name}"


@pytest.mark.parametrize("folder", FOLDERS, ids=IDS)
def test_result_matches_the_reviewed_golden_output(folder: Path, results: dict[str, dict[str, Any]]) -> None:
    expected = orjson.loads((folder / "expected.json").read_bytes())
    assert results[folder.name] == expected, (
        f"{folder.name}: output changed - run tests/vignettes/regenerate.py {folder.name[:2]} and review the diff"
    )


@pytest.mark.parametrize("folder", FOLDERS, ids=IDS)
def test_clinician_expectations(folder: Path, results: dict[str, dict[str, Any]]) -> None:
    expect = regenerate.expectations(folder)
    result = results[folder.name]
    findings = result["findings"]
    for wanted in expect["must"]:
        assert any(_matches(f, wanted) for f in findings), f"{folder.name}: missing {wanted}"
    for rule_id in expect["must_not"]:
        present = [f["id"] for f in findings if f["rule_id"] == rule_id]
        assert not present, f"{folder.name}: must not report {rule_id}, got {present}"
    statuses = {option["agent"]: option["status"] for option in result["options"]}
    for agent, status in expect["options"].items():
        assert statuses.get(agent) == status, f"{folder.name}: {agent} is {statuses.get(agent)}, expected {status}"
    for key in ("confidence", "in_scope"):
        if key in expect:
            assert result[key] == expect[key]
    assert result["evaluated_at"] == expect["now"]
    plans = {option["agent"]: option.get("dose_plan") or {} for option in result["options"]}
    for agent, wanted in expect.get("dose_plans", {}).items():
        _check_dose_plan(f"{folder.name}: {agent}", plans.get(agent, {}), wanted)
    monitoring = {option["agent"]: option.get("monitoring") or [] for option in result["options"]}
    for agent, tests in expect.get("monitoring", {}).items():
        _check_monitoring(f"{folder.name}: {agent}", monitoring.get(agent, []), tests)


def _check_monitoring(where: str, items: list[dict[str, Any]], wanted: dict[str, dict[str, Any]]) -> None:
    """Exactly the monitoring items expected (by test), each schedule holding the keys given."""
    assert [item["test"] for item in items] == list(wanted), f"{where}: monitoring {[i['test'] for i in items]}"
    for item in items:
        schedule = item.get("schedule", {})
        shown = {key: schedule.get(key) for key in wanted[item["test"]]}
        assert shown == wanted[item["test"]], f"{where}: {item['test']} schedule {schedule}"


def _check_dose_plan(where: str, plan: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Where the patient stands (``fit``), the daily doses of the steps up and of the reduction, how a withdrawal
    stops (the keys of ``stop`` given) and, when given, the agents named as its alternatives, as expected."""
    assert plan.get("placement", {}).get("fit") == wanted["fit"], f"{where}: placement {plan.get('placement')}"
    assert [step["daily"] for step in plan["steps"]] == wanted["steps"], f"{where}: steps {plan['steps']}"
    reduction = [step["daily"] for step in plan.get("reduction", {}).get("steps", [])]
    assert reduction == wanted.get("reduction", []), f"{where}: reduction {reduction}"
    stop = plan.get("reduction", {}).get("stop", {})
    assert {key: stop.get(key) for key in wanted.get("stop", {})} == wanted.get("stop", {}), f"{where}: stop {stop}"
    if "alternatives" in wanted:
        alternatives = [a["agent"] for a in plan.get("reduction", {}).get("alternatives", [])]
        assert alternatives == wanted["alternatives"], f"{where}: alternatives {alternatives}"


def test_every_active_rule_fires_in_some_vignette(engine: Engine, results: dict[str, dict[str, Any]]) -> None:
    fired = {f["rule_id"] for result in results.values() for f in result["findings"] if f["kind"] != "data-gap"}
    active = {compiled.rule.id for compiled in engine.rules}
    assert active - fired == set(), f"rules never firing in a vignette: {sorted(active - fired)}"


def test_every_must_names_an_active_rule(engine: Engine) -> None:
    active = {compiled.rule.id for compiled in engine.rules}
    for folder in FOLDERS:
        expect = regenerate.expectations(folder)
        named = [w if isinstance(w, str) else w["rule_id"] for w in expect["must"]] + list(expect["must_not"])
        assert set(named) <= active, f"{folder.name}: {sorted(set(named) - active)}"
        assert set(expect["options"]) <= {step.agent for step in engine.ladder}


def test_now_is_fixed_and_not_utc() -> None:
    for folder in FOLDERS:
        now = regenerate.expectations(folder)["now"]
        assert now == "2026-11-24T09:30:00-05:00", folder.name


def _reordered(bundle: dict[str, Any], order: str) -> dict[str, Any]:
    entries = list(bundle.get("entry") or [])
    if order == "reversed":
        entries.reverse()
    else:
        random.Random(7).shuffle(entries)
    return {**bundle, "entry": entries}


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
@pytest.mark.parametrize("folder", FOLDERS, ids=IDS)
def test_the_order_of_the_resources_does_not_change_the_result(
    folder: Path, order: str, engine: Engine, results: dict[str, dict[str, Any]]
) -> None:
    expect = regenerate.expectations(folder)
    bundle = orjson.loads((folder / "bundle.json").read_bytes())
    result = evaluate(
        _reordered(bundle, order),
        now=datetime.fromisoformat(expect["now"]),
        engine=engine,
        settings=expect.get("settings"),
    )
    canonical = orjson.loads(to_json(result))
    canonical["knowledge_base"]["digest"] = regenerate.DIGEST_MASK
    assert canonical == results[folder.name]
