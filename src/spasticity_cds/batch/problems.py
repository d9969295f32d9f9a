"""Line classification (patient key, status) and the OperationOutcome records every engine reports problems with."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from spasticity_cds.fhir.parse import UTF8_BOM, first_invalid_utf8, invalid_utf8
from spasticity_cds.fhir.record import conditional_identifier, identifier_tokens

#: The resource types of FHIR R4 (4.0.1); anything else in a ``resourceType`` is reported as unknown.
R4_TYPES: Final = frozenset(
    {
        "Account",
        "ActivityDefinition",
        "AdverseEvent",
        "AllergyIntolerance",
        "Appointment",
        "AppointmentResponse",
        "AuditEvent",
        "Basic",
        "Binary",
        "BiologicallyDerivedProduct",
        "BodyStructure",
        "Bundle",
        "CapabilityStatement",
        "CarePlan",
        "CareTeam",
        "CatalogEntry",
        "ChargeItem",
        "ChargeItemDefinition",
        "Claim",
        "ClaimResponse",
        "ClinicalImpression",
        "CodeSystem",
        "Communication",
        "CommunicationRequest",
        "CompartmentDefinition",
        "Composition",
        "ConceptMap",
        "Condition",
        "Consent",
        "Contract",
        "Coverage",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",
        "DetectedIssue",
        "Device",
        "DeviceDefinition",
        "DeviceMetric",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentManifest",
        "DocumentReference",
        "EffectEvidenceSynthesis",
        "Encounter",
        "Endpoint",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "EpisodeOfCare",
        "EventDefinition",
        "Evidence",
        "EvidenceVariable",
        "ExampleScenario",
        "ExplanationOfBenefit",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "GraphDefinition",
        "Group",
        "GuidanceResponse",
        "HealthcareService",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "ImplementationGuide",
        "InsurancePlan",
        "Invoice",
        "Library",
        "Linkage",
        "List",
        "Location",
        "Measure",
        "MeasureReport",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationKnowledge",
        "MedicationRequest",
        "MedicationStatement",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "MessageDefinition",
        "MessageHeader",
        "MolecularSequence",
        "NamingSystem",
        "NutritionOrder",
        "Observation",
        "ObservationDefinition",
        "OperationDefinition",
        "OperationOutcome",
        "Organization",
        "OrganizationAffiliation",
        "Parameters",
        "Patient",
        "PaymentNotice",
        "PaymentReconciliation",
        "Person",
        "PlanDefinition",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "RelatedPerson",
        "RequestGroup",
        "ResearchDefinition",
        "ResearchElementDefinition",
        "ResearchStudy",
        "ResearchSubject",
        "RiskAssessment",
        "RiskEvidenceSynthesis",
        "Schedule",
        "SearchParameter",
        "ServiceRequest",
        "Slot",
        "Specimen",
        "SpecimenDefinition",
        "StructureDefinition",
        "StructureMap",
        "Subscription",
        "Substance",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
        "SupplyDelivery",
        "SupplyRequest",
        "Task",
        "TerminologyCapabilities",
        "TestReport",
        "TestScript",
        "ValueSet",
        "VerificationResult",
        "VisionPrescription",
    }
)

#: Resource types outside FHIR R4's Patient compartment that exports ship as context (who and where): no patient
#: owns them and the evaluator reads none of them, so they are counted, not reported line by line.
CONTEXT_TYPES: Final = frozenset(
    {
        "Endpoint",
        "HealthcareService",
        "Location",
        "Organization",
        "OrganizationAffiliation",
        "Practitioner",
        "PractitionerRole",
        "Substance",
    }
)

#: Fields that tie a resource to its patient, in the order the record builder reads them.
PATIENT_LINK_FIELDS: Final = ("subject", "patient", "beneficiary")
#: A reference to a Patient or Medication, relative or absolute, optionally version-specific (``/_history/2``);
#: group 2 is the id.
PATIENT_REFERENCE: Final = r"(^|/)Patient/([^/]+)(/_history/[^/]+)?$"
MEDICATION_REFERENCE: Final = r"(^|/)Medication/([^/]+)(/_history/[^/]+)?$"
_PATIENT_RE = re.compile(PATIENT_REFERENCE)
#: A ``urn:uuid:`` reference, as a resource taken out of a Bundle keeps it: the id its target has in an export
#: (the urn's uuid, as a server or Synthea gives an entry without one).
_URN_UUID_RE = re.compile(r"urn:uuid:([A-Za-z0-9\-.]{1,64})")
_MEDICATION_RE = re.compile(MEDICATION_REFERENCE)
#: Checks JSON syntax only (every field skipped), as the engines' typed line decoders do.
_SYNTAX_ONLY = msgspec.json.Decoder(msgspec.Struct)
#: Dropped from the start of any line (an exporter writes it at the start of a file).
BOM: Final = UTF8_BOM

OK: Final = "ok"
BLANK: Final = "blank"
MALFORMED: Final = "malformed"
UNKNOWN_TYPE: Final = "unknown-type"
NO_PATIENT: Final = "no-patient"
CONDITIONAL_REFERENCE: Final = "conditional-reference"
CONTEXT: Final = "context"
PATIENT_INPUT: Final = "patient-input"
EVALUATION: Final = "evaluation"
INCOMPLETE_EXPORT: Final = "incomplete-export"
UNREADABLE_FILE: Final = "unreadable-file"
INVALID_UTF8: Final = "invalid-utf8"
DUPLICATE: Final = "duplicate"
#: Problems a line has beside its status: it is still classified and read, and counted once more under the flag.
LINE_FLAGS: Final = (INVALID_UTF8,)
#: The categories of a single input line (counted per file, reported with file and line).
LINE_PROBLEMS: Final = (MALFORMED, UNKNOWN_TYPE, NO_PATIENT, CONDITIONAL_REFERENCE, *LINE_FLAGS)
#: A problem line kept for the report: (line number, resource type, raw text).
KeptLine = tuple[int, str | None, bytes]
#: Problem categories: (OperationOutcome issue severity, issue code).
CATEGORIES: Final = {
    MALFORMED: ("error", "structure"),
    UNKNOWN_TYPE: ("warning", "not-supported"),
    NO_PATIENT: ("warning", "processing"),
    CONDITIONAL_REFERENCE: ("warning", "not-supported"),
    PATIENT_INPUT: ("error", "invalid"),
    EVALUATION: ("error", "exception"),
    INCOMPLETE_EXPORT: ("error", "incomplete"),
    UNREADABLE_FILE: ("error", "incomplete"),
    INVALID_UTF8: ("warning", "structure"),
    DUPLICATE: ("warning", "duplicate"),
}
#: Per input file and category, lines reported one by one; the rest are summed up in one more record.
DETAIL_CAP: Final = 100


@dataclass(frozen=True, slots=True)
class Classified:
    """What one NDJSON line is: its status and, when usable, its patient key and medication links."""

    status: str
    resource_type: str | None = None
    key: str | None = None
    resource_id: str | None = None
    medication_ref: str | None = None
    #: The identifier token of a conditional patient link (``Patient?identifier=...``), which gives no key yet.
    identifier: str | None = None


def _reference(resource: Mapping[str, Any], field: str) -> str | None:
    link = resource.get(field)
    if isinstance(link, dict) and isinstance(link.get("reference"), str):
        return str(link["reference"])
    return None


def _scalar(value: Any) -> str | None:
    """A JSON scalar as DuckDB's ``json_extract_string`` renders it (so both engines key alike)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _patient_key(link: str) -> str | None:
    """The patient key of a patient link: ``Patient/{id}`` relative, absolute or version-specific, or a
    ``urn:uuid:{id}`` (read as ``Patient/{id}``: a link to no Patient of the export is then reported as a patient
    without a Patient resource, as a dangling ``Patient/{id}`` is)."""
    match = _PATIENT_RE.search(link)
    if match:
        return f"Patient/{match.group(2)}"
    urn = _URN_UUID_RE.fullmatch(link)
    return f"Patient/{urn.group(1)}" if urn else None


