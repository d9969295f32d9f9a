"""Code systems and codes used by the synthetic patient generator (see docs/synthetic-data.md)."""

from __future__ import annotations

from typing import Any, Final

SNOMED: Final = "http://snomed.info/sct"
ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS: Final = "http://www.cms.gov/Medicare/Coding/ICD10"
LOINC: Final = "http://loinc.org"
RXNORM: Final = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM: Final = "http://unitsofmeasure.org"
LOCAL: Final = "http://spasticity-cds.org/fhir/CodeSystem/local"
OBS_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
MRN_SYSTEM: Final = "http://synth.spasticity-cds.org/fhir/mrn"
IDENTIFIER_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
FHIR_BASE: Final = "https://synth.spasticity-cds.org/fhir/"

Coding = tuple[str, str, str]

MEDICAL_RECORD_NUMBER: Final = (IDENTIFIER_TYPE, "MR", "Medical record number")


def coding(code: Coding) -> dict[str, Any]:
    """Render a (system, code, display) triple as a FHIR Coding."""
    return {"system": code[0], "code": code[1], "display": code[2]}


TEST_DATA: Final = (ACT_REASON, "HTEST", "test health data")

# Diagnoses
ALS_SCT: Final = (SNOMED, "86044005", "Amyotrophic lateral sclerosis")
ALS_ICD: Final = (ICD10CM, "G12.21", "Amyotrophic lateral sclerosis")
PLS_ICD: Final = (ICD10CM, "G12.23", "Primary lateral sclerosis")
MND_UNSPEC_ICD: Final = (ICD10CM, "G12.20", "Motor neuron disease, unspecified")
MND_OTHER_ICD: Final = (ICD10CM, "G12.29", "Other motor neuron disease")
MS_SCT: Final = (SNOMED, "24700007", "Multiple sclerosis")
MS_ICD: Final = (ICD10CM, "G35", "Multiple sclerosis")
SPASTICITY_SCT: Final = (SNOMED, "221360009", "Spasticity")
DYSPHAGIA_SCT: Final = (SNOMED, "40739000", "Dysphagia")
DYSPHAGIA_ICD: Final = (ICD10CM, "R13.10", "Dysphagia, unspecified")
ESRD_ICD: Final = (ICD10CM, "N18.6", "End stage renal disease")
CKD3_ICD: Final = (ICD10CM, "N18.30", "Chronic kidney disease, stage 3 unspecified")
OSA_ICD: Final = (ICD10CM, "G47.33", "Obstructive sleep apnea (adult) (pediatric)")
OSA_SCT: Final = (SNOMED, "78275009", "Obstructive sleep apnea syndrome")
PSYCHOSIS_ICD: Final = (ICD10CM, "F20.9", "Schizophrenia, unspecified")
HYPERTENSION_ICD: Final = (ICD10CM, "I10", "Essential (primary) hypertension")
OH_ICD: Final = (ICD10CM, "I95.1", "Orthostatic hypotension")

# Procedures
NIV_SCT: Final = (SNOMED, "428311008", "Non-invasive ventilation")
PEG_PCS: Final = (
    ICD10PCS,
    "0DH64UZ",
    "Insertion of Feeding Device into Stomach, Percutaneous Endoscopic Approach",
)
HAEMODIALYSIS_SCT: Final = (SNOMED, "302497006", "Hemodialysis")

