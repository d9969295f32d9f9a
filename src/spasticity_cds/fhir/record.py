"""One patient's resources, de-duplicated and indexed by type, with reference resolution."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from operator import attrgetter
from typing import Any

import msgspec

from spasticity_cds.errors import InputError
from spasticity_cds.fhir.model import Resource, as_json
from spasticity_cds.fhir.parse import ParsedInput, owner_reference


@dataclass(frozen=True)
class PatientRecord:
    """The resources of exactly one patient, with duplicates collapsed, references normalised, in id order."""

    patient_resource: Resource
    by_type: dict[str, list[Resource]]
    by_reference: dict[str, Resource]
    aliases: dict[str, str] = field(default_factory=dict)
    duplicates_dropped: int = 0
    #: The ``Type/id`` of every resource the input held more than once (one copy of each was kept).
    duplicated: frozenset[str] = frozenset()
    other_patient_resources: int = 0

    @property
    def patient_reference(self) -> str:
        return f"Patient/{self.patient_resource.id or 'unknown'}"

    @cached_property
    def patient(self) -> dict[str, Any]:
        """The Patient resource as FHIR JSON (the fields read: id, name, identifier, gender, birthDate, deceased[x])."""
        return as_json(self.patient_resource)

    def death_recorded(self, now: datetime) -> str | None:
        """How the Patient resource records a death by ``now`` (see ``recorded_death``), or None."""
        patient = self.patient_resource
        return recorded_death(patient.deceased_boolean, patient.deceased_date_time, now)

    def of_type(self, resource_type: str) -> list[Resource]:
        """Every resource of one type, by id (see ``_in_canonical_order``)."""
        return self.by_type.get(resource_type, [])

    def normalise(self, reference: str) -> str:
        """Map a ``urn:uuid:``, absolute or version-specific reference to ``Type/id``."""
        if reference in self.aliases:
            return self.aliases[reference]
        return _relative(reference)

    def resolve(self, reference: str) -> Resource | None:
        """The resource a reference points at, if it is in the record."""
        return self.by_reference.get(self.normalise(reference))


#: A conditional reference to a Patient: a search by identifier, relative or after a base URL; group 1 the token.
_CONDITIONAL = re.compile(r"(?:^|/)Patient\?identifier=([^&]+)$")


def conditional_identifier(reference: str) -> str | None:
    """The identifier token a conditional Patient reference searches by (``system|value``, ``|value`` for no
    system, or ``value`` for any system), percent-decoding undone; None for any other reference."""
    match = _CONDITIONAL.search(reference)
    return _PERCENT_ESCAPES.sub(_decoded, match.group(1)) if match else None


#: A run of percent-escapes (``%7C``, or the bytes of one UTF-8 character); the core imports no urllib.
_PERCENT_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _decoded(escapes: re.Match[str]) -> str:
    return bytes.fromhex(escapes.group(0).replace("%", "")).decode("utf-8", "replace")


def identifier_tokens(identifiers: Any) -> set[str]:
    """Every token a conditional reference may find a Patient by, from its ``identifier`` JSON: ``system|value``
    and ``value`` for an identifier with a system, ``|value`` and ``value`` for one without (FHIR token search)."""
    tokens: set[str] = set()
    for identifier in identifiers if isinstance(identifiers, list) else [identifiers]:
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if not isinstance(value, str) or not value:
            continue
        system = identifier.get("system")
        tokens |= {f"{system if isinstance(system, str) else ''}|{value}", value}
    return tokens


#: A FHIR dateTime: a year, optionally month and day, optionally a time (with an offset when a time is given).
_DATE_TIME = re.compile(r"\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?")


def recorded_death(deceased: bool | None, deceased_at: str | None, now: datetime) -> str | None:
    """The element by which a Patient records a death by ``now``: ``deceasedBoolean true``, or ``deceasedDateTime
    <value>`` when that instant (a full dateTime with its offset) or that day, month or year (a partial date) is not
    after ``now``; None otherwise, and for a value that is not a FHIR dateTime."""
    if deceased is True:
        return "deceasedBoolean true"
    if not deceased_at or _DATE_TIME.fullmatch(deceased_at[:10]) is None:
        return None
    if len(deceased_at) > 10:
        try:
            instant = datetime.fromisoformat(deceased_at)
        except ValueError:
            return None
        died = instant <= now if instant.tzinfo is not None else deceased_at[:10] <= now.date().isoformat()
    else:  # YYYY, YYYY-MM or YYYY-MM-DD: ISO text compares in time order
        died = deceased_at <= now.date().isoformat()[: len(deceased_at)]
    return f"deceasedDateTime {deceased_at}" if died else None


def build_record(parsed: ParsedInput, *, source: str = "<input>", patient_id: str | None = None) -> PatientRecord:
    """Index the parsed resources of one patient; several patients or none is an input error.

    With ``patient_id`` the Patient of that id is the patient, and any other Patient a record of someone else,
    left out with the resources that point at it (a linked record a FHIR search returned alongside).
    """
    patients = parsed.by_type.get("Patient", [])
    if patient_id is not None:
        patients = [patient for patient in patients if patient.id == patient_id]
    if not patients:
        named = f" with id {patient_id!r}" if patient_id is not None else ""
        raise InputError(f"no Patient resource{named} in the input", where=source)
    if len(patients) > 1:
        raise InputError(
            f"{len(patients)} Patient resources in one input; evaluate one patient at a time "
            "(use `spasticity-cds batch` for populations)",
            where=source,
        )
    patient = patients[0]
    owner = _OwnerCheck(patient, parsed.aliases)
    if len(parsed.by_type["Patient"]) == 1 and all(owner.is_ours(reference) for reference in parsed.owners):
        by_type, by_reference, foreign = parsed.by_type, parsed.resources, 0
    else:
        by_type, by_reference, foreign = _without_other_patients(parsed, owner, patient)
    return PatientRecord(
        patient_resource=patient,
        by_type=_in_canonical_order(by_type),
        by_reference=by_reference,
        aliases=parsed.aliases,
        duplicates_dropped=parsed.duplicates,
        duplicated=frozenset(parsed.duplicated),
        other_patient_resources=foreign,
    )


def _in_canonical_order(by_type: dict[str, list[Resource]]) -> dict[str, list[Resource]]:
    """Each type's resources ordered by id (those without one by their content), not as they arrived: the evaluator
    breaks ties by position (two results of one date, the first of equal Ashworth scores) and lists a fact's sources
    in it, so the same record sent in another order (a re-export, a shuffled Bundle) must give the same findings."""
    return {resource_type: _canonical(resources) for resource_type, resources in by_type.items()}


def _canonical(resources: list[Resource]) -> list[Resource]:
    try:  # the usual case, every resource with an id: a plain sort on it, about a third of the general key's cost
        return sorted(resources, key=_resource_id)
    except TypeError:  # some have no id (None does not compare with a str)
        return sorted(resources, key=_order_key)


_resource_id = attrgetter("id")


def _order_key(resource: Resource) -> tuple[bool, str, bytes]:
    if resource.id is not None:
        return False, resource.id, b""
    return True, "", msgspec.json.encode(resource)


def _without_other_patients(
    parsed: ParsedInput, owner: _OwnerCheck, patient: Resource
) -> tuple[dict[str, list[Resource]], dict[str, Resource], int]:
    by_type: dict[str, list[Resource]] = {}
    by_reference: dict[str, Resource] = {}
    for key, resource in parsed.resources.items():
        another_patient = resource.resource_type == "Patient" and resource is not patient
        if not another_patient and owner.is_ours(owner_reference(resource)):
            by_type.setdefault(resource.resource_type or "", []).append(resource)
            by_reference[key] = resource
    return by_type, by_reference, len(parsed.resources) - len(by_reference)


class _OwnerCheck:
    """Whether a patient link points at the patient (by Type/id, a Bundle alias of it, ``urn:uuid:{its id}`` when
    that urn is no other entry's fullUrl: a resource taken out of a Bundle keeps such links, or a conditional
    reference that finds it by one of its identifiers); None means no link."""

    def __init__(self, patient: Resource, aliases: dict[str, str]) -> None:
        reference = patient.reference
        self.patient = patient
        self.ours = {reference, *(alias for alias, target in aliases.items() if target == reference)}
        urn = f"urn:uuid:{patient.id}"
        if aliases.get(urn, reference) == reference:
            self.ours.add(urn)
        self.aliases = aliases
        self.verdicts: dict[str | None, bool] = {None: True}

    def is_ours(self, reference: str | None) -> bool:
        verdict = self.verdicts.get(reference)
        if verdict is None:
            assert reference is not None
            token = conditional_identifier(reference)
            if token is not None:
                verdict = token in self._tokens
            else:
                owner = reference if reference.startswith("urn:") else _relative(reference)
                verdict = owner in self.ours or self.aliases.get(owner) in self.ours
            self.verdicts[reference] = verdict
        return verdict

    @cached_property
    def _tokens(self) -> set[str]:
        """The identifier tokens that find the patient (read only when a conditional reference turns up)."""
        return identifier_tokens(as_json(self.patient).get("identifier"))


def _relative(reference: str) -> str:
    """``Type/id`` from an absolute URL ending in it or a version-specific reference (``Type/id/_history/2``, as
    Provenance and some servers write); any other reference as it is."""
    reference = reference.split("/_history/", 1)[0]
    if reference.startswith(("http://", "https://")):
        parts = reference.rstrip("/").split("/")
        if len(parts) >= 2:
            return f"{parts[-2]}/{parts[-1]}"
    return reference
