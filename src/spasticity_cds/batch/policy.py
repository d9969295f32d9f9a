"""Which findings become worklist Tasks, at what priority, under which codes: the batch policy in one place."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from spasticity_cds.fhir.record import PatientRecord

#: Finding kinds that put a patient on the worklist when their severity is warning or critical.
SAFETY_KINDS: Final = frozenset({"contraindication", "warning", "dose", "monitoring"})
#: Severities that make a safety finding actionable (``info`` never does).
ACTIONABLE_SEVERITIES: Final = frozenset({"critical", "warning"})
#: A ``recommendation`` is actionable only when it asks for one of these actions, whatever its severity.
ACTIONABLE_RECOMMENDATION_ACTIONS: Final = frozenset({"referral"})

#: FHIR Task.priority for each finding severity.
PRIORITY: Final = {"critical": "urgent", "warning": "routine", "info": "routine"}
#: Sort rank of a severity in the worklist (critical first).
SEVERITY_RANK: Final = {"critical": 0, "warning": 1, "info": 2}

BASE: Final = "https://spasticity-cds.org"
ACTION_SYSTEM: Final = f"{BASE}/CodeSystem/worklist-action"
RULE_SYSTEM: Final = f"{BASE}/CodeSystem/rule"
FACT_SYSTEM: Final = f"{BASE}/CodeSystem/fact"
TASK_INPUT_SYSTEM: Final = f"{BASE}/CodeSystem/task-input"
KB_VERSION_SYSTEM: Final = f"{BASE}/CodeSystem/knowledge-base-version"
KB_DIGEST_SYSTEM: Final = f"{BASE}/CodeSystem/knowledge-base-digest"
TASK_KEY_SYSTEM: Final = f"{BASE}/worklist-key"

#: Task.code for a finding: its rule's ``action`` when it has one, else a review of the named kind.
ACTION_DISPLAY: Final = {
    "renal-dose": "Adjust the dose for kidney function",
    "liver-test": "Order liver function tests",
    "taper": "Taper the drug, do not stop it abruptly",
    "referral": "Refer",
    "review": "Review the antispasticity regimen",
}


def is_actionable(finding: Mapping[str, Any]) -> bool:
    """True when a finding needs someone to act: the single definition every engine and output uses."""
    kind = finding.get("kind")
    if kind in SAFETY_KINDS:
        return finding.get("severity") in ACTIONABLE_SEVERITIES
    return kind == "recommendation" and finding.get("action") in ACTIONABLE_RECOMMENDATION_ACTIONS


def is_deceased(record: PatientRecord, now: datetime) -> bool:
    """True when the record's Patient records a death by ``now`` (``fhir.record.recorded_death``): such a patient
    gets no worklist Tasks, and the next ``--since`` run cancels the ones still open."""
    return record.death_recorded(now) is not None


def action_code(finding: Mapping[str, Any]) -> str:
    """The worklist action code of an actionable finding."""
    action = finding.get("action")
    return action if isinstance(action, str) and action in ACTION_DISPLAY else "review"
