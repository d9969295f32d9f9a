"""One patient's resources, de-duplicated and indexed by type, with reference resolution."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spasticity_cds.errors import InputError
from spasticity_cds.fhir.parse import ParsedInput, Resource

PATIENT_LINK_FIELDS = ("subject", "patient", "beneficiary")


@dataclass(frozen=True)
class PatientRecord:
    """The resources of exactly one patient, with duplicates collapsed and references normalised."""

    patient: Resource
    by_type: dict[str, list[Resource]]
    by_reference: dict[str, Resource]
    aliases: dict[str, str] = field(default_factory=dict)
    duplicates_dropped: int = 0
    other_patient_resources: int = 0

    @property
    def patient_reference(self) -> str:
        return f"Patient/{self.patient.get('id', 'unknown')}"

    def of_type(self, resource_type: str) -> list[Resource]:
        """Every resource of one type, in input order."""
        return self.by_type.get(resource_type, [])

    def normalise(self, reference: str) -> str:
        """Map a ``urn:uuid:`` or absolute reference to ``Type/id``."""
        if reference in self.aliases:
            return self.aliases[reference]
        if reference.startswith(("http://", "https://")):
            parts = reference.rstrip("/").split("/")
            if len(parts) >= 2:
                return f"{parts[-2]}/{parts[-1]}"
        return reference

    def resolve(self, reference: str) -> Resource | None:
        """The resource a reference points at, if it is in the record."""
        return self.by_reference.get(self.normalise(reference))


def reference_of(resource: Resource) -> str:
    """The relative reference ``Type/id`` of a resource."""
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def build_record(parsed: ParsedInput, *, source: str = "<input>") -> PatientRecord:
    """Index the parsed resources of one patient; several patients or none is an input error."""
    unique, anonymous, dropped = _deduplicate(parsed.resources)
    patients = [r for key, r in unique.items() if key.startswith("Patient/")]
    patients += [r for r in anonymous if r["resourceType"] == "Patient"]
    if not patients:
        raise InputError("no Patient resource in the input", where=source)
    if len(patients) > 1:
        raise InputError(
            f"{len(patients)} Patient resources in one input; evaluate one patient at a time "
            "(use `spasticity-cds batch` for populations)",
            where=source,
        )
    patient = patients[0]
    patient_refs = {reference_of(patient)}
    patient_refs.update(alias for alias, target in parsed.aliases.items() if target in patient_refs)
    by_type: dict[str, list[Resource]] = {}
    by_reference: dict[str, Resource] = {}
    foreign = 0
    for key, resource in [*unique.items(), *((reference_of(r), r) for r in anonymous)]:
        owner = _owner_reference(resource)
        if owner is not None and owner not in patient_refs and parsed.aliases.get(owner) not in patient_refs:
            foreign += 1
            continue
        by_type.setdefault(resource["resourceType"], []).append(resource)
        by_reference[key] = resource
    return PatientRecord(
        patient=patient,
        by_type=by_type,
        by_reference=by_reference,
        aliases=parsed.aliases,
        duplicates_dropped=dropped,
        other_patient_resources=foreign,
    )


def _deduplicate(resources: Iterable[Resource]) -> tuple[dict[str, Resource], list[Resource], int]:
    """One copy per Type/id (the latest meta.lastUpdated, else the last seen), resources without id, drops."""
    chosen: dict[str, Resource] = {}
    anonymous: list[Resource] = []
    dropped = 0
    for resource in resources:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            continue
        resource_id = resource.get("id")
        if resource_id is None:
            anonymous.append(resource)
            continue
        key = f"{resource_type}/{resource_id}"
        previous = chosen.get(key)
        if previous is not None:
            dropped += 1
            if _last_updated(previous) > _last_updated(resource):
                continue
        chosen[key] = resource
    return chosen, anonymous, dropped


def _last_updated(resource: Resource) -> str:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


def _owner_reference(resource: Resource) -> str | None:
    for field_name in PATIENT_LINK_FIELDS:
        link: Any = resource.get(field_name)
        if isinstance(link, dict) and isinstance(link.get("reference"), str):
            reference: str = link["reference"]
            return reference if reference.startswith("urn:") else _relative(reference)
    return None


def _relative(reference: str) -> str:
    if reference.startswith(("http://", "https://")):
        parts = reference.rstrip("/").split("/")
        return f"{parts[-2]}/{parts[-1]}"
    return reference
