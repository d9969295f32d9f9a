"""Per-patient disease model: demographics, visit schedule and trajectories of the measured scores."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from spasticity_cds.synth.profiles import Profile
from spasticity_cds.synth.rng import chance, clamp

DAYS_PER_MONTH = 30.44
MAS_LABELS: tuple[int | str, ...] = (0, 1, "1+", 2, 3, 4)
BODY_SITES = (
    "left hip adductors",
    "right hip adductors",
    "left knee extensors",
    "right knee extensors",
    "left ankle plantarflexors",
    "right ankle plantarflexors",
    "left elbow flexors",
    "right elbow flexors",
    "left wrist flexors",
    "right wrist flexors",
)


@dataclass(slots=True)
class LabStyle:
    """How the patient's laboratory reports units and reference ranges."""

    creatinine_si: bool
    bilirubin_si: bool
    egfr_mdrd: bool
    egfr_capped: bool
    reference_ranges: bool
    paco2_kpa: bool
    alt_uln: int


@dataclass(slots=True)
class Plan:
    """Everything drawn once per patient; trajectories are evaluated from it at each visit."""

    seed: int
    index: int
    profile: Profile
    as_of: date
    patient_id: str
    sex: str
    birth: date
    disease: str
    onset_region: str
    onset: date
    visits: list[date]
    alsfrs_rate: float
    fvc_base: float
    fvc_per_point: float
    snip_base: float
    snip_tested: bool
    mip_tested: bool
    bulbar_weight: float
    leg_weight: float
    spastic: bool
    mas_sites: list[str]
    mas_offsets: list[float]
    mas_base: float
    mas_slope: float
    kidney: str
    creatinine_base: float
    bp_base: tuple[float, float]
    hypertensive: bool
    orthostatic_pairs: bool
    orthostatic_hypotension: bool
    mild_liver: bool
    gilbert: bool
    sleep_apnoea: bool
    psychosis: bool
    pt_assessed: bool
    relies_on_tone: bool
    labs: LabStyle
    weight_base: float
    alt_flags: set[date] = field(default_factory=set)
    low_bp_flags: set[date] = field(default_factory=set)

    @property
    def is_mnd(self) -> bool:
        """True for ALS and PLS, false for the non-MND controls."""
        return self.disease != "ms"

    def months(self, when: date) -> float:
        """Months from symptom onset to ``when``."""
        return (when - self.onset).days / DAYS_PER_MONTH

    def age(self, when: date) -> int:
        """Age in whole years at ``when``."""
        before_birthday = (when.month, when.day) < (self.birth.month, self.birth.day)
        return when.year - self.birth.year - int(before_birthday)


def make_plan(rng: random.Random, seed: int, index: int, profile: Profile, as_of: date) -> Plan:
    """Draw one patient's fixed characteristics."""
    sex = "male" if chance(rng, 0.6) else "female"
    disease = _draw_disease(rng)
    visits = _draw_visits(rng, profile, as_of)
    delay_months = clamp(rng.lognormvariate(2.4, 0.45), 4, 36)
    onset = visits[0] - timedelta(days=round(delay_months * DAYS_PER_MONTH))
    onset_age = clamp(rng.gauss(58 if disease != "ms" else 38, 11), 24, 84)
    birth = onset - timedelta(days=round(onset_age * 365.25) + rng.randrange(365))
    total_months = (visits[-1] - onset).days / DAYS_PER_MONTH
    spastic = disease != "als" or chance(rng, 0.75)
    mas_base = clamp(rng.gauss(1.6 if disease == "als" else 2.4, 0.8), 0, 4.2) if spastic else 0.0
    sites = rng.sample(BODY_SITES, rng.randint(2, 4)) if spastic else []
    kidney = _draw_kidney(rng)
    return Plan(
        seed=seed,
        index=index,
        profile=profile,
        as_of=as_of,
        patient_id=f"p-{seed}-{index}",
        sex=sex,
        birth=birth,
        disease=disease,
        onset_region=rng.choices(("limb", "bulbar", "respiratory"), (0.69, 0.28, 0.03))[0],
        onset=onset,
        visits=visits,
        alsfrs_rate=_draw_alsfrs_rate(rng, disease, total_months),
        fvc_base=clamp(rng.gauss(98, 12), 65, 130),
        fvc_per_point=clamp(rng.gauss(1.7, 0.45), 0.8, 3.0),
        snip_base=clamp(rng.gauss(88 if sex == "male" else 72, 15), 35, 130),
        snip_tested=chance(rng, 0.6),
        mip_tested=chance(rng, 0.4),
        bulbar_weight=rng.uniform(0.35, 0.55),
        leg_weight=rng.uniform(0.2, 0.4),
        spastic=spastic,
        mas_sites=sites,
        mas_offsets=[rng.gauss(0, 0.4) for _ in sites],
        mas_base=mas_base,
        mas_slope=rng.uniform(0.0, 0.02) if spastic else 0.0,
        kidney=kidney,
        creatinine_base=_draw_creatinine(rng, sex, kidney),
        bp_base=(clamp(rng.gauss(127, 14), 95, 170), clamp(rng.gauss(78, 8), 55, 100)),
        hypertensive=chance(rng, 0.25),
        orthostatic_pairs=chance(rng, 0.2),
        orthostatic_hypotension=chance(rng, 0.04),
        mild_liver=chance(rng, 0.08),
        gilbert=chance(rng, 0.03),
        sleep_apnoea=chance(rng, 0.05),
        psychosis=chance(rng, 0.02),
        pt_assessed=spastic and chance(rng, 0.4),
        relies_on_tone=chance(rng, 0.45),
        labs=_draw_lab_style(rng),
        weight_base=clamp(rng.gauss(80 if sex == "male" else 66, 12), 42, 140),
    )


