"""Condition trees compiled once into three-valued closures (true, false, unknown) with per-node tracing."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spasticity_cds.engine.facts import Fact, Value
from spasticity_cds.errors import KnowledgeBaseError
from spasticity_cds.knowledge.loader import did_you_mean
from spasticity_cds.knowledge.schema import Comparison, Node

Truth = bool | None
NUMERIC_OPS = frozenset({"lt", "le", "gt", "ge"})


@dataclass
class Env:
    """What one evaluation reads: the patient's facts, the settings in force, and cached definitions.

    ``strict`` ignores every check's ``stale_if_met``: an out-of-date value is then always unknown. Comparing a
    tree's strict value with its ordinary one tells whether its outcome rests on out-of-date data.
    """

    facts: Mapping[str, Fact]
    settings: Mapping[str, Value]
    definitions: Mapping[str, CompiledNode]
    cache: dict[str, Truth] = field(default_factory=dict)
    strict: bool = False

    def strict_twin(self) -> Env:
        """The same facts and settings read strictly (with a cache of its own)."""
        return Env(self.facts, self.settings, self.definitions, strict=True)

    def definition(self, name: str) -> Truth:
        if name not in self.cache:
            self.cache[name] = self.definitions[name].evaluate(self)
        return self.cache[name]


@dataclass(frozen=True)
class CompiledNode:
    """One node of a rule's tree, with its path, its children and a fast evaluator."""

    path: str
    label: str
    evaluate: Callable[[Env], Truth]
    children: tuple[CompiledNode, ...] = ()
    fact: str | None = None

    def trace(self, env: Env, out: dict[str, Truth]) -> Truth:
        """Evaluate every node (no short-cut) and record each value by path, for explanations."""
        for child in self.children:
            child.trace(env, out)
        value = self.evaluate(env)
        out[self.path] = value
        return value

    def deciding(self, env: Env) -> list[CompiledNode]:
        """The nodes that settled this node's value: the first false of an ``all``, every unknown leaf, ..."""
        value = self.evaluate(env)
        if not self.children:
            return [self]
        if self.label == "not":
            return self.children[0].deciding(env)
        if value is None:
            unknown = [c for c in self.children if c.evaluate(env) is None]
            return [node for child in unknown for node in child.deciding(env)]
        decisive = value if self.label == "any" else not value
        wanted = value if self.label == "any" else False
        if decisive:
            first = next(c for c in self.children if c.evaluate(env) is wanted)
            return first.deciding(env)
        return [node for child in self.children for node in child.deciding(env)]

    def facts_used(self) -> list[str]:
        """Fact names read anywhere below this node, in tree order, without repeats."""
        names: list[str] = []
        if self.fact:
            names.append(self.fact)
        for child in self.children:
            names.extend(name for name in child.facts_used() if name not in names)
        return names