# Observations (LOINC)
FVC_PCT: Final = (LOINC, "19872-1", "FVC measured/predicted")
ALSFRS_R: Final = (LOINC, "67131-4", "ALSFRS-R total score")
CREATININE: Final = (LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma")
EGFR_2021: Final = (
    LOINC,
    "98979-8",
    "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood "
    "by Creatinine-based formula (CKD-EPI 2021)",
)
EGFR_MDRD: Final = (
    LOINC,
    "33914-3",
    "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma "
    "by Creatinine-based formula (MDRD)",
)
ALT: Final = (LOINC, "1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma")
AST: Final = (LOINC, "1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma")
BILIRUBIN: Final = (LOINC, "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma")
BP_PANEL: Final = (LOINC, "85354-9", "Blood pressure panel with all children optional")
SBP: Final = (LOINC, "8480-6", "Systolic blood pressure")
DBP: Final = (LOINC, "8462-4", "Diastolic blood pressure")
SBP_SUPINE: Final = (LOINC, "8461-6", "Systolic blood pressure--supine")
SBP_STANDING: Final = (LOINC, "8460-8", "Systolic blood pressure--standing")
DBP_SUPINE: Final = (LOINC, "8455-8", "Diastolic blood pressure--supine")
DBP_STANDING: Final = (LOINC, "8454-1", "Diastolic blood pressure--standing")
BODY_WEIGHT: Final = (LOINC, "29463-7", "Body weight")
HEART_RATE: Final = (LOINC, "8867-4", "Heart rate")
SPO2: Final = (LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")
PACO2: Final = (LOINC, "2019-8", "Carbon dioxide [Partial pressure] in Arterial blood")
PAIN_NRS: Final = (LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")

# Scales (SNOMED + local)
MAS_SCT: Final = (SNOMED, "765771006", "Modified Ashworth scale")
MAS_LOCAL: Final = (LOCAL, "modified-ashworth", "Modified Ashworth Scale grade")
PENN_LOCAL: Final = (LOCAL, "penn-spasm-frequency", "Penn Spasm Frequency Scale")
TONE_LOCAL: Final = (LOCAL, "relies-on-tone", "Relies on muscle tone for standing or transfers")
SWALLOW_LOCAL: Final = (LOCAL, "alsfrs-r-swallowing", "ALSFRS-R item 3 swallowing")
SNIP_LOCAL: Final = (LOCAL, "snip", "Sniff nasal inspiratory pressure")
MIP_LOCAL: Final = (LOCAL, "mip", "Maximal inspiratory pressure (magnitude)")

# Medications: RxNorm ingredient codes
RX_INGREDIENTS: Final[dict[str, Coding]] = {
    "baclofen": (RXNORM, "1292", "baclofen"),
    "tizanidine": (RXNORM, "57258", "tizanidine"),
    "clonidine": (RXNORM, "2599", "clonidine"),
    "dantrolene": (RXNORM, "3105", "dantrolene"),
    "diazepam": (RXNORM, "3322", "diazepam"),
    "clonazepam": (RXNORM, "2598", "clonazepam"),
    "gabapentin": (RXNORM, "25480", "gabapentin"),
    "riluzole": (RXNORM, "35623", "riluzole"),
    "morphine": (RXNORM, "7052", "morphine"),
    "oxycodone": (RXNORM, "7804", "oxycodone"),
    "fluvoxamine": (RXNORM, "42355", "fluvoxamine"),
    "ciprofloxacin": (RXNORM, "2551", "ciprofloxacin"),
    "amiodarone": (RXNORM, "703", "amiodarone"),
    "verapamil": (RXNORM, "11170", "verapamil"),
    "cimetidine": (RXNORM, "2541", "cimetidine"),
    "lisinopril": (RXNORM, "29046", "lisinopril"),
    "amlodipine": (RXNORM, "17767", "amlodipine"),
}

# Medications: RxNorm product-level codes (SCD / SBD), keyed by tablet strength in mg
BACLOFEN_PRODUCTS: Final[dict[int, list[Coding]]] = {
    10: [(RXNORM, "197391", "baclofen 10 MG Oral Tablet"), (RXNORM, "202109", "Lioresal 10 MG Oral Tablet")],
    20: [(RXNORM, "197392", "baclofen 20 MG Oral Tablet")],
}
BACLOFEN_INTRATHECAL: Final = (RXNORM, "1300890", "baclofen 1 MG/ML Intrathecal Solution")
