"""The numbers each fact is compared with, so that its value is shown rounded no further than they allow."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final, TypeGuard

from spasticity_cds.engine.facts import Value
from spasticity_cds.knowledge.loader import KnowledgeBase
from spasticity_cds.knowledge.schema import Comparison, Node

#: Per fact: the fixed numbers and the names of the number settings the knowledge base compares it with.
Thresholds = dict[str, tuple[tuple[float, ...], tuple[str, ...]]]
#: A fact's name to the numbers its value must not be rounded across, or None when they are not all known.
BoundariesOf = Callable[[str], tuple[float, ...] | None]
#: Facts the dose plans compare with a patient's own limits (the kidney-adjusted ceiling, the steps): those numbers
#: are not the knowledge base's, so these keep the guarded default rounding.
COMPARED_WITH_PATIENT_LIMITS: Final = (".daily_dose", ".ceiling", ".max")


def thresholds(kb: KnowledgeBase) -> Thresholds:
    """Every fact a rule or definition compares with a number (a fixed value or a number setting), with those
    numbers; the eGFR also with every monograph's renal band edges, which the dose plans compare it with."""
    fixed: dict[str, set[float]] = {}
    named: dict[str, set[str]] = {}
    trees = [rule.when for rule in kb.rules.values()] + [d.when for d in kb.definitions.values()]
    for check in (check for tree in trees for check in _checks(tree)):
        if _is_number(check.value):
            fixed.setdefault(check.fact, set()).add(float(check.value))
        elif check.setting is not None and _is_number(kb.settings[check.setting].value):
            named.setdefault(check.fact, set()).add(check.setting)
    for monograph in kb.monographs.values():
        for band in monograph.renal_bands:
            fixed.setdefault("obs.egfr", set()).add(float(band.below_egfr))
    return {
        name: (tuple(sorted(fixed.get(name, ()))), tuple(sorted(named.get(name, ()))))
        for name in sorted(fixed.keys() | named.keys())
        if not name.endswith(COMPARED_WITH_PATIENT_LIMITS)
    }


def boundaries(found: Thresholds, name: str, settings: Mapping[str, Value]) -> tuple[float, ...] | None:
    """The numbers ``name`` is compared with under ``settings``; None for a fact the knowledge base compares with
    no fixed number (its display keeps the guarded default)."""
    entry = found.get(name)
    if entry is None:
        return None
    numbers, setting_names = entry
    if not setting_names:
        return numbers
    return numbers + tuple(float(value) for s in setting_names if _is_number(value := settings[s]))


def _checks(node: Node) -> Iterator[Comparison]:
    if node.check is not None:
        yield node.check
    for child in (*(node.all or ()), *(node.any or ()), *((node.not_,) if node.not_ is not None else ())):
        yield from _checks(child)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