def _provenance_patient(document: Mapping[str, Any], resource_type: str) -> str | None:
    """A Provenance belongs to the first Patient among its targets (its way into the Patient compartment), which
    FHIR asks to be version-specific (``Patient/x/_history/2``)."""
    targets = document.get("target") if resource_type == "Provenance" else None
    for target in targets if isinstance(targets, list) else ():
        reference = target.get("reference") if isinstance(target, dict) else None
        if not isinstance(reference, str):
            continue
        match = _PATIENT_RE.search(reference)
        if match:
            return f"Patient/{match.group(2)}"
    return None


def classify(raw: bytes) -> Classified:
    """Classify one NDJSON line, the same way in every engine (only its resourceType, id, patient links and
    medicationReference are read)."""
    raw = raw.removeprefix(BOM)
    if not raw.strip():
        return Classified(BLANK)
    document = _parsed(raw)
    if not isinstance(document, dict):
        return Classified(MALFORMED)
    resource_type = _scalar(document.get("resourceType"))
    if resource_type is None:
        return Classified(MALFORMED)
    if resource_type not in R4_TYPES:
        return Classified(UNKNOWN_TYPE, resource_type)
    resource_id = _scalar(document.get("id"))
    link = None
    if resource_type == "Patient":
        key = f"Patient/{resource_id}" if resource_id else None
    else:
        link = next((ref for ref in (_reference(document, name) for name in PATIENT_LINK_FIELDS) if ref), None)
        key = _patient_key(link) if link is not None else None
        key = key or _provenance_patient(document, resource_type)
    medication = _reference(document, "medicationReference")
    med_match = _MEDICATION_RE.search(medication) if medication is not None else None
    medication_ref = f"Medication/{med_match.group(2)}" if med_match else None
    identifier = conditional_identifier(link) if key is None and link is not None else None
    if identifier is not None:  # placed once every Patient's identifiers are known (see ``conditional_key``)
        return Classified(OK, resource_type, None, resource_id, medication_ref, identifier)
    if key is None and resource_type in CONTEXT_TYPES:
        return Classified(CONTEXT, resource_type, None, resource_id)
    if key is None and resource_type != "Medication":
        return Classified(NO_PATIENT, resource_type, None, resource_id)
    return Classified(OK, resource_type, key, resource_id, medication_ref)


