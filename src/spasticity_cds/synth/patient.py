"""Assemble one synthetic patient: demographics, diagnoses, visits, measurements, procedures, drugs."""

from __future__ import annotations

import random
from datetime import date, time, timedelta
from typing import Any

from spasticity_cds.synth import codes, medications, model
from spasticity_cds.synth.model import Plan
from spasticity_cds.synth.profiles import get_profile
from spasticity_cds.synth.resources import Factory, Resource, concept, instant, quantity
from spasticity_cds.synth.rng import chance, clamp, patient_rng

AS_OF = date(2026, 11, 1)
GIVEN = {
    "male": ("James", "Robert", "David", "Ahmed", "Thomas", "Luca", "Kwame", "Piotr", "Hiroshi", "Sean"),
    "female": ("Mary", "Aisha", "Elena", "Sarah", "Priya", "Grace", "Ingrid", "Mei", "Fatima", "Claire"),
}
FAMILY = (
    "Smith",
    "Okafor",
    "Novak",
    "Garcia",
    "Nguyen",
    "Fischer",
    "Khan",
    "Rossi",
    "Murphy",
    "Silva",
    "Kowalski",
)
Reading = tuple[float, str]
MND_TEXTS = ("Motor neurone disease", "Amyotrophic lateral sclerosis", "MND - ALS type", "ALS")


def generate_patient(seed: int, index: int, profile: str, as_of: date = AS_OF) -> list[Resource]:
    """FHIR R4 resources for patient ``index``; depends only on (seed, index, profile, as_of)."""
    spec = get_profile(profile)
    rng = patient_rng(seed, index, profile)
    plan = model.make_plan(rng, seed, index, spec, as_of)
    factory = Factory(rng, seed, index)
    factory.emit(patient_resource(plan, rng), may_duplicate=False)
    diagnoses(factory, plan)
    orders = medications.spasticity_history(plan, rng) + medications.co_medication(plan, rng)
    course = Course(factory, plan)
    course.run()
    if course.peg_day is not None:
        orders += medications.switch_to_liquid(orders, course.peg_day, rng)
    orders += refractory_procedures(factory, plan, orders)
    for order in orders:
        medications.render(factory, order)
    return factory.resources


def patient_resource(plan: Plan, rng: random.Random) -> Resource:
    """The Patient resource."""
    return {
        "resourceType": "Patient",
        "id": plan.patient_id,
        "meta": {"security": [codes.coding(codes.TEST_DATA)]},
        "identifier": [
            {
                "type": {"coding": [codes.coding(codes.MEDICAL_RECORD_NUMBER)]},
                "system": codes.MRN_SYSTEM,
                "value": f"SYN{plan.seed}-{plan.index:07d}",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN[plan.sex])]}],
        "gender": plan.sex,
        "birthDate": plan.birth.isoformat(),
    }


# Conditions -------------------------------------------------------------------------------------


def primary_diagnosis_code(plan: Plan, rng: random.Random) -> dict[str, Any]:
    """The MND (or non-MND control) diagnosis, coded in one of the ways real systems code it."""
    if plan.disease == "ms":
        return concept(
            *rng.choice([[codes.MS_SCT], [codes.MS_ICD], [codes.MS_SCT, codes.MS_ICD]]),
            text="Multiple sclerosis",
        )
    if plan.disease == "pls":
        icd = rng.choices((codes.PLS_ICD, codes.MND_OTHER_ICD, codes.MND_UNSPEC_ICD), (0.7, 0.2, 0.1))[0]
        return concept(icd, text="Primary lateral sclerosis")
    style = rng.choices(("snomed", "icd", "both", "text"), (0.3, 0.3, 0.3, 0.1))[0]
    text = rng.choice(MND_TEXTS)
    icd = codes.ALS_ICD if chance(rng, 0.9) else codes.MND_UNSPEC_ICD
    if style == "text":
        return {"text": text}
    if style == "snomed":
        return concept(codes.ALS_SCT, text=text)
    if style == "icd":
        return concept(icd, text=text)
    return concept(codes.ALS_SCT, icd, text=text)


