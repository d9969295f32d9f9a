"""Per rule: a record on which it fires, one on which it does not, and one with the data it needs missing.

``missing_outcome`` is the tree's value when the data is absent: ``unknown`` (the rule cannot decide: a data-gap
finding if its policy says so, else silence), ``false`` (absence of a coded item simply means "not present") or
``true`` (absence is itself the trigger, e.g. no ALS diagnosis, or no baclofen tried yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .records import (
    ICD,
    Resource,
    alt,
    ast,
    bilirubin,
    condition,
    days_ago,
    egfr,
    fvc,
    mas,
    med,
    normal_breathing,
    orthostatic,
    patient,
    procedure,
    reduced_breathing,
    relies_on_tone,
    swallowing,
    systolic,
)

Build = Callable[[], list[Resource]]


@dataclass(frozen=True)
class RuleCase:
    rule_id: str
    fires: Build
    does_not_fire: Build | None
    missing: Build
    missing_outcome: str = "unknown"
    settings: dict[str, Any] = field(default_factory=dict)
    with_als: tuple[bool, bool, bool] = (True, True, True)  # for fires, does_not_fire, missing
    #: The Patient resource of the record on which the rule fires, when the usual one would not do.
    fires_person: Callable[[], Resource] | None = None


def _c(rule_id: str, fires: Build, not_: Build | None, missing: Build, outcome: str = "unknown", **kw: Any) -> RuleCase:
    return RuleCase(rule_id, fires, not_, missing, outcome, **kw)


def none() -> list[Resource]:
    return []


LIVER = condition(ICD, "K74.60")

CASES: list[RuleCase] = [
    # ---- ladder
    _c("LADDER-NONDRUG-FIRST", none, none, none, "false", with_als=(True, False, False)),
    _c("LADDER-BACLOFEN-FIRST-LINE", none, lambda: [med("baclofen", dose=10, per_day=3)], none, "true"),
    _c(
        "LADDER-AFTER-BACLOFEN",
        lambda: [med("baclofen", status="stopped", reason="ineffective")],
        lambda: [med("baclofen", dose=10, per_day=3)],
        lambda: [med("baclofen")],
    ),
    *(
        _c(
            f"{agent.upper()}-FAILED-BEFORE",
            lambda agent=agent: [med(agent, status="stopped", reason="side effects"), med(agent, status="draft")],
            lambda agent=agent: [med(agent, status="stopped", reason="moved house"), med(agent, status="draft")],
            none,
            "false",
        )
        for agent in ("tizanidine", "gabapentin")
    ),
    _c(
        "ADDED-SEDATION",
        lambda: [med("lorazepam", dose=1, per_day=2), med("tizanidine", status="draft")],
        lambda: [med("tizanidine", status="draft")],
        none,
        "false",
    ),
    _c("DANT-ADJUNCT-ONLY", lambda: [med("dantrolene")], lambda: [med("dantrolene"), med("baclofen")], none, "false"),
    _c(
        "ITB-REFERRAL",
        lambda: [med("baclofen", status="stopped", reason="ineffective"), mas("3", "left hip adductors")],
        lambda: [med("baclofen", status="stopped", reason="ineffective"), mas("2", "left hip adductors")],
        lambda: [med("baclofen", status="stopped", reason="ineffective")],
    ),
    _c(
        "BOTOX-FOCAL",
        lambda: [mas("2", "right elbow flexors")],
        lambda: [mas("2", "left calf"), mas("2", "right calf"), mas("2", "left hamstrings")],
        none,
    ),
    _c("SPASTICITY-SEVERITY", lambda: [mas("1+", "left calf")], None, none),
    _c("NABIXIMOLS-OFF-LABEL", lambda: [med("Sativex spray")], none, none, "false"),
    # ---- contraindications
    _c(
        "NABIXIMOLS-PSYCHOSIS",
        lambda: [med("Sativex spray"), condition(ICD, "F20.0", status="resolved")],
        lambda: [med("Sativex spray")],
        none,
        "false",
    ),
    # Under the default jurisdiction (us) it always holds: the finding speaks while nabiximols is taken or ordered.
    _c(
        "NABIXIMOLS-NOT-US",
        lambda: [med("Sativex spray", status="draft")],
        None,
        lambda: [med("nabiximols")],
        "true",
    ),
    _c(
        "NABIXIMOLS-BREASTFEEDING",
        lambda: [med("nabiximols", status="draft"), condition(ICD, "Z39.1")],
        lambda: [med("nabiximols", status="draft")],
        none,
        "false",
    ),
    _c(
        "DIAZEPAM-OTHER-CONTRAINDICATIONS",
        lambda: [med("diazepam", status="draft"), condition(ICD, "G70.00")],
        lambda: [med("diazepam", status="draft")],
        none,
        "false",
    ),
    _c("DYSPHAGIA-FORMULATION", lambda: [swallowing(2)], lambda: [swallowing(4)], none),
    # ---- function
    _c("TONE-RELIANCE", lambda: [relies_on_tone(True)], lambda: [relies_on_tone(False)], none),
    _c(
        "DANT-TONE-RELIANCE",
        lambda: [relies_on_tone(True), med("dantrolene", status="draft")],
        lambda: [relies_on_tone(False), med("dantrolene", status="draft")],
        lambda: [med("dantrolene", status="draft")],
    ),
    _c(
        "SEDATING-ANTISPASTICS-COMBINED",
        lambda: [med("baclofen", dose=10, per_day=3), med("gabapentin", status="draft")],
        lambda: [med("baclofen", dose=10, per_day=3), med("dantrolene", status="draft")],
        none,
        "false",
    ),
    _c(
        "BENZO-PALLIATIVE-SEDATION",
        lambda: [med("gabapentin"), med("diazepam", indication="Breathlessness - end of life palliative care")],
        lambda: [med("gabapentin"), med("diazepam", indication="Spasticity")],
        none,
        "false",
    ),
    _c("SEDATION-WEAKNESS-WATCH", lambda: [med("baclofen")], none, none, "false"),
    # ---- interactions
    _c(
        "TIZ-CYP1A2-STRONG", lambda: [med("tizanidine"), med("fluvoxamine")], lambda: [med("tizanidine")], none, "false"
    ),
    _c("TIZ-CYP1A2-OTHER", lambda: [med("tizanidine"), med("amiodarone")], lambda: [med("tizanidine")], none, "false"),
    _c(
        "ALPHA2-DUPLICATE-TIZANIDINE",
        lambda: [med("tizanidine"), med("clonidine")],
        lambda: [med("tizanidine")],
        none,
        "false",
    ),
    _c(
        "ALPHA2-DUPLICATE-CLONIDINE",
        lambda: [med("clonidine"), med("tizanidine", status="draft")],
        lambda: [med("clonidine")],
        none,
        "false",
    ),
    _c("DANT-VERAPAMIL", lambda: [med("dantrolene"), med("verapamil")], lambda: [med("dantrolene")], none, "false"),
    _c(
        "DANT-OESTROGEN",
        lambda: [med("dantrolene", status="draft"), med("ethinyl estradiol")],
        lambda: [med("dantrolene", status="draft")],
        none,
        "false",
    ),
    _c("HEPATOTOXIC-BURDEN", lambda: [med("riluzole"), med("tizanidine")], lambda: [med("tizanidine")], none, "false"),
    # ---- kidney
    _c("BACLOFEN-KIDNEY-FAILURE-AVOID", lambda: [egfr(20)], lambda: [egfr(60)], none),
    _c(
        "BACLOFEN-KIDNEY-FAILURE-REDUCE",
        lambda: [egfr(20)],
        lambda: [egfr(60)],
        none,
        settings={"baclofen_severe_ckd_policy": "reduce"},
    ),
    _c("BACLOFEN-RENAL-BAND", lambda: [egfr(60)], lambda: [egfr(90)], none),
    _c(
        "BACLOFEN-DOSE-ABOVE-CEILING",
        lambda: [egfr(40), med("baclofen", dose=20, per_day=3)],
        lambda: [egfr(40), med("baclofen", dose=10, per_day=3)],
        lambda: [med("baclofen", dose=20, per_day=3)],
    ),
    _c(
        "BACLOFEN-DOSE-ABOVE-MAX",
        lambda: [med("baclofen", dose=30, per_day=3)],
        lambda: [med("baclofen", dose=10, per_day=3)],
        lambda: [med("baclofen")],
    ),
    _c(
        "GABAPENTIN-DOSE-ABOVE-CEILING",
        lambda: [egfr(25), med("gabapentin", dose=600, per_day=3)],
        lambda: [egfr(90), med("gabapentin", dose=1200, per_day=4)],  # above the maximum: the max rule speaks
        lambda: [med("gabapentin", dose=600, per_day=3)],
    ),
    # ---- maximum doses
    _c(
        "TIZ-DOSE-ABOVE-MAX",
        lambda: [med("tizanidine", dose=12, per_day=4)],
        lambda: [med("tizanidine", dose=12, per_day=3)],
        lambda: [med("tizanidine")],
    ),
    _c(
        "DANT-DOSE-ABOVE-MAX",
        lambda: [med("dantrolene", dose=200, per_day=3, status="draft")],
        lambda: [med("dantrolene", dose=100, per_day=4)],
        lambda: [med("dantrolene")],
    ),
    _c(
        "GABAPENTIN-DOSE-ABOVE-MAX",
        lambda: [med("gabapentin", dose=1200, per_day=4)],
        lambda: [egfr(95), med("gabapentin", dose=1200, per_day=3)],
        lambda: [med("gabapentin")],
    ),
    _c(
        "TIZ-RENAL",
        lambda: [egfr(20), med("tizanidine", dose=2, per_day=3)],
        lambda: [egfr(60), med("tizanidine", dose=2, per_day=3)],
        lambda: [med("tizanidine", dose=2, per_day=3)],
    ),
    _c(
        "CLONIDINE-RENAL",
        lambda: [egfr(45), med("clonidine", status="draft")],
        lambda: [egfr(75), med("clonidine", status="draft")],
        lambda: [med("clonidine", status="draft")],
    ),
    # ---- liver
    _c("DANT-LIVER-DISEASE", lambda: [LIVER, med("dantrolene")], lambda: [med("dantrolene")], none, "false"),
    _c(
        "DANT-LFT-ABNORMAL",
        lambda: [alt(100), med("dantrolene")],
        lambda: [alt(20), ast(22), bilirubin(0.6), med("dantrolene")],
        lambda: [med("dantrolene")],
    ),
    _c(
        "TIZ-LIVER-3X",
        lambda: [alt(150), med("tizanidine")],
        lambda: [alt(60), ast(50), med("tizanidine")],
        lambda: [med("tizanidine")],
    ),
    _c("TIZ-LIVER-DISEASE", lambda: [LIVER, med("tizanidine")], lambda: [med("tizanidine")], none, "false"),
    _c("BENZO-LIVER", lambda: [LIVER, med("diazepam", status="draft")], lambda: [med("diazepam")], none, "false"),
    _c("HYS-LAW-SIGNAL", lambda: [alt(150), bilirubin(3.0)], lambda: [alt(150), bilirubin(1.0)], lambda: [alt(150)]),
    _c(
        "RILUZOLE-ALT-5X",
        lambda: [med("riluzole"), alt(250)],
        lambda: [med("riluzole"), alt(100)],
        lambda: [med("riluzole")],
    ),
    # ---- monitoring
    _c(
        "DANT-LFT-DUE",
        lambda: [med("dantrolene", start=days_ago(30)), alt(20, when=days_ago(20))],
        lambda: [med("dantrolene", start=days_ago(20)), alt(20, when=days_ago(5))],
        lambda: [med("dantrolene"), alt(20, when=days_ago(20))],
    ),
    _c(
        "DANT-45-DAY-REVIEW",
        lambda: [med("dantrolene", start=days_ago(60)), alt(20)],
        lambda: [med("dantrolene", start=days_ago(327)), alt(20)],  # past benefit_review_window_days
        lambda: [med("dantrolene"), alt(20)],
    ),
    _c("TIZ-LFT-BASELINE", lambda: [med("tizanidine")], lambda: [med("tizanidine"), alt(20)], none, "false"),
    _c("DANT-LFT-BASELINE", lambda: [med("dantrolene")], lambda: [med("dantrolene"), alt(20)], none, "false"),
    _c("RILUZOLE-LFT-BASELINE", lambda: [med("riluzole")], lambda: [med("riluzole"), alt(20)], none, "false"),
    _c(
        "RILUZOLE-LFT-DUE",
        lambda: [med("riluzole", start=days_ago(50)), alt(20, when=days_ago(40))],
        lambda: [med("riluzole", start=days_ago(50)), alt(20, when=days_ago(10))],
        lambda: [med("riluzole"), alt(20, when=days_ago(40))],
    ),
    _c(
        "NABIXIMOLS-4-WEEK-REVIEW",
        lambda: [med("Sativex spray", start=days_ago(35))],
        lambda: [med("Sativex spray", start=days_ago(10))],
        lambda: [med("Sativex spray")],
    ),
    # ---- respiratory
    _c("RESP-STATUS", lambda: [procedure("BiPAP overnight")], normal_breathing, none),
    _c(
        "BENZO-RESP-GATE",
        lambda: [condition(ICD, "G47.33"), med("diazepam", status="draft")],
        lambda: [*normal_breathing(), med("diazepam", status="draft")],
        lambda: [med("diazepam", status="draft")],
    ),
    _c(
        "BENZO-PALLIATIVE-RESP",
        lambda: [condition(ICD, "G47.33"), med("diazepam", indication="Breathlessness - end of life palliative care")],
        lambda: [*normal_breathing(), med("diazepam", indication="Breathlessness - end of life palliative care")],
        lambda: [med("diazepam", indication="Breathlessness - end of life palliative care")],
    ),
    _c(
        "DANT-PULMONARY",
        lambda: [fvc(40), med("dantrolene", status="draft")],
        lambda: [*normal_breathing(), med("dantrolene", status="draft")],
        lambda: [med("dantrolene", status="draft")],
    ),
    _c(
        "BENZO-RESP-REDUCED",
        lambda: [*reduced_breathing(), med("clonazepam", status="draft")],
        lambda: [*normal_breathing(), med("clonazepam", status="draft")],
        lambda: [med("clonazepam", status="draft")],
    ),
    _c("BENZO-OPIOID", lambda: [med("morphine"), med("diazepam")], lambda: [med("diazepam")], none, "false"),
    _c("BACLOFEN-OPIOID", lambda: [med("morphine"), med("baclofen")], lambda: [med("baclofen")], none, "false"),
    _c("TIZ-OPIOID", lambda: [med("morphine"), med("tizanidine")], lambda: [med("tizanidine")], none, "false"),
    _c(
        "ITB-RESPIRATORY",
        lambda: [
            procedure("BiPAP overnight"),
            med("baclofen", status="stopped", reason="ineffective"),
            mas("3", "hip"),
        ],
        lambda: [*normal_breathing(), med("baclofen", status="stopped", reason="ineffective"), mas("3", "hip")],
        lambda: [med("baclofen", status="stopped", reason="ineffective"), mas("3", "hip")],
    ),
    _c(
        "GABAPENTIN-RESP",
        lambda: [med("morphine"), med("gabapentin")],
        lambda: [*normal_breathing(), med("gabapentin")],
        lambda: [med("gabapentin")],
    ),
    _c(
        "BOTOX-BULBAR-RESP",
        lambda: [swallowing(1), med("Botox injection", status="draft")],
        lambda: [swallowing(4), *normal_breathing(), med("Botox injection", status="draft")],
        lambda: [med("Botox injection", status="draft")],
    ),
    _c(
        "ORAL-BACLOFEN-WITH-PUMP",
        lambda: [procedure("Intrathecal baclofen pump implantation"), med("baclofen", dose=10, per_day=3)],
        lambda: [med("baclofen", dose=10, per_day=3)],
        lambda: [med("baclofen", dose=10, per_day=3)],
        "false",
    ),
    # ---- scope
    _c("SCOPE-NO-ALS", none, none, none, "true", with_als=(False, True, False)),
    _c(
        "SCOPE-DECEASED",
        lambda: [med("baclofen", dose=10, per_day=3)],
        lambda: [med("baclofen", dose=10, per_day=3)],
        none,
        "false",
        fires_person=lambda: {**patient(), "deceasedDateTime": days_ago(30)},
    ),
    # ---- withdrawal
    _c("BACLOFEN-NO-ABRUPT-STOP", lambda: [med("baclofen")], lambda: [med("baclofen", status="draft")], none, "false"),
    _c(
        "ITB-INTERRUPTION-EMERGENCY",
        lambda: [procedure("Intrathecal baclofen pump implantation")],
        lambda: [med("baclofen")],
        none,
        "false",
    ),
    _c("ALPHA2-TAPER", lambda: [med("tizanidine")], lambda: [med("tizanidine", status="draft")], none, "false"),
    _c("BENZO-TAPER", lambda: [med("clonazepam")], lambda: [med("clonazepam", status="draft")], none, "false"),
    # ---- blood pressure
    _c(
        "ALPHA2-HYPOTENSION",
        lambda: [*orthostatic(140, 110), med("tizanidine", status="draft")],
        lambda: [*orthostatic(130, 126), systolic(128)],
        none,
    ),
    _c(
        "ALPHA2-ANTIHYPERTENSIVE",
        lambda: [med("amlodipine"), med("tizanidine", status="draft")],
        lambda: [med("tizanidine", status="draft")],
        none,
        "false",
    ),
    _c("TIZ-BP-MONITOR", lambda: [med("tizanidine", status="draft")], none, none, "false"),
]