def conditional_key(identifier: str) -> str:
    """The placeholder key of a line whose patient a conditional reference names, until the export's Patients are
    indexed: then it is the one Patient that identifier finds, or the line is a ``conditional-reference`` problem."""
    return f"Patient?identifier={identifier}"


def identifier_of(key: str) -> str | None:
    """The identifier token of a ``conditional_key``; None for any other key."""
    return key.removeprefix("Patient?identifier=") if key.startswith("Patient?identifier=") else None


def patient_tokens(raw: bytes) -> set[str]:
    """The identifier tokens a conditional reference may find this Patient line by (see ``identifier_tokens``)."""
    try:
        document = loads(raw)
    except orjson.JSONDecodeError:
        return set()
    return identifier_tokens(document.get("identifier")) if isinstance(document, dict) else set()


def loads(raw: bytes) -> Any:
    """One line's JSON, a leading byte-order mark dropped (as ``classify`` drops it); invalid UTF-8 becomes U+FFFD,
    so that the line is still read (the scan flags it ``invalid-utf8``). ``orjson.JSONDecodeError`` if not JSON."""
    raw = raw.removeprefix(BOM)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return orjson.loads(raw.decode("utf-8", "replace"))


def _parsed(raw: bytes) -> Any:
    """The line as JSON, or None. A number beyond a double (``1e999``), which orjson refuses, is read as infinity:
    the typed decoders the engines read lines with skip it unchecked, so the line counts as a resource in both."""
    text = raw.decode("utf-8", "replace")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        _SYNTAX_ONLY.decode(text)
    except (msgspec.MsgspecError, RecursionError):
        return None
    return json.loads(text)


def invalid_utf8_head(raw: bytes) -> bytes | None:
    """A line that is not UTF-8 throughout up to and including its first bad byte (all the report needs of a line
    that may be 16 MiB long); None for the usual line."""
    offset = first_invalid_utf8(raw)
    return None if offset is None else raw[: offset + 1]


def describe(status: str, resource_type: str | None, raw: bytes) -> str:
    """A one-line explanation of why a line was not used, or (a flag) how it was read; for ``invalid-utf8``,
    ``raw`` is the line's ``invalid_utf8_head``."""
    if status == INVALID_UTF8:
        return f"{invalid_utf8(raw, len(raw) - 1)}; the line is read with U+FFFD in place of the bad bytes"
    if status == MALFORMED:
        try:
            document = orjson.loads(raw.decode("utf-8", "replace"))
        except orjson.JSONDecodeError as error:
            return f"not valid JSON ({error})"
        if not isinstance(document, dict):
            return "not a JSON object"
        return "no resourceType: not a FHIR resource"
    if status == UNKNOWN_TYPE:
        return f"unknown resource type {resource_type!r} (not FHIR R4); line skipped"
    if status == CONDITIONAL_REFERENCE:
        return (
            f"{resource_type}'s patient link is a conditional reference (Patient?identifier=...) that finds no "
            "Patient of the export, or more than one; skipped"
        )
    if status == NO_PATIENT and resource_type == "Patient":
        return "Patient has no id: no resource can refer to it, so it is no one's record; skipped"
    if status == NO_PATIENT:
        return f"{resource_type or 'resource'} is not linked to a Patient (subject, patient or beneficiary); skipped"
    return status


def operation_outcome(category: str, diagnostics: str, location: str) -> dict[str, Any]:
    """One OperationOutcome naming where (``file:line`` or a patient) and what went wrong."""
    severity, code = CATEGORIES[category]
    ident = hashlib.sha256(f"{category}\x00{location}\x00{diagnostics}".encode()).hexdigest()[:32]
    return {
        "resourceType": "OperationOutcome",
        "id": ident,
        "issue": [
            {
                "severity": severity,
                "code": code,
                "details": {
                    "coding": [{"system": "https://spasticity-cds.org/CodeSystem/batch-problem", "code": category}]
                },
                "diagnostics": f"{location}: {diagnostics}",
                "location": [location],
            }
        ],
    }


def overflow(category: str, file_name: str, more: int) -> dict[str, Any]:
    """The record summing up the lines of one category past the per-file detail cap."""
    return operation_outcome(category, f"{more} more lines of this kind not listed one by one", file_name)