class Compiler:
    """Compiles trees against the declared fact names, definitions and settings; errors name the path."""

    def __init__(self, fact_names: set[str], settings: Mapping[str, Value], definitions: set[str]) -> None:
        self.fact_names = fact_names
        self.settings = settings
        self.definitions = definitions

    def compile(self, node: Node, path: str) -> CompiledNode:
        branches = [name for name in ("all", "any", "not_", "check") if getattr(node, name) is not None]
        if len(branches) != 1:
            raise KnowledgeBaseError("a condition node needs exactly one of all, any, not, check", where=path)
        if node.all is not None:
            return self._group("all", node.all, path)
        if node.any is not None:
            return self._group("any", node.any, path)
        if node.not_ is not None:
            inner = self.compile(node.not_, f"{path}.not")
            return CompiledNode(path, "not", _negate(inner.evaluate), (inner,))
        assert node.check is not None
        return self._check(node.check, f"{path}.check")

    def _group(self, label: str, nodes: list[Node], path: str) -> CompiledNode:
        if not nodes:
            raise KnowledgeBaseError(f"an empty {label!r} group", where=path)
        children = tuple(self.compile(child, f"{path}.{label}[{i}]") for i, child in enumerate(nodes))
        evaluators = tuple(child.evaluate for child in children)
        return CompiledNode(path, label, _all(evaluators) if label == "all" else _any(evaluators), children)

    def _check(self, check: Comparison, path: str) -> CompiledNode:
        name = check.fact
        if name.startswith("def."):
            if name[4:] not in self.definitions:
                raise KnowledgeBaseError(self._unknown("definition", name[4:], self.definitions), where=path)
            return CompiledNode(path, f"{name} {check.op} {check.value}", _definition(name[4:], check), fact=name)
        if name.startswith("setting."):
            if name[8:] not in self.settings:
                raise KnowledgeBaseError(self._unknown("setting", name[8:], set(self.settings)), where=path)
        elif name not in self.fact_names:
            raise KnowledgeBaseError(self._unknown("fact", name, self.fact_names), where=path)
        threshold = self._threshold(check, path)
        if check.op in NUMERIC_OPS and not isinstance(threshold, int | float):
            raise KnowledgeBaseError(f"{check.op} needs a number, got {threshold!r}", where=path)
        label = f"{name} {check.op} " + (f"setting.{check.setting}" if check.setting else repr(threshold))
        if check.if_missing == "false":
            label += " (not measured counts as not met)"
        if check.stale_if_met:
            label += " (an out-of-date value counts when it meets this)"
        evaluate = _comparison(
            name,
            check.op,
            threshold,
            check.setting,
            missing_is_false=check.if_missing == "false",
            stale_if_met=check.stale_if_met,
        )
        return CompiledNode(path, label, evaluate, fact=name)

    def _threshold(self, check: Comparison, path: str) -> Any:
        if check.setting is not None:
            if check.value is not None:
                raise KnowledgeBaseError("give either value or setting, not both", where=path)
            if check.setting not in self.settings:
                raise KnowledgeBaseError(self._unknown("setting", check.setting, set(self.settings)), where=path)
            return self.settings[check.setting]
        return check.value

    @staticmethod
    def _unknown(kind: str, name: str, known: set[str]) -> str:
        return f"unknown {kind} {name!r}" + did_you_mean(name, known)


def _negate(inner: Callable[[Env], Truth]) -> Callable[[Env], Truth]:
    def evaluate(env: Env) -> Truth:
        value = inner(env)
        return None if value is None else not value

    return evaluate


def _all(children: tuple[Callable[[Env], Truth], ...]) -> Callable[[Env], Truth]:
    return _combine(children, decisive=False)


def _any(children: tuple[Callable[[Env], Truth], ...]) -> Callable[[Env], Truth]:
    return _combine(children, decisive=True)


def _combine(children: tuple[Callable[[Env], Truth], ...], *, decisive: bool) -> Callable[[Env], Truth]:
    """Three-valued ``all`` (decisive False) or ``any`` (decisive True): one decisive child settles it,
    else any unknown child makes it unknown."""

    def evaluate(env: Env) -> Truth:
        unknown = False
        for child in children:
            value = child(env)
            if value is decisive:
                return decisive
            if value is None:
                unknown = True
        return None if unknown else not decisive

    return evaluate


def _definition(name: str, check: Comparison) -> Callable[[Env], Truth]:
    expected = True if check.value is None else check.value

    def evaluate(env: Env) -> Truth:
        value = env.definition(name)
        return None if value is None else value is expected

    return evaluate


def _comparison(
    name: str, op: str, threshold: Any, threshold_setting: str | None, *, missing_is_false: bool, stale_if_met: bool
) -> Callable[[Env], Truth]:
    is_setting = name.startswith("setting.")
    when_missing: Truth = False if missing_is_false else None
    setting_name = name[8:]
    compare = _OPERATORS[op]

    def evaluate(env: Env) -> Truth:
        limit = env.settings[threshold_setting] if threshold_setting else threshold
        if is_setting:
            actual: Any = env.settings[setting_name]
        else:
            fact = env.facts[name]
            actual = fact.value
            if actual is None:
                return when_missing
            if fact.stale:
                met = _compared(compare, actual, limit)
                return True if stale_if_met and met and not env.strict else when_missing
        # The comparison inline, not through _compared: this runs for every check of every rule for every patient.
        try:
            return bool(compare(actual, limit))
        except TypeError:  # a value of another kind than the threshold (text against a number) cannot decide
            return None

    return evaluate


def _compared(compare: Callable[[Any, Any], bool], actual: Any, limit: Any) -> Truth:
    try:
        return bool(compare(actual, limit))
    except TypeError:
        return None


def _is(actual: Any, expected: Any) -> bool:
    return actual is (True if expected is None else expected)


def _within(actual: Any, allowed: Any) -> bool:
    return actual in allowed


#: The comparisons: the operator module's own functions where one exists (C, no Python frame per check).
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "in": _within,
    "is": _is,
}
