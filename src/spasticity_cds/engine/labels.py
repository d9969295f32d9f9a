"""How a fact's name reads to a clinician, on the page, on a card and in the CLI: one wording everywhere."""

from __future__ import annotations

from collections.abc import Mapping

from spasticity_cds.knowledge.schema import Definition

#: The facts the extractor derives (a ratio, a drop, a count): their names are not a concept's.
DERIVED_FACT_LABELS = {
    "obs.mas_max": "Highest Modified Ashworth grade",
    "obs.mas_groups": "Muscle groups with Modified Ashworth grade 1 or more",
    "obs.alt_x_uln": "ALT (multiple of upper limit)",
    "obs.ast_x_uln": "AST (multiple of upper limit)",
    "obs.bilirubin_x_uln": "Bilirubin (multiple of upper limit)",
    "obs.orthostatic_sbp_drop": "Fall in systolic pressure on standing",
    "obs.orthostatic_dbp_drop": "Fall in diastolic pressure on standing",
    "obs.liver_days_since": "Days since the last liver tests",
    "obs.liver_tested": "Liver tests on record",
    "patient.age": "Age",
    "patient.sex": "Sex",
    "patient.deceased": "Death recorded",
    "antispastic.oral_failed_count": "Oral antispastics stopped as ineffective or not tolerated",
}


def fact_label(name: str, concept_display: Mapping[str, str], definitions: Mapping[str, Definition]) -> str:
    """A clinician's name for a fact such as ``obs.egfr`` or ``med.baclofen.daily_dose``."""
    if name in DERIVED_FACT_LABELS:
        return DERIVED_FACT_LABELS[name]
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in concept_display:
        tail = " ".join(parts[2:]).replace("_", " ")
        return f"{concept_display[parts[1]]} {tail}".strip()
    if parts[0] == "setting" and len(parts) == 2:
        return f"The setting {parts[1]}"
    if parts[0] == "medclass" and len(parts) == 2:
        return f"Any {parts[1].replace('-', ' ')} medicine"
    if parts[0] == "def" and len(parts) == 2 and parts[1] in definitions:
        return definitions[parts[1]].description
    return name.replace("_", " ")
