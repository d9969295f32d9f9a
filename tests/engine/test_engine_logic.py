"""Three-valued condition trees: truth tables, missing and stale facts, settings, definitions, tracing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from spasticity_cds.engine.facts import Fact, missing
from spasticity_cds.engine.logic import CompiledNode, Compiler, Env, Truth
from spasticity_cds.errors import KnowledgeBaseError
from spasticity_cds.knowledge.schema import Node

FACTS = {"obs.fvc", "obs.snip", "flag.a", "flag.b", "text.x"}
SETTINGS: dict[str, Any] = {"floor": 50, "policy": "avoid"}


def node(tree: dict[str, Any]) -> Node:
    return msgspec.convert(tree, Node)


def compile_(tree: dict[str, Any], definitions: set[str] | None = None) -> CompiledNode:
    return Compiler(FACTS, SETTINGS, definitions or set()).compile(node(tree), "test")


def env(definitions: dict[str, CompiledNode] | None = None, **values: Any) -> Env:
    facts: dict[str, Fact] = {}
    for name in FACTS:
        key = name.replace(".", "_")
        value = values.get(key)
        facts[name] = value if isinstance(value, Fact) else (missing(name) if value is None else Fact(name, value))
    return Env(facts, SETTINGS, definitions or {})


def check(fact: str, op: str = "is", value: Any = True) -> dict[str, Any]:
    return {"check": {"fact": fact, "op": op, "value": value}}


A, B = check("flag.a"), check("flag.b")
VALUES: list[bool | None] = [True, False, None]


@pytest.mark.parametrize("a", VALUES)
@pytest.mark.parametrize("b", VALUES)
def test_kleene_truth_tables(a: bool | None, b: bool | None) -> None:
    e = env(flag_a=a, flag_b=b)
    expected_all: Truth = False if False in (a, b) else (None if None in (a, b) else True)
    expected_any: Truth = True if True in (a, b) else (None if None in (a, b) else False)
    assert compile_({"all": [A, B]}).evaluate(e) is expected_all
    assert compile_({"any": [A, B]}).evaluate(e) is expected_any
    assert compile_({"not": A}).evaluate(e) is (None if a is None else not a)


def test_comparisons_on_missing_or_stale_facts_are_unknown() -> None:
    tree = compile_(check("obs.fvc", "lt", 50))
    assert tree.evaluate(env(obs_fvc=42.0)) is True
    assert tree.evaluate(env(obs_fvc=88.0)) is False
    assert tree.evaluate(env()) is None
    assert tree.evaluate(env(obs_fvc=Fact("obs.fvc", 42.0, stale=True))) is None


def test_a_comparison_of_incompatible_types_is_unknown_not_an_error() -> None:
    assert compile_(check("text.x", "lt", 3)).evaluate(env(text_x="high")) is None


def test_equality_membership_and_settings() -> None:
    assert compile_(check("text.x", "in", ["a", "b"])).evaluate(env(text_x="a")) is True
    assert compile_(check("setting.policy", "eq", "avoid")).evaluate(env()) is True
    below = compile_({"check": {"fact": "obs.fvc", "op": "lt", "setting": "floor"}})
    assert below.evaluate(env(obs_fvc=42.0)) is True
    assert "setting.floor" in below.label


def test_settings_can_be_overridden_per_evaluation() -> None:
    tree = compile_({"check": {"fact": "obs.fvc", "op": "lt", "setting": "floor"}})
    e = env(obs_fvc=55.0)
    assert tree.evaluate(e) is False
    assert tree.evaluate(Env(e.facts, {**SETTINGS, "floor": 60}, {})) is True


def test_definitions_are_evaluated_once_and_cached() -> None:
    inner = compile_(check("flag.a"))
    outer = compile_(check("def.low", "is", True), definitions={"low"})
    e = env({"low": inner}, flag_a=True)
    assert outer.evaluate(e) is True
    assert e.cache == {"low": True}
    assert compile_(check("def.low", "is", True), {"low"}).evaluate(env({"low": inner})) is None


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (check("obs.fcv", "lt", 50), "unknown fact 'obs.fcv'; did you mean 'obs.fvc'?"),
        (check("def.lwo"), "unknown definition 'lwo'; did you mean 'low'?"),
        (check("setting.flor", "eq", 1), "unknown setting 'flor'; did you mean 'floor'?"),
        ({"check": {"fact": "obs.fvc", "op": "lt", "setting": "flor"}}, "did you mean 'floor'?"),
        (check("obs.fvc", "lt", "fifty"), "lt needs a number"),
        ({"check": {"fact": "obs.fvc", "op": "lt", "value": 1, "setting": "floor"}}, "either value or setting"),
        ({"all": []}, "empty 'all' group"),
        ({}, "exactly one of all, any, not, check"),
        ({"all": [A], "any": [B]}, "exactly one of"),
    ],
)
def test_compile_errors_name_the_path_and_suggest(tree: dict[str, Any], message: str) -> None:
    with pytest.raises(KnowledgeBaseError, match="test") as raised:
        Compiler(FACTS, SETTINGS, {"low"}).compile(node(tree), "test")
    assert message in str(raised.value)


def test_every_node_has_a_path_and_trace_records_each_value() -> None:
    tree = compile_({"all": [A, {"any": [B, {"not": check("flag.a")}]}]})
    values: dict[str, Truth] = {}
    outcome = tree.trace(env(flag_a=True, flag_b=None), values)
    assert outcome is None
    assert values == {
        "test.all[0].check": True,
        "test.all[1].any[0].check": None,
        "test.all[1].any[1].not.check": True,
        "test.all[1].any[1]": False,
        "test.all[1]": None,
        "test": None,
    }


def test_deciding_nodes_explain_the_outcome() -> None:
    tree = compile_({"all": [A, B, check("obs.fvc", "lt", 50)]})
    assert [n.path for n in tree.deciding(env(flag_a=True, flag_b=False))] == ["test.all[1].check"]
    unknown = tree.deciding(env(flag_a=True, flag_b=True))
    assert [n.fact for n in unknown] == ["obs.fvc"]
    either = compile_({"any": [A, B]})
    assert [n.path for n in either.deciding(env(flag_a=False, flag_b=True))] == ["test.any[1].check"]


def test_facts_used_lists_each_fact_once_in_tree_order() -> None:
    tree = compile_({"any": [check("obs.fvc", "lt", 50), check("obs.snip", "lt", 40), check("obs.fvc", "lt", 30)]})
    assert tree.facts_used() == ["obs.fvc", "obs.snip"]


def test_an_out_of_date_value_counts_only_when_the_check_says_so_and_it_is_met() -> None:
    from spasticity_cds.engine.facts import Fact
    from spasticity_cds.engine.logic import _comparison

    old_low = {"obs.fvc": Fact("obs.fvc", 45.0, "%", "2025-01-01", stale=True)}
    old_normal = {"obs.fvc": Fact("obs.fvc", 85.0, "%", "2025-01-01", stale=True)}
    counting = _comparison("obs.fvc", "lt", 50, None, missing_is_false=False, stale_if_met=True)
    plain = _comparison("obs.fvc", "lt", 50, None, missing_is_false=False, stale_if_met=False)
    assert counting(Env(old_low, {}, {})) is True
    assert counting(Env(old_normal, {}, {})) is None  # it may have fallen since: unknown
    assert plain(Env(old_low, {}, {})) is None


def test_a_strict_twin_reads_an_out_of_date_value_as_unknown_even_when_it_counts() -> None:
    old_low = Fact("obs.fvc", 45.0, "%", "2025-01-01", stale=True)
    definitions = {"low": compile_({"check": {"fact": "obs.fvc", "op": "lt", "value": 50, "stale_if_met": True}})}
    tree = compile_({"not": check("def.low")}, definitions={"low"})
    lenient = env(definitions, obs_fvc=old_low)
    strict = lenient.strict_twin()
    assert strict.strict and not lenient.strict
    assert lenient.definition("low") is True and tree.evaluate(lenient) is False
    assert strict.definition("low") is None and tree.evaluate(strict) is None
    assert lenient.cache == {"low": True}, "the twin keeps a cache of its own"
