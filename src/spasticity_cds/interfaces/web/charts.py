"""Trend charts drawn on the server: observation series from the record, rule thresholds, SVG coordinates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.engine.facts import parse_date
from spasticity_cds.fhir.model import Component, Resource, quantity_of
from spasticity_cds.fhir.record import PatientRecord
from spasticity_cds.knowledge.schema import Node

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 86, 14, 34
COLOURS = ("#1f4e99", "#b35900", "#2d7a2d")
DASHES = ("", "6 3", "2 3")


@dataclass(frozen=True)
class ChartSpec:
    """One chart: its title, unit, the concepts drawn as lines and the facts whose thresholds it shows."""

    key: str
    title: str
    unit: str
    lines: tuple[tuple[str, str], ...]
    threshold_facts: tuple[str, ...]


SPECS = (
    ChartSpec("fvc", "FVC % predicted", "%", (("fvc-percent", "FVC %"),), ("obs.fvc-percent",)),
    ChartSpec("egfr", "eGFR", "mL/min/1.73m2", (("egfr", "eGFR"),), ("obs.egfr",)),
    ChartSpec("alt", "ALT", "U/L", (("alt", "ALT"),), ("obs.alt_x_uln",)),
    ChartSpec(
        "bp",
        "Systolic blood pressure",
        "mmHg",
        (("systolic-bp", "systolic"), ("systolic-supine", "lying"), ("systolic-standing", "standing")),
        ("obs.systolic-bp",),
    ),
)
CONCEPTS = {concept for spec in SPECS for concept, _ in spec.lines}


@dataclass(frozen=True)
class Point:
    """One measured value, placed on the chart."""

    when: date
    value: float
    source: str
    x: float = 0.0
    y: float = 0.0


@dataclass
class Line:
    """One series drawn as a polyline with markers."""

    label: str
    colour: str
    dash: str
    points: list[Point]
    path: str = ""


@dataclass(frozen=True)
class Threshold:
    """A horizontal rule threshold line: its value, a short label on the chart and the rules that use it."""

    value: float
    label: str
    y: float
    owners: str = ""

    @property
    def owners_text(self) -> str:
        """The owners as read aloud: rule ids, and definitions by name (``def renal_impaired``: renal impaired)."""
        return ", ".join(owner.removeprefix("def ").replace("_", " ") for owner in self.owners.split(", "))


@dataclass
class Chart:
    """Everything the template needs to draw one chart and its data table."""

    key: str
    title: str
    unit: str
    lines: list[Line]
    thresholds: list[Threshold]
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM


def collect_series(record: PatientRecord, engine: Engine) -> dict[str, list[Point]]:
    """Numeric observation values over time for the charted concepts, oldest first."""
    out: dict[str, list[Point]] = {}
    for resource in record.of_type("Observation"):
        if resource.status in ("entered-in-error", "cancelled"):
            continue
        when = _when(resource)
        if when is None:
            continue
        source = resource.reference
        holders: list[Component] = [resource, *(resource.component or ())]
        for holder in holders:
            found = engine.vocabulary.match(holder.code, "observation")
            if found is None or found.concept.id not in CONCEPTS:
                continue
            value = _quantity(holder)
            if value is not None:
                out.setdefault(found.concept.id, []).append(Point(when, value, source))
    for points in out.values():
        points.sort(key=lambda p: (p.when, p.source))
    return out


def build_charts(record: PatientRecord, engine: Engine, settings: dict[str, Any]) -> list[Chart]:
    """Charts for every spec with at least two dated values in one of its series."""
    series = collect_series(record, engine)
    charts: list[Chart] = []
    for spec in SPECS:
        present = [(cid, label) for cid, label in spec.lines if series.get(cid)]
        if not any(len(series[cid]) >= 2 for cid, _ in present):
            continue
        lines = [
            Line(label, COLOURS[i % len(COLOURS)], DASHES[i % len(DASHES)], series[cid])
            for i, (cid, label) in enumerate(present)
        ]
        charts.append(_layout(spec, lines, thresholds_for(spec, engine, settings)))
    return charts


def thresholds_for(spec: ChartSpec, engine: Engine, settings: dict[str, Any]) -> list[tuple[float, str, str]]:
    """Numeric cut-offs the knowledge base's rules and definitions apply to this chart's facts."""
    found: dict[float, list[str]] = {}
    roots: list[tuple[str, Node]] = [(rule.id, rule.when) for rule in engine.kb.rules.values() if rule.active]
    roots += [(f"def {name}", definition.when) for name, definition in engine.kb.definitions.items()]
    scale = 1.0
    if spec.key == "alt":
        uln = engine.defaults.get("default_uln_alt", 40)
        scale = float(uln) if isinstance(uln, int | float) else 40.0
    for owner, root in roots:
        for check in _checks(root):
            if check.fact not in spec.threshold_facts or check.op not in ("lt", "le", "gt", "ge"):
                continue
            raw = settings.get(check.setting) if check.setting else check.value
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                continue
            found.setdefault(round(float(raw) * scale, 3), []).append(owner)
    out = []
    for value, owners in sorted(found.items()):
        label = f"{value:g}" + (f" ({value / scale:g}x ULN)" if spec.key == "alt" else f" {spec.unit}")
        out.append((value, label, ", ".join(sorted(set(owners)))))
    return out


def _checks(node: Node) -> Iterator[Any]:
    if node.check is not None:
        yield node.check
    for child in (*(node.all or ()), *(node.any or ())):
        yield from _checks(child)
    if node.not_ is not None:
        yield from _checks(node.not_)


def _when(resource: Resource) -> date | None:
    period = resource.effective_period
    for candidate in (
        resource.effective_date_time,
        resource.effective_instant,
        period.start if period is not None else None,
        resource.issued,
    ):
        parsed = parse_date(candidate)
        if parsed is not None:
            return parsed
    return None


def _quantity(holder: Component) -> float | None:
    quantity = quantity_of(holder.value_quantity)
    if quantity is not None and quantity.value is not None:
        return quantity.value
    for value in (holder.value_integer, holder.value_decimal):
        if value is not None:
            return value
    return None


def _nice_step(span: float) -> float:
    raw = span / 4 if span > 0 else 1.0
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 0.1
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _layout(spec: ChartSpec, lines: list[Line], thresholds: list[tuple[float, str, str]]) -> Chart:
    values = [p.value for line in lines for p in line.points] + [value for value, _, _ in thresholds]
    low, high = min(values), max(values)
    step = _nice_step(high - low)
    low = (low // step) * step - (step if low % step == 0 and low > 0 else 0)
    high = (high // step + 1) * step
    dates = [p.when for line in lines for p in line.points]
    first, last = min(dates), max(dates)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    days = max((last - first).days, 1)

    def x_of(when: date) -> float:
        if first == last:
            return round((x0 + x1) / 2, 1)
        return round(x0 + (x1 - x0) * (when - first).days / days, 1)

    def y_of(value: float) -> float:
        return round(y0 - (y0 - y1) * (value - low) / (high - low), 1)

    for line in lines:
        line.points = [Point(p.when, p.value, p.source, x_of(p.when), y_of(p.value)) for p in line.points]
        line.path = " ".join(f"{p.x},{p.y}" for p in line.points)
    ticks = []
    tick = low
    while tick <= high + step / 1000:
        ticks.append((y_of(tick), f"{tick:g}"))
        tick += step
    x_ticks = [(x_of(first), first.isoformat())]
    if last != first:
        x_ticks.append((x_of(last), last.isoformat()))
    return Chart(
        key=spec.key,
        title=spec.title,
        unit=spec.unit,
        lines=lines,
        thresholds=[Threshold(value, label, y_of(value), owners) for value, label, owners in thresholds],
        y_ticks=ticks,
        x_ticks=x_ticks,
    )