def _draw_disease(rng: random.Random) -> str:
    return rng.choices(("als", "pls", "ms"), (0.90, 0.07, 0.03))[0]


def _draw_visits(rng: random.Random, profile: Profile, as_of: date) -> list[date]:
    count = rng.randint(profile.min_visits, profile.max_visits)
    day = as_of - timedelta(days=rng.randint(3, 60))
    visits = [day]
    for _ in range(count - 1):
        jitter = rng.randint(-profile.visit_interval_days // 5, profile.visit_interval_days // 5)
        day -= timedelta(days=profile.visit_interval_days + jitter)
        visits.append(day)
    visits.reverse()
    return visits


def _draw_alsfrs_rate(rng: random.Random, disease: str, total_months: float) -> float:
    if disease == "ms":
        return 0.0
    rate = rng.uniform(0.1, 0.35) if disease == "pls" else clamp(rng.lognormvariate(-0.3, 0.5), 0.2, 2.5)
    floor = rng.uniform(4, 24)
    return min(rate, (48 - floor) / max(total_months, 1.0))


def _draw_kidney(rng: random.Random) -> str:
    return rng.choices(("normal", "ckd3", "dialysis"), (0.905, 0.08, 0.015))[0]


def _draw_creatinine(rng: random.Random, sex: str, kidney: str) -> float:
    if kidney == "dialysis":
        return rng.uniform(5.0, 9.0)
    if kidney == "ckd3":
        return rng.uniform(1.4, 2.3)
    return clamp(rng.gauss(0.92 if sex == "male" else 0.72, 0.12), 0.45, 1.3)


def _draw_lab_style(rng: random.Random) -> LabStyle:
    return LabStyle(
        creatinine_si=chance(rng, 0.3),
        bilirubin_si=chance(rng, 0.3),
        egfr_mdrd=chance(rng, 0.12),
        egfr_capped=chance(rng, 0.3),
        reference_ranges=chance(rng, 0.85),
        paco2_kpa=chance(rng, 0.4),
        alt_uln=rng.choice((33, 40, 40, 45, 50)),
    )


# Trajectories -----------------------------------------------------------------------------------


def alsfrs_total(plan: Plan, when: date, rng: random.Random) -> int:
    """ALSFRS-R total (0-48) at ``when``."""
    value = 48 - plan.alsfrs_rate * plan.months(when) + rng.gauss(0, 0.8)
    return round(clamp(value, 0, 48))


def points_lost(plan: Plan, when: date) -> float:
    """Expected ALSFRS-R points lost since onset (no noise)."""
    return clamp(plan.alsfrs_rate * plan.months(when), 0, 48)


def swallowing_item(plan: Plan, when: date) -> int:
    """ALSFRS-R swallowing item (4 normal .. 0 nil by mouth)."""
    weight = plan.bulbar_weight if plan.onset_region == "bulbar" else plan.bulbar_weight / 2.2
    return 4 - min(4, int(points_lost(plan, when) * weight / 3))


def walking_item(plan: Plan, when: date) -> int:
    """ALSFRS-R walking item (4 normal .. 0 no purposeful leg movement)."""
    weight = plan.leg_weight if plan.onset_region == "limb" else plan.leg_weight / 1.8
    return 4 - min(4, int(points_lost(plan, when) * weight / 3))


def fvc_percent(plan: Plan, when: date, rng: random.Random) -> int:
    """FVC % predicted at ``when``."""
    factor = 1.6 if plan.onset_region == "respiratory" else 1.0
    value = plan.fvc_base - factor * plan.fvc_per_point * points_lost(plan, when) + rng.gauss(0, 3.5)
    return round(clamp(value, 12, 135))


def snip_value(plan: Plan, when: date, rng: random.Random) -> int:
    """SNIP in cmH2O at ``when``."""
    value = plan.snip_base - 1.3 * points_lost(plan, when) + rng.gauss(0, 5)
    return round(clamp(value, 5, 150))


def mas_grade(plan: Plan, when: date, rng: random.Random, offset: float = 0.0) -> int | str:
    """Modified Ashworth grade for one muscle group (0, 1, "1+", 2, 3 or 4)."""
    value = plan.mas_base + offset + plan.mas_slope * plan.months(when) + rng.gauss(0, 0.45)
    return MAS_LABELS[round(clamp(value, 0, 5))]


def penn_score(plan: Plan, when: date, rng: random.Random) -> int:
    """Penn spasm frequency score 0-4."""
    value = (plan.mas_base + plan.mas_slope * plan.months(when)) * 0.8 + rng.gauss(0, 0.5)
    return round(clamp(value, 0, 4))


def creatinine_mg_dl(plan: Plan, when: date, rng: random.Random) -> float:
    """Serum creatinine in mg/dL; falls slowly with muscle loss."""
    muscle = 1 - 0.006 * points_lost(plan, when) if plan.kidney == "normal" else 1.0
    return max(0.3, plan.creatinine_base * muscle * rng.uniform(0.93, 1.07))


def ckd_epi_2021(creatinine: float, age: int, sex: str) -> float:
    """eGFR (mL/min/1.73 m2) from creatinine in mg/dL by the race-free CKD-EPI 2021 equation."""
    female = sex == "female"
    kappa = 0.7 if female else 0.9
    alpha = -0.241 if female else -0.302
    ratio = creatinine / kappa
    egfr = 142.0 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age
    return float(egfr) * (1.012 if female else 1.0)
