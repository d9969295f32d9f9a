"""How the plan page and the terminal list the options: what needs acting on first, then the ranking.

The result's ``options`` are in the engine's ranked order, where an option ruled out ranks with the avoided options,
often last. A drug the patient takes that is to be stopped or reduced, and a drug ordered or proposed (a draft order,
a proposal) that a rule rules out, need acting on now: the surfaces list them first, under their own headings, each
with the engine's rank. The result itself keeps the engine's order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spasticity_cds.engine.evaluator import RULED_OUT

#: The groups' keys and headings.
STOP_OR_REDUCE = ("stop-or-reduce", "Taken now: stop or reduce")
DO_NOT_START = ("do-not-start", "Ordered or proposed: do not start")
OTHER_OPTIONS = ("ranked", "The other options, in ranked order")


@dataclass(frozen=True)
class OptionGroup:
    """Options listed together, in the engine's ranked order, under a heading ("" when the only group)."""

    key: str
    heading: str
    options: list[dict[str, Any]]


def stops_or_reduces(option: Mapping[str, Any]) -> bool:
    """Whether the option is a drug the patient takes that is to be withdrawn (ruled out while taken) or brought down
    (a reduction in its dose plan)."""
    reduction = (option.get("dose_plan") or {}).get("reduction")
    return bool(option.get("current")) and (option["status"] in RULED_OUT or bool(reduction))


def not_to_start(option: Mapping[str, Any]) -> bool:
    """Whether the option is a drug ordered or proposed for the patient, not taken yet, that a rule rules out."""
    return bool(option.get("proposed")) and not option.get("current") and option["status"] in RULED_OUT


#: The groups listed before the ranking, in this order. No option is in both: the engine makes an option current or
#: proposed, never both.
ACTION_GROUPS: tuple[tuple[tuple[str, str], Callable[[Mapping[str, Any]], bool]], ...] = (
    (STOP_OR_REDUCE, stops_or_reduces),
    (DO_NOT_START, not_to_start),
)


def option_groups(options: list[dict[str, Any]]) -> list[OptionGroup]:
    """The options as listed: the drugs taken that are to be stopped or reduced, then the drugs ordered or proposed
    that are ruled out, then the others, each group in the engine's ranked order; one group without a heading when
    there is nothing to stop, reduce or leave unstarted."""
    groups = [
        OptionGroup(key, heading, chosen)
        for (key, heading), belongs in ACTION_GROUPS
        if (chosen := [option for option in options if belongs(option)])
    ]
    if not groups:
        return [OptionGroup(OTHER_OPTIONS[0], "", list(options))]
    others = [option for option in options if not any(belongs(option) for _, belongs in ACTION_GROUPS)]
    return groups + ([OptionGroup(*OTHER_OPTIONS, others)] if others else [])


def taking_words(option: Mapping[str, Any]) -> str:
    """Whether the patient takes the agent or it is being ordered, as the plan page and the terminal mark it: said
    where the status does not ("current"), and for a use outside the ladder too."""
    if option["current"] and option["status"] != "current":
        return "taking it now"
    outside = option.get("outside_ladder")
    if outside:
        return f"{'taking it now' if outside['state'] == 'current' else 'being ordered'}, outside the spasticity ladder"
    return "ordered or proposed" if option["proposed"] else ""
