"""Medication histories (the antispasticity ladder and co-medication) rendered as MedicationRequests."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from spasticity_cds.synth import codes
from spasticity_cds.synth.model import Plan
from spasticity_cds.synth.resources import Factory, Resource, concept, quantity
from spasticity_cds.synth.rng import chance

Step = tuple[float, int]

LADDERS: dict[str, list[Step]] = {
    "baclofen": [(5, 3), (10, 3), (15, 3), (20, 3), (20, 4)],
    "tizanidine": [(2, 1), (2, 3), (4, 3), (6, 3), (8, 3)],
    "gabapentin": [(300, 1), (300, 2), (300, 3), (600, 3)],
    "dantrolene": [(25, 1), (25, 3), (50, 3)],
}
STRENGTHS: dict[str, tuple[float, ...]] = {
    "baclofen": (20, 10, 5),
    "tizanidine": (4, 2),
    "gabapentin": (600, 300),
    "dantrolene": (50, 25),
    "riluzole": (50,),
    "diazepam": (5, 2),
    "clonazepam": (0.5,),
    "lisinopril": (10,),
    "amlodipine": (5,),
}
LIQUIDS: dict[str, tuple[str, float]] = {
    "baclofen": ("Baclofen 5 mg/5 mL oral solution", 1.0),
    "riluzole": ("Riluzole 5 mg/mL oral suspension", 5.0),
}
TEXT_ONLY = frozenset({"nabiximols", "botulinum-toxin"})
FREQ_TEXT = {
    1: "once daily",
    2: "twice daily",
    3: "three times daily",
    4: "four times daily",
    6: "every 4 hours",
}
FREQ_ABBREV = {1: "OD", 2: "BD", 3: "TDS", 4: "QDS", 6: "4-hourly"}


@dataclass(slots=True)
class Order:
    """One prescription episode; rendered as one MedicationRequest."""

    drug: str
    dose: float | None
    per_day: int
    start: date
    end: date | None = None
    status: str = "active"
    reason: str | None = None
    night: bool = False
    prn: bool = False
    text_dose: str | None = None
    label: str | None = None
    liquid: bool = False


# History ----------------------------------------------------------------------------------------


def titrate(drug: str, steps: list[Step], start: date, step_days: int, as_of: date) -> list[Order]:
    """One order per dose step; every step but the last is completed when the next begins."""
    orders: list[Order] = []
    day = start
    for dose, per_day in steps:
        if day >= as_of:
            break
        if orders:
            orders[-1].end, orders[-1].status = day, "completed"
        orders.append(Order(drug, dose, per_day, day))
        day += timedelta(days=step_days)
    return orders


def stop_at_visit(orders: list[Order], plan: Plan, rng: random.Random, reason: str) -> date | None:
    """Stop the last order at a visit after it started; returns that visit or None when none is left."""
    later = [v for v in plan.visits if v > orders[-1].start]
    if not later:
        return None
    when = rng.choice(later[:3])
    orders[-1].end, orders[-1].status, orders[-1].reason = when, "stopped", reason
    if reason == "raised ALT":
        plan.alt_flags.add(when)
    elif reason == "hypotension":
        plan.low_bp_flags.add(when)
    return when


def ladder(
    drug: str, plan: Plan, rng: random.Random, start: date, outcomes: dict[str, float]
) -> tuple[list[Order], date | None]:
    """Titrate ``drug`` from ``start`` and pick an outcome; returns the orders and the stop date if any."""
    steps = LADDERS[drug]
    if drug == "baclofen" and plan.kidney == "dialysis":
        steps = [(5, 1)]
    count = rng.randint(1, len(steps))
    orders = titrate(drug, steps[:count], start, rng.randint(7, 28), plan.as_of)
    if not orders:
        return [], None
    outcome = rng.choices(list(outcomes), list(outcomes.values()))[0]
    if outcome == "active":
        return orders, None
    return orders, stop_at_visit(orders, plan, rng, outcome)


def spasticity_history(plan: Plan, rng: random.Random) -> list[Order]:
    """The antispasticity ladder: first line, switch after failure, adjuncts, refractory options."""
    if not plan.spastic or not chance(rng, 0.7 if plan.disease == "als" else 0.85):
        return []
    early = plan.visits[: max(1, len(plan.visits) * 3 // 5)]
    start = rng.choice(early) + timedelta(days=rng.randint(0, 10))
    first = rng.choices(("baclofen", "tizanidine", "gabapentin"), (0.8, 0.15, 0.05))[0]
    outcomes = {"active": 0.62, "sedation": 0.12, "ineffective": 0.12, "weakness": 0.08, "raised ALT": 0.0}
    if first == "tizanidine":
        outcomes.update({"hypotension": 0.1, "raised ALT": 0.06})
    orders, stopped = ladder(first, plan, rng, start, outcomes)
    if stopped is not None and first != "tizanidine" and chance(rng, 0.7):
        more, _ = ladder(
            "tizanidine",
            plan,
            rng,
            stopped,
            {"active": 0.6, "hypotension": 0.15, "raised ALT": 0.1, "sedation": 0.15},
        )
        orders += more
    orders += adjuncts(plan, rng, start, first, active_first=stopped is None)
    return orders


def adjuncts(plan: Plan, rng: random.Random, start: date, first: str, *, active_first: bool) -> list[Order]:
    """Second agents added on top of the first line."""
    later = start + timedelta(days=rng.randint(60, 400))
    orders: list[Order] = []
    if chance(rng, 0.08):
        orders += ladder("dantrolene", plan, rng, later, {"active": 0.45, "ineffective": 0.4, "raised ALT": 0.15})[0]
    if chance(rng, 0.12):
        orders += night_benzodiazepine(rng, later)
    if first != "gabapentin" and chance(rng, 0.1):
        orders += ladder("gabapentin", plan, rng, later, {"active": 0.8, "sedation": 0.2})[0]
    if first == "baclofen" and active_first and chance(rng, 0.06):
        orders += ladder("tizanidine", plan, rng, later, {"active": 1.0})[0]
    if chance(rng, 0.025):
        orders.append(Order("clonidine", 0.1, 2, later))
    if chance(rng, 0.03):
        orders.append(nabiximols(later))
    if plan.mas_base >= 3.0 and chance(rng, 0.25):
        orders.append(intrathecal_baclofen(rng, later + timedelta(days=120)))
    return [o for o in orders if o.start < plan.as_of]


def night_benzodiazepine(rng: random.Random, start: date) -> list[Order]:
    """Diazepam or clonazepam at night."""
    if chance(rng, 0.6):
        order = Order("diazepam", rng.choice((2, 5)), 1, start, night=True)
    else:
        order = Order("clonazepam", 0.5, 1, start, night=True)
    return [order]


def nabiximols(start: date) -> Order:
    """Nabiximols oromucosal spray (no RxNorm code)."""
    return Order(
        "nabiximols",
        None,
        1,
        start,
        text_dose="1 spray in the evening, increase by 1 spray every 2 days; maximum 12 sprays/day",
        label="Sativex oromucosal spray",
    )


def intrathecal_baclofen(rng: random.Random, start: date) -> Order:
    """Intrathecal baclofen delivered by an implanted pump."""
    micrograms = rng.choice((100, 150, 200, 300))
    return Order(
        "baclofen-intrathecal",
        None,
        1,
        start,
        text_dose=f"Intrathecal baclofen {micrograms} micrograms/day via implanted pump",
        label="Baclofen intrathecal 1 mg/mL",
    )


def co_medication(plan: Plan, rng: random.Random) -> list[Order]:
    """Riluzole, late opioids, CYP1A2 inhibitors and antihypertensives."""
    orders: list[Order] = []
    first = plan.visits[0]
    if plan.is_mnd and chance(rng, 0.85 if plan.disease == "als" else 0.1):
        orders.append(riluzole(plan, rng, first + timedelta(days=rng.randint(0, 30))))
    if plan.disease == "als" and chance(rng, 0.15):
        orders.append(opioid(plan, rng))
    orders += interacting_drugs(plan, rng)
    if plan.hypertensive:
        orders += antihypertensives(plan, rng)
    return [o for o in orders if o.start < plan.as_of]


def riluzole(plan: Plan, rng: random.Random, start: date) -> Order:
    """Riluzole 50 mg twice daily, occasionally stopped for raised ALT."""
    orders = [Order("riluzole", 50, 2, start)]
    if chance(rng, 0.06):
        stop_at_visit(orders, plan, rng, "raised ALT")
    return orders[0]


def opioid(plan: Plan, rng: random.Random) -> Order:
    """An opioid started late in the course."""
    start = plan.visits[int(len(plan.visits) * rng.uniform(0.6, 0.95))]
    if chance(rng, 0.55):
        return Order("morphine", rng.choice((2.5, 5)), 6, start, prn=chance(rng, 0.5))
    return Order("oxycodone", rng.choice((5, 10)), 2, start)


def interacting_drugs(plan: Plan, rng: random.Random) -> list[Order]:
    """CYP1A2 inhibitors and other interacting drugs in a few patients."""
    orders: list[Order] = []
    if chance(rng, 0.04):
        recent = chance(rng, 0.3)
        start = plan.as_of - timedelta(days=3) if recent else rng.choice(plan.visits)
        course = Order("ciprofloxacin", 500, 2, start)
        if start + timedelta(days=7) < plan.as_of:
            course.end, course.status = start + timedelta(days=7), "completed"
        orders.append(course)
    for drug, p, dose, per_day in (
        ("fluvoxamine", 0.02, 50, 1),
        ("amiodarone", 0.01, 200, 1),
        ("verapamil", 0.01, 80, 3),
        ("cimetidine", 0.015, 400, 2),
    ):
        if chance(rng, p):
            orders.append(Order(drug, dose, per_day, rng.choice(plan.visits)))
    return orders


def switch_to_liquid(orders: list[Order], peg_day: date, rng: random.Random) -> list[Order]:
    """After a gastrostomy, most current baclofen/riluzole tablets are replaced by a liquid via the tube."""
    switched: list[Order] = []
    for order in orders:
        if order.drug in LIQUIDS and order.end is None and order.start < peg_day and chance(rng, 0.6):
            order.end, order.status = peg_day, "completed"
            switched.append(replace(order, start=peg_day, end=None, status="active", liquid=True))
    return switched


def antihypertensives(plan: Plan, rng: random.Random) -> list[Order]:
    """Lisinopril and/or amlodipine for hypertensive patients."""
    start = plan.visits[0] - timedelta(days=rng.randint(200, 2000))
    drugs = [d for d, p in (("lisinopril", 0.7), ("amlodipine", 0.5)) if chance(rng, p)] or ["amlodipine"]
    return [Order(d, 10 if d == "lisinopril" else 5, 1, start) for d in drugs]


# Rendering --------------------------------------------------------------------------------------


def num(value: float) -> float | int:
    """Integers as int so JSON shows ``5`` rather than ``5.0``."""
    return int(value) if float(value).is_integer() else value


def strength_for(order: Order) -> float | None:
    """Largest tablet strength that divides the dose, if any."""
    if order.dose is None or order.liquid:
        return None
    for strength in STRENGTHS.get(order.drug, ()):
        if (order.dose / strength).is_integer():
            return strength
    return None


def dose_words(order: Order) -> str:
    """Human dosage text, in one of several house styles."""
    if order.text_dose:
        return order.text_dose
    dose = f"{num(order.dose or 0)} mg"
    if order.liquid:
        millilitres = num((order.dose or 0) / LIQUIDS[order.drug][1])
        return f"{dose} ({millilitres} mL) {FREQ_TEXT[order.per_day]} via gastrostomy tube"
    if order.night:
        return f"{dose} at night"
    suffix = " when required" if order.prn else ""
    return f"{dose} {FREQ_TEXT[order.per_day]}{suffix}"


def medication_concept(order: Order, rng: random.Random, strength: float | None) -> tuple[dict[str, Any], bool]:
    """The medicationCodeableConcept and whether it names the tablet strength."""
    name = order.label or order.drug.capitalize()
    if order.drug == "baclofen-intrathecal":
        return concept(codes.BACLOFEN_INTRATHECAL, text=name), False
    if order.drug in TEXT_ONLY:
        return {"text": name}, False
    if order.liquid:
        liquid = LIQUIDS[order.drug][0]
        return ({"text": liquid} if chance(rng, 0.1) else concept(codes.RX_INGREDIENTS[order.drug], text=liquid)), False
    tablet = f"{order.drug.capitalize()} {num(strength)} mg tablets" if strength else None
    if chance(rng, 0.05):
        if tablet and chance(rng, 0.5):
            tablet = tablet.replace(" mg", "mg")
        return {"text": tablet or f"{name} {dose_words(order)}"}, tablet is not None
    products = codes.BACLOFEN_PRODUCTS.get(int(strength or 0)) if order.drug == "baclofen" else None
    if products and chance(rng, 0.35):
        product = rng.choice(products)
        return concept(product, text=product[2]), True
    return concept(codes.RX_INGREDIENTS[order.drug], text=tablet or name), tablet is not None


def dosage(order: Order, rng: random.Random, strength: float | None, pills_ok: bool) -> list[dict[str, Any]]:
    """``dosageInstruction``: structured in mg, in tablets, or free text only."""
    text = dose_words(order)
    if order.dose is None or chance(rng, 0.15):
        return [{"text": text}]
    repeat: dict[str, Any] = {"frequency": order.per_day, "period": 1, "periodUnit": "d"}
    if order.night:
        repeat["when"] = ["HS"]
    if order.liquid and chance(rng, 0.4):
        dose = quantity(num(order.dose / LIQUIDS[order.drug][1]), "mL")
    elif pills_ok and strength and chance(rng, 0.4):
        pills = num(order.dose / strength)
        dose = {"value": pills, "unit": "{pill}", "system": codes.UCUM, "code": "{pill}"}
        if chance(rng, 0.5):
            dose = {"value": pills, "unit": "tablets"}
    else:
        dose = quantity(num(order.dose), "mg")
    instruction: dict[str, Any] = {
        "text": text,
        "timing": {"repeat": repeat},
        "doseAndRate": [{"doseQuantity": dose}],
    }
    if order.prn:
        instruction["asNeededBoolean"] = True
    if order.liquid:
        instruction["route"] = {"text": "Via gastrostomy tube"}
    return [instruction]


def render(factory: Factory, order: Order) -> Resource:
    """Emit one MedicationRequest for ``order``."""
    rng = factory.rng
    strength = strength_for(order)
    medication, pills_ok = medication_concept(order, rng, strength)
    fields: dict[str, Any] = {"status": order.status}
    if not chance(rng, 0.04):
        fields["intent"] = "order"
    fields["medicationCodeableConcept"] = medication
    fields["authoredOn"] = order.start.isoformat()
    fields["dosageInstruction"] = dosage(order, rng, strength, pills_ok)
    if order.reason:
        fields["statusReason"] = {"text": order.reason}
    if order.end is not None and chance(rng, 0.7):
        period = {"start": order.start.isoformat(), "end": order.end.isoformat()}
        fields["dispenseRequest"] = {"validityPeriod": period}
    return factory.clinical("MedicationRequest", **fields)
