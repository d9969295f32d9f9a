"""Dose ceilings and titration plans from the drug monographs, adjusted to kidney function and jurisdiction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal

from spasticity_cds.engine.facts import Fact, Value, missing
from spasticity_cds.knowledge.schema import CitationRef, DoseStep, Monograph, RenalBand, Statement, StopAtOnce

Cite = Callable[[list[CitationRef]], list[dict[str, Any]]]
#: Facts that place a patient below every renal band when no eGFR can be used.
KIDNEY_FAILURE_FACTS = ("procedure.dialysis", "condition.kidney-failure")


def renal_band(monograph: Monograph, egfr: Fact) -> RenalBand | None:
    """The narrowest renal band the eGFR falls in (bands are upper bounds, lowest wins)."""
    if not egfr.usable or not isinstance(egfr.value, int | float):
        return None
    value = egfr.value
    matching = [b for b in monograph.renal_bands if value < b.below_egfr or (b.inclusive and value == b.below_egfr)]
    return min(matching, key=lambda band: band.below_egfr) if matching else None


def maximum(monograph: Monograph, settings: Mapping[str, Value]) -> float | None:
    """The labelled daily maximum for the jurisdiction in force."""
    jurisdiction = str(settings["jurisdiction"])
    return monograph.max_daily.get(jurisdiction)


def dose_facts(monograph: Monograph, facts: Mapping[str, Fact], settings: Mapping[str, Value]) -> dict[str, Fact]:
    """``dose.<agent>.*`` facts: maximum, kidney-adjusted ceiling, and whether the dose in use exceeds them."""
    prefix = f"dose.{monograph.id}"
    out: dict[str, Fact] = {}
    top = maximum(monograph, settings)
    unit = f"{monograph.max_unit}/day"
    out[f"{prefix}.max"] = Fact(f"{prefix}.max", top, unit) if top is not None else missing(f"{prefix}.max")
    scaled = settings["renal_fraction_ceiling"] == "scaled-maximum"
    ceiling = _ceiling(monograph, top, facts.get("obs.egfr"), unit, _failing(facts), scaled=scaled)
    out[f"{prefix}.ceiling"] = ceiling
    daily = facts[f"med.{monograph.concept}.daily_dose"]
    out[f"{prefix}.above_max"] = _above(f"{prefix}.above_max", daily, out[f"{prefix}.max"])
    out[f"{prefix}.above_ceiling"] = _above(f"{prefix}.above_ceiling", daily, ceiling)
    out[f"{prefix}.at_max"] = _above(f"{prefix}.at_max", daily, out[f"{prefix}.max"], inclusive=True)
    return out


def _ceiling(
    monograph: Monograph, top: float | None, egfr: Fact | None, unit: str, failing: list[Fact], *, scaled: bool
) -> Fact:
    """The daily ceiling: the labelled maximum cut by the renal band the eGFR falls in; with no usable eGFR but
    kidney failure or dialysis on record, the lowest band (their eGFR is below every band). A band that reduces by
    a fraction scales the maximum only when ``scaled`` (the ``renal_fraction_ceiling`` setting)."""
    name = f"dose.{monograph.id}.ceiling"
    if top is None:
        return missing(name, "no labelled maximum")
    if not _kidney_dosed(monograph):
        return Fact(name, top, unit, note="labelled maximum")
    found = _kidney_band(monograph, egfr, failing)
    if found is None:
        return missing(name, "kidney function (eGFR) missing or stale")
    band, sources, why = found
    if band is None:
        return Fact(name, top, unit, sources=sources, note="labelled maximum; no renal reduction at this eGFR")
    if band.action == "caution":
        return Fact(name, top, unit, sources=sources, note=f"labelled maximum; caution at {why(band)}")
    if band.action == "avoid":
        return Fact(name, 0.0, unit, sources=sources, note=f"avoid at {why(band)}")
    if band.max_daily is not None:
        return Fact(name, band.max_daily, unit, sources=sources, note=f"renal band {why(band)}")
    fraction = band.fraction_of_usual or 1.0
    if not scaled:
        note = (
            f"labelled maximum; at {why(band)} reduce the dose to about {fraction:g} (setting renal_fraction_ceiling)"
        )
        return Fact(name, top, unit, sources=sources, note=note)
    return Fact(
        name, round(top * fraction, 1), unit, sources=sources, note=f"{fraction:g} of the maximum at {why(band)}"
    )


def _failing(facts: Mapping[str, Fact]) -> list[Fact]:
    """The kidney-failure or dialysis facts that are true in this record."""
    return [facts[name] for name in KIDNEY_FAILURE_FACTS if name in facts and facts[name].value is True]


def _kidney_band(
    monograph: Monograph, egfr: Fact | None, failing: list[Fact]
) -> tuple[RenalBand | None, tuple[str, ...], Callable[[RenalBand], str]] | None:
    """The renal band in force, the record entries it rests on and how to name it; None when kidney function is
    unknown. With no usable eGFR but kidney failure or dialysis on record: the lowest band."""
    if egfr is not None and egfr.usable:
        return renal_band(monograph, egfr), egfr.sources, _band_text
    if failing and monograph.renal_bands:
        lowest = min(monograph.renal_bands, key=lambda band: band.below_egfr)
        return lowest, tuple(source for fact in failing for source in fact.sources), _failure_text
    return None


def _band_text(band: RenalBand) -> str:
    return f"eGFR {'<=' if band.inclusive else '<'} {band.below_egfr:g}"


def _failure_text(band: RenalBand) -> str:
    return f"kidney failure or dialysis with no current eGFR (the band eGFR < {band.below_egfr:g})"


def _above(name: str, daily: Fact, limit: Fact, *, inclusive: bool = False) -> Fact:
    if not daily.usable or not limit.usable:
        return missing(name, daily.note if not daily.usable else limit.note)
    assert isinstance(daily.value, int | float) and isinstance(limit.value, int | float)
    margin = -1e-9 if inclusive else 1e-9
    return Fact(name, daily.value > limit.value + margin, sources=daily.sources + limit.sources)


#: Tolerance when daily doses are compared (they are sums of floats).
EPSILON = 1e-9
#: How far a patient taking or being ordered an agent stands on its titration steps.
Fit = Literal["steps-remain", "no-step-remains", "held", "above-limit", "dose-unknown"]
#: Why the steps up of a drug whose dose depends on kidney function wait, said once in its placement.
KIDNEY_UNKNOWN = "its kidney-adjusted ceiling is unknown (no current eGFR)"
LimitBasis = Literal["ceiling", "maximum"]


@dataclass(frozen=True)
class Placement:
    """Where a patient who takes (``current``) or is being ordered (``ordered``) an agent stands on its steps.

    ``limit`` is the ceiling in force, else the labelled maximum; ``first`` the index of the first monograph step
    above the daily dose; ``wait`` the days from today to that step; ``held`` the days on the drug counted in it.
    """

    state: Literal["current", "ordered"]
    daily: Fact
    amount: float | None
    fit: Fit
    limit: float | None
    limit_basis: LimitBasis | None
    first: int = 0
    wait: int = 0
    held: int | None = None
    #: Why the steps that remain are not offered now (``fit`` "held").
    held_because: str | None = None

    def shown_unit(self, monograph: Monograph) -> str:
        """The unit the placement speaks in: the daily dose's own when it was read, else the monograph's."""
        return self.daily.unit if self.amount is not None and self.daily.unit else _unit(monograph)

    def to_dict(self, monograph: Monograph, text: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "daily": self.amount,
            "unit": self.shown_unit(monograph),
            "fit": self.fit,
            "limit": self.limit,
            "limit_basis": self.limit_basis,
            "text": text or _placement_text(self, monograph),
        }
        if self.daily.sources:
            out["sources"] = list(self.daily.sources)
        return out


def dose_plan(
    monograph: Monograph,
    facts: Mapping[str, Fact],
    settings: Mapping[str, Value],
    now: datetime,
    cite: Cite,
    *,
    pace: list[CitationRef],
    hold: str | None = None,
) -> dict[str, Any] | None:
    """Start, dated titration steps capped at the ceiling in force and the basis of that ceiling; for an agent taken
    or ordered, where the patient stands (``placement``): the steps that remain above the daily dose, or, above the
    limit while it is taken, a gradual ``reduction`` to it at the pace of the setting ``pace`` cites. Steps up are
    not offered (``held``) while ``hold`` says why (a caution on the agent) or its kidney-adjusted ceiling is
    unknown."""
    if monograph.start is None and not monograph.steps:
        return None
    ceiling = facts.get(f"dose.{monograph.id}.ceiling")
    cap = _cap(ceiling)
    top = maximum(monograph, settings)
    today = now.date()
    placement = _held_back(_place(monograph, facts, cap, top), hold, monograph, cap)
    plan: dict[str, Any] = {"steps": _plan_steps(monograph, placement, cap, today), "unit": monograph.max_unit}
    if monograph.start is not None:
        plan["start"] = _statement(monograph.start, cite)
    if monograph.titration is not None:
        plan["titration"] = _statement(monograph.titration, cite)
    if top is not None:
        plan["max_daily"] = top
        plan["jurisdiction"] = settings["jurisdiction"]
    if monograph.max_basis is not None:
        plan["max_basis"] = _statement(monograph.max_basis, cite)
    if ceiling is not None:
        plan["ceiling"] = ceiling.to_dict()
    if placement is not None:
        plan["placement"] = placement.to_dict(monograph)
        if placement.fit == "above-limit" and placement.state == "current" and monograph.steps:
            every = int(settings["dose_reduction_step_days"])
            plan["reduction"] = _reduction(monograph, placement, today, every, cite, pace)
    renal = _renal_adjustment(monograph, facts, capped=cap is not None and top is not None and cap < top, cite=cite)
    if renal is not None:
        plan["renal_adjustment"] = renal
    return plan


def _cap(ceiling: Fact | None) -> float | None:
    """The kidney-adjusted ceiling as a number, when it is known."""
    if ceiling is None or not ceiling.usable or not isinstance(ceiling.value, int | float):
        return None
    return float(ceiling.value)


@dataclass(frozen=True)
class Withdrawal:
    """Why an agent the patient takes is withdrawn: the rules that ruled it out (``because``, as the option's
    reasons, cited) and, where the sources say to stop it at once, their statement (``stop_now``)."""

    because: list[dict[str, Any]]
    stop_now: StopAtOnce | None = None
    #: A ruling-out finding is critical for this patient (an acute danger): the routine pace of a taper does not
    #: apply, so none is dated.
    urgent: bool = False


@dataclass(frozen=True)
class Alternative:
    """Another agent whose being taken (``current``) or ordered is the whole reason a rule (``rule_id``, whose
    ``exclusive_with`` names it) rules this one out: withdrawing this one is then one of two ways to settle it.
    ``withdrawn_anyway``: a rule of its own rules the other agent out too, so it goes whatever is done here."""

    agent: str
    name: str
    state: Literal["current", "ordered"]
    rule_id: str
    withdrawn_anyway: bool = False


def mark_alternatives(plan: dict[str, Any], monograph: Monograph, alternatives: list[Alternative]) -> None:
    """Make a withdrawal plan say that it is one of two alternatives (its ``reduction.alternatives``, and the
    placement's text): withdraw this agent or the other, not both; withdraw it or do not start the other; or, where
    the other goes anyway, that this one need not be withdrawn once the other is stopped."""
    reduction = plan["reduction"]
    reduction["alternatives"] = [
        {
            "agent": other.agent,
            "name": other.name,
            "state": other.state,
            "withdrawn_anyway": other.withdrawn_anyway,
            "rule_id": other.rule_id,
            "text": _alternative_text(monograph, other),
        }
        for other in alternatives
    ]
    placement = plan["placement"]
    if placement.get("daily") is not None:
        taken = f"Taken at {placement['daily']:g} {placement['unit']}"
    else:
        taken = "Taken now"
    others = " or ".join(other.name for other in alternatives)
    placement["text"] = (
        f"{taken}, but ruled out for this patient only because of {others}: no titration step up; the withdrawal "
        "(reduction) is one way to settle it - see its alternatives."
    )


def _alternative_text(monograph: Monograph, other: Alternative) -> str:
    this = monograph.name
    why = f"{this} is ruled out only because {other.name} is {'taken' if other.state == 'current' else 'being ordered'}"
    if other.withdrawn_anyway:
        gone = "stopped" if other.state == "current" else "not started"
        return (
            f"{why} ({other.rule_id}), and {other.name} is ruled out for another reason as well: once {other.name} "
            f"is {gone}, {this} need not be withdrawn."
        )
    if other.state == "ordered":
        return f"{why} ({other.rule_id}): withdraw {this}, or do not start {other.name}."
    return f"{why} too ({other.rule_id}): withdraw {this} or {other.name}, not both."


def withdrawal_plan(
    monograph: Monograph,
    facts: Mapping[str, Fact],
    settings: Mapping[str, Value],
    now: datetime,
    cite: Cite,
    *,
    pace: list[CitationRef],
    withdrawal: Withdrawal,
) -> dict[str, Any] | None:
    """For an agent the patient takes that a rule rules out: where the patient stands and a ``reduction`` to
    stopping (no start, no steps up); None when it is not taken (only ordered, or not at all). The agent is ruled
    out, so no dose limit applies: the placement says where the dose stands on the titration steps alone."""
    placement = _place(monograph, facts, None, None)
    if placement is None or placement.state != "current":
        return None
    every = int(settings["dose_reduction_step_days"])
    reduction = _to_stop(monograph, placement, now.date(), every, cite, pace, withdrawal)
    return {
        "steps": [],
        "unit": monograph.max_unit,
        "placement": placement.to_dict(monograph, _withdrawn_text(placement, monograph)),
        "reduction": reduction,
    }


def _to_stop(
    monograph: Monograph,
    placement: Placement,
    today: date,
    every: int,
    cite: Cite,
    pace: list[CitationRef],
    withdrawal: Withdrawal,
) -> dict[str, Any]:
    """The way off the agent: stop today where the sources say so; else down the titration steps in reverse, one
    every ``every`` days, the first today, then stop; undated without a readable dose or titration steps, or when a
    critical finding rules it out (the routine pace is no answer to an acute danger)."""
    out: dict[str, Any] = {"target_daily": 0.0, "unit": _unit(monograph), "because": withdrawal.because}
    stop = withdrawal.stop_now
    if stop is not None:
        statement = {"text": stop.text, "citations": cite(stop.citations)}
        text = f"Stop {monograph.name} today rather than taper it: the sources advise stopping it in this situation."
        when = {"how": "at-once", "day": 0, "date": today.isoformat()}
        return out | {"steps": [], "stop": when, "text": text, "stop_at_once": statement}
    if monograph.taper is not None:
        out["taper"] = _statement(monograph.taper, cite)
    if placement.amount is None or not monograph.steps:
        return out | {"steps": [], "stop": {"how": "undated"}, "text": _undated_text(monograph)}
    if withdrawal.urgent:
        return out | {"steps": [], "stop": {"how": "undated"}, "text": _urgent_text(monograph)}
    steps = _down_steps(monograph, placement.amount, 0.0, today, every)
    day = max(len(steps), 1) * every
    stop_date = (today + timedelta(days=day)).isoformat()
    when = {"how": "taper", "day": day, "date": stop_date}
    text = _taper_text(monograph, placement.amount, steps, every, stop_date)
    return out | {"steps": steps, "step_days": every, "stop": when, "text": text, "pace": _pace(every, cite, pace)}


def _pace(every: int, cite: Cite, pace: list[CitationRef]) -> dict[str, Any]:
    return {
        "text": f"One titration step down every {every} days, the first today (setting dose_reduction_step_days).",
        "citations": cite(pace),
    }


def _place(monograph: Monograph, facts: Mapping[str, Fact], cap: float | None, top: float | None) -> Placement | None:
    """Where the patient stands on the agent's steps; None when it is neither taken nor being ordered."""
    prefix = f"med.{monograph.concept}"
    current = facts.get(f"{prefix}.current")
    proposed = facts.get(f"{prefix}.proposed")
    if current is None or proposed is None or not (current.value is True or proposed.value is True):
        return None
    state: Literal["current", "ordered"] = "current" if current.value is True else "ordered"
    daily = facts[f"{prefix}.daily_dose"]
    limit, basis = _limit(cap, top)
    amount = _amount(daily, monograph)
    if amount is None:
        return Placement(state, daily, None, "dose-unknown", limit, basis)
    if limit is not None and amount > limit + EPSILON:
        return Placement(state, daily, amount, "above-limit", limit, basis)
    steps = monograph.steps
    first = next((i for i, step in enumerate(steps) if _daily(step) > amount + EPSILON), len(steps))
    remains = first < len(steps) and (cap is None or _daily(steps[first]) <= cap + EPSILON)
    if not remains:
        return Placement(state, daily, amount, "no-step-remains", limit, basis, first)
    held = _held(facts.get(f"{prefix}.days_on"), first, state)
    gap = steps[first].day - steps[first - 1].day if first > 0 else 0
    return Placement(state, daily, amount, "steps-remain", limit, basis, first, max(0, gap - (held or 0)), held)


def _kidney_dosed(monograph: Monograph) -> bool:
    """Whether a renal band lowers the agent's dose (not only a caution band, or none)."""
    return any(band.action != "caution" for band in monograph.renal_bands)


def _held_back(
    placement: Placement | None, hold: str | None, monograph: Monograph, cap: float | None
) -> Placement | None:
    """The placement of an agent taken with its remaining steps held back when a step up should wait: a caution on
    the agent, or a kidney-adjusted ceiling that cannot be known (no current eGFR) for an agent whose dose depends on
    it. An order keeps its steps: the clinician is starting it, and its findings say what to weigh."""
    if placement is None or placement.fit != "steps-remain" or placement.state != "current":
        return placement
    kidney_unknown = _kidney_dosed(monograph) and cap is None
    reason = hold or (KIDNEY_UNKNOWN if kidney_unknown else None)
    return replace(placement, fit="held", held_because=reason) if reason else placement


def _limit(cap: float | None, top: float | None) -> tuple[float | None, LimitBasis | None]:
    """The dose limit in force: the ceiling, else the labelled maximum."""
    if cap is not None:
        return cap, "ceiling"
    return (top, "maximum") if top is not None else (None, None)


def _amount(daily: Fact, monograph: Monograph) -> float | None:
    """The daily dose in the unit of the monograph's doses, or None when it is unknown or in another unit (a unit
    matters only where the monograph has doses to compare it with)."""
    if not daily.usable or not isinstance(daily.value, int | float):
        return None
    doses = monograph.steps or monograph.max_daily or monograph.renal_bands
    return float(daily.value) if daily.unit == _unit(monograph) or not doses else None


def _unit(monograph: Monograph) -> str:
    return f"{monograph.max_unit}/day"


def _held(days_on: Fact | None, first: int, state: str) -> int | None:
    """Days the patient has held the starting step: the days on the drug, while the dose is still within the first
    step (a later step's start date is not in the record)."""
    if first != 1 or state != "current" or days_on is None or not days_on.usable:
        return None
    return days_on.value if isinstance(days_on.value, int) and not isinstance(days_on.value, bool) else None


def _daily(step: DoseStep) -> float:
    return step.dose * step.times_per_day


def _plan_steps(monograph: Monograph, placement: Placement | None, cap: float | None, today: date) -> Steps:
    """The titration steps to show: from the start for a new patient, an order above the limit not yet taken, or an
    unknown dose; the steps that remain above the dose; none at the top or above the limit while it is taken."""
    if placement is None or placement.fit == "dose-unknown":
        return _steps(monograph, cap, today)
    if placement.fit == "above-limit":
        return _steps(monograph, cap, today) if placement.state == "ordered" else []
    if placement.fit == "steps-remain":
        return _steps(monograph, cap, today, placement.first, placement.wait)
    return []


def _reduction(
    monograph: Monograph, placement: Placement, today: date, every: int, cite: Cite, pace: list[CitationRef]
) -> dict[str, Any]:
    """One titration step down every ``every`` days, the first today, to the highest step within the limit."""
    assert placement.amount is not None and placement.limit is not None
    steps = _down_steps(monograph, placement.amount, placement.limit, today, every)
    reduction: dict[str, Any] = {
        "target_daily": steps[-1]["daily"] if steps else placement.limit,
        "unit": _unit(monograph),
        "steps": steps,
        "step_days": every,
        "text": _reduction_text(monograph, placement, steps),
        "pace": _pace(every, cite, pace),
    }
    if monograph.taper is not None:
        reduction["taper"] = _statement(monograph.taper, cite)
    return reduction


def _renal_adjustment(
    monograph: Monograph, facts: Mapping[str, Fact], *, capped: bool, cite: Cite
) -> dict[str, Any] | None:
    """The renal band in force, with whether the steps already apply it (capped at the ceiling) or show standard
    doses to which it applies."""
    band, _, why = _kidney_band(monograph, facts.get("obs.egfr"), _failing(facts)) or (None, (), _band_text)
    if band is None:
        return None
    adjustment: dict[str, Any] = {
        "below_egfr": band.below_egfr,
        "action": band.action,
        "text": band.text,
        "citations": cite(band.citations),
        "basis": why(band),
    }
    if monograph.steps:
        adjustment["steps_note"] = (
            "The titration steps stop at the kidney-adjusted ceiling."
            if capped
            else "The titration steps show standard doses: this kidney adjustment applies to each of them."
        )
    return adjustment


Steps = list[dict[str, Any]]
_STEPS_CACHE: dict[tuple[Any, ...], tuple[Monograph, Steps]] = {}


def _cached(key: tuple[Any, ...], monograph: Monograph, build: Callable[[], Steps]) -> Steps:
    """Steps shared by every patient with the same key (read-only by contract); keyed by the monograph's identity,
    which the entry keeps, so that an id is never reused while it is cached."""
    cached = _STEPS_CACHE.get(key)
    if cached is not None and cached[0] is monograph:
        return cached[1]
    if len(_STEPS_CACHE) > 4096:
        _STEPS_CACHE.clear()
    steps = build()
    _STEPS_CACHE[key] = (monograph, steps)
    return steps


def _steps(monograph: Monograph, cap: float | None, start: date, first: int = 0, wait: int = 0) -> Steps:
    """Dated titration steps from the ``first``, due ``wait`` days from ``start``, up to the cap."""
    key = ("up", id(monograph), cap, start, first, wait)
    return _cached(key, monograph, lambda: _build_steps(monograph, cap, start, first, wait))


def _build_steps(monograph: Monograph, cap: float | None, start: date, first: int, wait: int) -> Steps:
    origin = monograph.steps[first].day if first < len(monograph.steps) else 0
    steps = []
    for step in monograph.steps[first:]:
        if cap is not None and _daily(step) > cap + EPSILON:
            break
        steps.append(_step(step, wait + step.day - origin, start))
    return steps


def _down_steps(monograph: Monograph, amount: float, limit: float, start: date, every: int) -> Steps:
    """The titration steps below ``amount`` in reverse, one every ``every`` days from ``start``, down to the highest
    within ``limit`` (or the lowest step when none is)."""
    below = [i for i, step in enumerate(monograph.steps) if _daily(step) < amount - EPSILON]
    if not below:
        return []
    top = below[-1]
    bottom = max((i for i in below if _daily(monograph.steps[i]) <= limit + EPSILON), default=below[0])
    key = ("down", id(monograph), start, top, bottom, every)
    chosen = range(top, bottom - 1, -1)
    return _cached(key, monograph, lambda: [_step(monograph.steps[i], n * every, start) for n, i in enumerate(chosen)])


def _step(step: DoseStep, day: int, start: date) -> dict[str, Any]:
    return {
        "day": day,
        "date": (start + timedelta(days=day)).isoformat(),
        "dose": step.dose,
        "unit": step.unit,
        "times_per_day": step.times_per_day,
        "daily": round(_daily(step), 3),
    }


def steps_text(steps: Iterable[Mapping[str, Any]]) -> str:
    """Dated steps on one line, as every text surface shows them: ``2026-11-24 5 mg x3 (15 mg/day); ...``."""
    return "; ".join(
        f"{s['date']} {s['dose']:g} {s['unit']} x{s['times_per_day']} ({s['daily']:g} {s['unit']}/day)" for s in steps
    )


def _placement_text(placement: Placement, monograph: Monograph) -> str:
    text = _where(placement, monograph)
    kidney_said = placement.fit == "held" and placement.held_because == KIDNEY_UNKNOWN
    if placement.limit_basis == "maximum" and not kidney_said and _kidney_dosed(monograph):
        text += " The kidney-adjusted ceiling is unknown (no current eGFR), so the limit is the labelled maximum."
    return text


def _unread(daily: Fact, unit: str) -> str:
    """Why a daily dose cannot be placed on the steps: another unit, or not readable (with the fact's note)."""
    why = f"is in {daily.unit}, not {unit}" if daily.usable else "could not be read from the record"
    return why + (f" ({daily.note})" if daily.note and not daily.usable else "")


def _withdrawn_text(placement: Placement, monograph: Monograph) -> str:
    ruled = "ruled out for this patient: no titration step up; it is withdrawn (reduction)."
    if placement.amount is None:
        return f"Taken now, but the daily dose {_unread(placement.daily, _unit(monograph))}; {ruled}"
    return f"Taken at {placement.amount:g} {placement.shown_unit(monograph)}, but {ruled}"


def _undated_text(monograph: Monograph) -> str:
    if not monograph.steps:
        why = f"the knowledge base has no titration steps for {monograph.name}"
    else:
        why = "the daily dose could not be placed on the titration steps"
    return f"The taper cannot be dated: {why}." + _no_taper_note(monograph)


def _urgent_text(monograph: Monograph) -> str:
    text = (
        f"A critical finding rules {monograph.name} out, so the routine pace of a taper (setting "
        "dose_reduction_step_days) does not apply and no dates are set: how fast to come off it is the clinician's "
        "decision now."
    )
    return text + _no_taper_note(monograph)


def _taper_text(monograph: Monograph, amount: float, steps: Steps, every: int, stop: str) -> str:
    unit = _unit(monograph)
    if not steps:
        text = f"No titration step lies below {amount:g} {unit}: keep it for {every} days, then stop on {stop}."
    else:
        text = f"Reduce one titration step at a time to {steps[-1]['daily']:g} {unit}, then stop on {stop}."
        text += _jump_note(monograph, amount, steps[0]["daily"])
    return text + _no_taper_note(monograph, "; the pace is the project's setting")


def _no_taper_note(monograph: Monograph, tail: str = "") -> str:
    """Said of a withdrawal when the monograph gives no taper advice (with ``tail``), else nothing."""
    return f" The knowledge base has no taper advice for {monograph.name}{tail}." if monograph.taper is None else ""


def _where(placement: Placement, monograph: Monograph) -> str:
    unit = placement.shown_unit(monograph)
    who = "Taken" if placement.state == "current" else "Ordered"
    none = f"the knowledge base has no titration steps for {monograph.name}"
    if placement.amount is None:
        why = _unread(placement.daily, unit)
        if not monograph.steps:
            return f"{who} now, but the daily dose {why}; {none}."
        unplaced = "the patient could not be placed on the titration steps, which are shown from the start"
        return f"{who} now, but the daily dose {why}: {unplaced}."
    now = f"{who} at {placement.amount:g} {unit}"
    limit = f"the {placement.limit_basis} of {placement.limit:g} {unit}" if placement.limit is not None else None
    if placement.fit == "above-limit":
        if not monograph.steps:
            return f"{now}, above {limit}; {none} to reduce through."
        if placement.state == "ordered":
            return f"{now}, above {limit}; not taken now, so the titration steps are shown from the start."
        return f"{now}, above {limit}: no titration step up; the dose comes down gradually (reduction)."
    if placement.fit == "held":
        return f"{now}: no titration step up for now, as {placement.held_because}."
    if placement.fit == "no-step-remains":
        if not monograph.steps:
            return f"{now}; {none}."
        return f"{now}: no titration step above this dose" + (f" within {limit}." if limit else ".")
    if placement.held is not None:
        since = f"after {placement.held} days on the starting dose"
    elif placement.state == "ordered":
        since = "counting today as the first day of the order"
    elif placement.first > 0:
        since = "counting today as the first day at this dose (the record does not show since when this dose is taken)"
    else:
        since = "the first of them today"
    return f"{now}: the titration continues from the next step above this dose, {since}."


def _reduction_text(monograph: Monograph, placement: Placement, steps: Steps) -> str:
    assert placement.limit is not None and placement.amount is not None
    unit = _unit(monograph)
    limit = f"the {placement.limit_basis} of {placement.limit:g} {unit}"
    if not steps:  # no step below the dose: the monograph's lowest step is its first
        return f"No titration step lies below this dose; reduce to within {limit}."
    target, first = steps[-1]["daily"], steps[0]["daily"]
    where = "the lowest step, which is still above" if target > placement.limit + EPSILON else "the highest step within"
    text = f"Reduce one titration step at a time to {target:g} {unit}, {where} {limit}."
    return text + _jump_note(monograph, placement.amount, first)


def _jump_note(monograph: Monograph, amount: float, first: float) -> str:
    """A sentence when the first step down is larger than any step of the titration ("" otherwise)."""
    if amount - first <= _largest_increment(monograph) + EPSILON:
        return ""
    unit = _unit(monograph)
    return (
        f" The first step down, from {amount:g} to {first:g} {unit}, is larger than any step of the"
        " titration: the knowledge base has no dose between them."
    )


def _largest_increment(monograph: Monograph) -> float:
    """The largest rise in daily dose from one titration step to the next."""
    dailies = [_daily(step) for step in monograph.steps]
    return max((later - earlier for earlier, later in pairwise(dailies)), default=0.0)


def _statement(statement: Statement, cite: Cite) -> dict[str, Any]:
    return {"text": statement.text, "citations": cite(statement.citations)}