def diagnoses(factory: Factory, plan: Plan) -> None:
    """Primary diagnosis, spasticity and comorbidities."""
    rng = factory.rng
    factory.condition(primary_diagnosis_code(plan, rng), plan.visits[0], category="encounter-diagnosis")
    if plan.spastic and chance(rng, 0.6):
        factory.condition(concept(codes.SPASTICITY_SCT, text="Spasticity"), plan.visits[0])
    history = plan.visits[0] - timedelta(days=rng.randint(300, 4000))
    if plan.kidney == "dialysis":
        factory.condition(concept(codes.ESRD_ICD, text="End stage renal disease on dialysis"), history)
    elif plan.kidney == "ckd3" and chance(rng, 0.7):
        factory.condition(concept(codes.CKD3_ICD), history)
    if plan.sleep_apnoea:
        pair = rng.choice([[codes.OSA_ICD], [codes.OSA_SCT], [codes.OSA_ICD, codes.OSA_SCT]])
        factory.condition(concept(*pair, text="Obstructive sleep apnoea"), history)
    if plan.psychosis:
        factory.condition(concept(codes.PSYCHOSIS_ICD, text="History of psychosis (schizophrenia)"), history)
    if plan.hypertensive:
        factory.condition(concept(codes.HYPERTENSION_ICD, text="Hypertension"), history)
    if plan.orthostatic_hypotension and chance(rng, 0.5):
        factory.condition(concept(codes.OH_ICD, text="Orthostatic hypotension"), plan.visits[0])


# Visits -----------------------------------------------------------------------------------------


