"""Dose ceilings and titration plans from the drug monographs, adjusted to kidney function and jurisdiction."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from spasticity_cds.engine.facts import Fact, Value, missing
from spasticity_cds.knowledge.schema import CitationRef, Monograph, RenalBand, Statement

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
    failing = [facts[name] for name in KIDNEY_FAILURE_FACTS if name in facts and facts[name].value is True]
    scaled = settings["renal_fraction_ceiling"] == "scaled-maximum"
    ceiling = _ceiling(monograph, top, facts.get("obs.egfr"), unit, failing, scaled=scaled)
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
    if not monograph.renal_bands:
        return Fact(name, top, unit, note="labelled maximum")
    if egfr is not None and egfr.usable:
        band, sources, why = renal_band(monograph, egfr), egfr.sources, _band_text
    elif failing:
        band = min(monograph.renal_bands, key=lambda lowest: lowest.below_egfr)
        sources = tuple(source for fact in failing for source in fact.sources)
        why = _failure_text
    else:
        return missing(name, "kidney function (eGFR) missing or stale")
    if band is None:
        return Fact(name, top, unit, sources=sources, note="labelled maximum; no renal reduction at this eGFR")
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


def dose_plan(
    monograph: Monograph, facts: Mapping[str, Fact], settings: Mapping[str, Value], now: datetime, cite: Cite
) -> dict[str, Any] | None:
    """Start, dated titration steps capped at the ceiling in force, and the basis of that ceiling."""
    if monograph.start is None and not monograph.steps:
        return None
    ceiling = facts.get(f"dose.{monograph.id}.ceiling")
    cap = ceiling.value if ceiling is not None and ceiling.usable else None
    steps = _steps(monograph, cap if isinstance(cap, int | float) else None, now.date())
    plan: dict[str, Any] = {"steps": steps, "unit": monograph.max_unit}
    if monograph.start is not None:
        plan["start"] = _statement(monograph.start, cite)
    if monograph.titration is not None:
        plan["titration"] = _statement(monograph.titration, cite)
    top = maximum(monograph, settings)
    if top is not None:
        plan["max_daily"] = top
        plan["jurisdiction"] = settings["jurisdiction"]
    if monograph.max_basis is not None:
        plan["max_basis"] = _statement(monograph.max_basis, cite)
    if ceiling is not None:
        plan["ceiling"] = ceiling.to_dict()
    band = renal_band(monograph, facts["obs.egfr"]) if "obs.egfr" in facts else None
    if band is not None:
        plan["renal_adjustment"] = {
            "below_egfr": band.below_egfr,
            "action": band.action,
            "text": band.text,
            "citations": cite(band.citations),
        }
    return plan


_STEPS_CACHE: dict[tuple[int, float | None, date], tuple[Monograph, list[dict[str, Any]]]] = {}


def _steps(monograph: Monograph, cap: float | None, start: date) -> list[dict[str, Any]]:
    """Dated titration steps up to the cap; the same for every patient with the same cap and day (shared)."""
    key = (id(monograph), cap, start)
    cached = _STEPS_CACHE.get(key)
    if cached is not None and cached[0] is monograph:
        return cached[1]
    if len(_STEPS_CACHE) > 4096:
        _STEPS_CACHE.clear()
    steps = _build_steps(monograph, cap, start)
    _STEPS_CACHE[key] = (monograph, steps)
    return steps


def _build_steps(monograph: Monograph, cap: float | None, start: date) -> list[dict[str, Any]]:
    steps = []
    for step in monograph.steps:
        daily = step.dose * step.times_per_day
        if cap is not None and daily > cap + 1e-9:
            break
        steps.append(
            {
                "day": step.day,
                "date": (start + timedelta(days=step.day)).isoformat(),
                "dose": step.dose,
                "unit": step.unit,
                "times_per_day": step.times_per_day,
                "daily": round(daily, 3),
            }
        )
    return steps


def _statement(statement: Statement, cite: Cite) -> dict[str, Any]:
    return {"text": statement.text, "citations": cite(statement.citations)}