class Course:
    """Walks the visit schedule and emits encounters, measurements and disease-stage events."""

    def __init__(self, factory: Factory, plan: Plan) -> None:
        self.f = factory
        self.plan = plan
        self.rng = factory.rng
        self.niv = False
        self.peg = False
        self.peg_day: date | None = None
        self.dysphagia = False

    def run(self) -> None:
        """Emit everything that happens at each visit."""
        if self.plan.kidney == "dialysis":
            start = self.plan.visits[0] - timedelta(days=self.rng.randint(100, 1500))
            period = {"start": instant(start)}
            code = concept(codes.HAEMODIALYSIS_SCT, text="Haemodialysis")
            self.f.procedure(code, "in-progress", performedPeriod=period)
        for number, day in enumerate(self.plan.visits):
            self.visit(number, day)

    def visit(self, number: int, day: date) -> None:
        """One clinic visit."""
        plan, rng = self.plan, self.rng
        at = instant(day, time(rng.randint(8, 15), rng.choice((0, 15, 30, 45))))
        end = instant(day, time(16, 30))
        enc = self.f.encounter(at, end, rng.choice(("MND clinic", "Neurology outpatient", "Multidisciplinary clinic")))
        self.blood_pressure(day, at, enc)
        if plan.is_mnd:
            self.mnd_scores(day, at, enc, number)
        if plan.spastic:
            self.spasticity(day, at, enc)
        if number % plan.profile.lab_every == 0 or day in plan.alt_flags:
            self.labs(day, at, enc)
        vitals_every = plan.profile.vitals_every
        if vitals_every and number % vitals_every == 0:
            self.vitals(day, at, enc)

    def numeric(self, code: dict[str, Any], category: str, at: str, enc: Resource, reading: Reading) -> None:
        """An Observation with a quantity; about 2 % carry the number as a string instead."""
        value, unit = reading
        if chance(self.rng, 0.02):
            payload: dict[str, Any] = {"valueString": str(value)}
        else:
            payload = {"valueQuantity": quantity(value, unit)}
        self.f.observation(code, category, at, payload, enc)

    def mnd_scores(self, day: date, at: str, enc: Resource, number: int) -> None:
        """ALSFRS-R, swallowing item, FVC, SNIP and the stage events they trigger."""
        plan, rng = self.plan, self.rng
        total = model.alsfrs_total(plan, day, rng)
        self.numeric(concept(codes.ALSFRS_R, text="ALSFRS-R total"), "survey", at, enc, (total, "{score}"))
        swallow = model.swallowing_item(plan, day)
        swallow_code = concept(codes.SWALLOW_LOCAL, text="ALSFRS-R swallowing")
        self.f.observation(swallow_code, "survey", at, {"valueInteger": swallow}, enc)
        fvc = None
        if plan.disease == "als" or number % 2 == 0:
            fvc = model.fvc_percent(plan, day, rng)
            self.numeric(concept(codes.FVC_PCT, text="FVC % predicted"), "exam", at, enc, (fvc, "%"))
        snip = None
        if plan.snip_tested:
            snip = model.snip_value(plan, day, rng)
            self.numeric(concept(codes.SNIP_LOCAL, text="SNIP"), "exam", at, enc, (snip, "cm[H2O]"))
            if plan.mip_tested:
                mip = round(clamp(snip * rng.uniform(0.75, 1.0), 5, 150))
                self.numeric(concept(codes.MIP_LOCAL, text="MIP"), "exam", at, enc, (mip, "cm[H2O]"))
        if fvc is not None and fvc < 65 and chance(rng, 0.35):
            self.blood_gas(at, enc, fvc)
        self.stage_events(day, swallow, fvc, snip)

    def blood_gas(self, at: str, enc: Resource, fvc: int) -> None:
        """Arterial PaCO2, rising as FVC falls, in mm[Hg] or kPa by the patient's lab."""
        mmhg = 39 + max(0, 60 - fvc) * 0.35 + self.rng.gauss(0, 2.5)
        reading = (round(mmhg / 7.50062, 1), "kPa") if self.plan.labs.paco2_kpa else (round(mmhg), "mm[Hg]")
        self.numeric(concept(codes.PACO2, text="Arterial pCO2"), "laboratory", at, enc, reading)

    def stage_events(self, day: date, swallow: int, fvc: int | None, snip: int | None) -> None:
        """Dysphagia diagnosis, gastrostomy and NIV once the measurements call for them."""
        rng = self.rng
        if not self.dysphagia and swallow <= 3 and chance(rng, 0.8):
            self.dysphagia = True
            pair = rng.choice(
                [[codes.DYSPHAGIA_SCT], [codes.DYSPHAGIA_ICD], [codes.DYSPHAGIA_SCT, codes.DYSPHAGIA_ICD]]
            )
            self.f.condition(concept(*pair, text="Dysphagia"), day)
        if not self.peg and ((swallow <= 1 and chance(rng, 0.7)) or (swallow == 2 and chance(rng, 0.1))):
            self.peg = True
            self.gastrostomy(day + timedelta(days=rng.randint(5, 30)))
        respiratory = (fvc is not None and fvc < 50) or (snip is not None and snip < 40)
        if not self.niv and respiratory and chance(rng, 0.6):
            self.niv = True
            start = day + timedelta(days=rng.randint(3, 30))
            if start < self.plan.as_of:
                code = concept(codes.NIV_SCT, text="Non-invasive ventilation")
                self.f.procedure(code, "in-progress", performedPeriod={"start": instant(start)})

    def gastrostomy(self, day: date) -> None:
        """Inpatient stay with a percutaneous endoscopic gastrostomy."""
        if day + timedelta(days=2) >= self.plan.as_of:
            return
        stay = self.f.encounter(
            instant(day, time(8)),
            instant(day + timedelta(days=2), time(11)),
            "Gastroenterology admission",
            "IMP",
        )
        self.peg_day = day
        text = "Percutaneous endoscopic gastrostomy"
        code = concept(codes.PEG_PCS, text=text) if chance(self.rng, 0.6) else {"text": text}
        self.f.procedure(
            code,
            "completed",
            performedDateTime=instant(day, time(10)),
            encounter={"reference": f"Encounter/{stay['id']}"},
        )

    def spasticity(self, day: date, at: str, enc: Resource) -> None:
        """Modified Ashworth per muscle group, Penn spasm frequency, and the PT tone assessment."""
        plan, rng = self.plan, self.rng
        for site, offset in zip(plan.mas_sites, plan.mas_offsets, strict=True):
            mas_code = concept(codes.MAS_SCT, codes.MAS_LOCAL, text="Modified Ashworth Scale")
            grade = model.mas_grade(plan, day, rng, offset)
            value = {"valueString": grade} if isinstance(grade, str) else {"valueInteger": grade}
            self.f.observation(mas_code, "exam", at, value, enc, bodySite={"text": site})
        penn = model.penn_score(plan, day, rng)
        self.f.observation(
            concept(codes.PENN_LOCAL, text="Penn spasm frequency"), "survey", at, {"valueInteger": penn}, enc
        )
        ambulant = not plan.is_mnd or model.walking_item(plan, day) >= 2
        if plan.pt_assessed and ambulant and chance(rng, 0.35):
            relies = plan.relies_on_tone and chance(rng, 0.9)
            code = concept(codes.TONE_LOCAL, text="Relies on tone for standing/transfers (PT assessment)")
            self.f.observation(
                code, "exam", at, {"valueBoolean": relies}, enc, performer=[{"display": "Physiotherapist"}]
            )

    def blood_pressure(self, day: date, at: str, enc: Resource) -> None:
        """Seated BP panel, plus lying/standing pairs for some patients."""
        plan, rng = self.plan, self.rng
        low = day in plan.low_bp_flags
        sbp = plan.bp_base[0] + rng.gauss(0, 7) - (28 if low else 0)
        dbp = plan.bp_base[1] + rng.gauss(0, 5) - (12 if low else 0)
        components = [self.bp_component(codes.SBP, sbp), self.bp_component(codes.DBP, dbp)]
        panel = concept(codes.BP_PANEL, text="Blood pressure")
        self.f.observation(panel, "vital-signs", at, {"component": components}, enc)
        if (plan.orthostatic_pairs or low or plan.orthostatic_hypotension) and chance(rng, 0.6):
            self.lying_standing(sbp, dbp, at, enc, orthostatic=low or plan.orthostatic_hypotension)

    @staticmethod
    def bp_component(code: codes.Coding, value: float) -> dict[str, Any]:
        """One BP component in mm[Hg]."""
        return {"code": concept(code), "valueQuantity": quantity(round(clamp(value, 50, 230)), "mm[Hg]")}

    def lying_standing(self, sbp: float, dbp: float, at: str, enc: Resource, *, orthostatic: bool) -> None:
        """Four single-value observations: systolic/diastolic, supine/standing."""
        rng = self.rng
        drop_s = rng.uniform(22, 40) if orthostatic else rng.uniform(-6, 10)
        drop_d = rng.uniform(10, 20) if orthostatic else rng.uniform(-6, 5)
        supine_s, supine_d = sbp + rng.uniform(0, 8), dbp + rng.uniform(-2, 4)
        for code, value in (
            (codes.SBP_SUPINE, supine_s),
            (codes.DBP_SUPINE, supine_d),
            (codes.SBP_STANDING, supine_s - drop_s),
            (codes.DBP_STANDING, supine_d - drop_d),
        ):
            payload = {"valueQuantity": quantity(round(clamp(value, 50, 230)), "mm[Hg]")}
            self.f.observation(concept(code), "vital-signs", at, payload, enc)

    def labs(self, day: date, at: str, enc: Resource) -> None:
        """Creatinine, eGFR, ALT, AST and bilirubin."""
        self.renal(day, at, enc)
        self.liver(day, at, enc)

    def lab(self, code: codes.Coding, at: str, enc: Resource, value: dict[str, Any], high: float | None) -> None:
        """One laboratory Observation with an optional upper reference limit in the value's unit."""
        extra: dict[str, Any] = {}
        if high is not None and self.plan.labs.reference_ranges:
            extra["referenceRange"] = [{"high": quantity(high, value["unit"])}]
        self.f.observation(concept(code), "laboratory", at, {"valueQuantity": value}, enc, **extra)

    def renal(self, day: date, at: str, enc: Resource) -> None:
        """Creatinine in mg/dL or umol/L and an eGFR computed from it."""
        plan, style = self.plan, self.plan.labs
        creat = model.creatinine_mg_dl(plan, day, self.rng)
        male = plan.sex == "male"
        high: float
        if style.creatinine_si:
            value, high = quantity(round(creat * 88.42), "umol/L"), 110 if male else 90
        else:
            value, high = quantity(round(creat, 2), "mg/dL"), 1.25 if male else 1.02
        self.lab(codes.CREATININE, at, enc, value, high)
        egfr = round(model.ckd_epi_2021(creat, plan.age(day), plan.sex))
        value = quantity(egfr, "mL/min/{1.73_m2}")
        if style.egfr_capped and egfr > 90:
            value = {"value": 90, "comparator": ">", "unit": value["unit"], "system": codes.UCUM}
            value["code"] = "mL/min/{1.73_m2}"
        self.lab(codes.EGFR_MDRD if style.egfr_mdrd else codes.EGFR_2021, at, enc, value, None)

    def liver(self, day: date, at: str, enc: Resource) -> None:
        """ALT, AST and total bilirubin, with flagged rises and a few chronic mild abnormalities."""
        plan, rng, style = self.plan, self.rng, self.plan.labs
        factor = 1.0
        if day in plan.alt_flags:
            factor = rng.uniform(3.2, 8.0)
        elif plan.mild_liver and chance(rng, 0.6):
            factor = rng.uniform(1.2, 2.6)
        alt = round(rng.uniform(12, 32) * factor)
        ast = round(rng.uniform(15, 30) * (1 + (factor - 1) * 0.6))
        self.lab(codes.ALT, at, enc, quantity(alt, "U/L"), style.alt_uln)
        self.lab(codes.AST, at, enc, quantity(ast, "U/L"), 40)
        bili = rng.uniform(1.3, 2.8) if plan.gilbert else rng.uniform(0.3, 1.0)
        if style.bilirubin_si:
            self.lab(codes.BILIRUBIN, at, enc, quantity(round(bili * 17.1), "umol/L"), 21)
        else:
            self.lab(codes.BILIRUBIN, at, enc, quantity(round(bili, 1), "mg/dL"), 1.2)

    def vitals(self, day: date, at: str, enc: Resource) -> None:
        """Weight, heart rate, SpO2 and pain score."""
        plan, rng = self.plan, self.rng
        weight = plan.weight_base * (1 - 0.004 * model.points_lost(plan, day)) + rng.gauss(0, 0.8)
        self.numeric(concept(codes.BODY_WEIGHT), "vital-signs", at, enc, (round(weight, 1), "kg"))
        self.numeric(concept(codes.HEART_RATE), "vital-signs", at, enc, (round(rng.gauss(76, 9)), "/min"))
        spo2 = round(clamp(rng.gauss(96, 1.5), 86, 100))
        self.numeric(concept(codes.SPO2), "vital-signs", at, enc, (spo2, "%"))
        self.f.observation(concept(codes.PAIN_NRS), "survey", at, {"valueInteger": rng.randint(0, 7)}, enc)


# Procedures for refractory spasticity ----------------------------------------------------------


def refractory_procedures(factory: Factory, plan: Plan, orders: list[medications.Order]) -> list[medications.Order]:
    """Intrathecal baclofen pump implants and botulinum toxin injections (some also ordered as text)."""
    rng = factory.rng
    for order in orders:
        if order.drug == "baclofen-intrathecal":
            code = {"text": "Implantation of intrathecal baclofen pump"}
            factory.procedure(code, "completed", performedDateTime=instant(order.start - timedelta(days=1), time(10)))
    if not plan.spastic or plan.mas_base < 2.6 or not chance(rng, 0.2):
        return []
    day = plan.visits[len(plan.visits) // 3]
    site = rng.choice(plan.mas_sites)
    product = rng.choice(("onabotulinumtoxinA 100 units", "incobotulinumtoxinA 200 units"))
    ordered = chance(rng, 0.4)
    toxin_orders: list[medications.Order] = []
    while day < plan.as_of:
        factory.procedure(
            {"text": "Injection of botulinum toxin"},
            "completed",
            performedDateTime=instant(day, time(11)),
            bodySite=[{"text": site}],
            usedCode=[{"text": product}],
        )
        if ordered:
            toxin_orders.append(botulinum_order(day, site, product))
        day += timedelta(days=rng.randint(84, 140))
    return toxin_orders


def botulinum_order(day: date, site: str, product: str) -> medications.Order:
    """A text-only order for one injection session."""
    return medications.Order(
        "botulinum-toxin",
        None,
        1,
        day,
        end=day,
        status="completed",
        text_dose=f"{product} intramuscular, {site}, single session",
        label=product,
    )
