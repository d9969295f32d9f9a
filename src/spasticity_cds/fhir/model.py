"""Typed views of the FHIR fields the engine reads, decoded by msgspec; every other field is skipped unread."""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

import msgspec


class FhirElement(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    """Base: FHIR's camelCase names map to snake_case attributes; unknown fields are skipped, absent ones are None.

    Coding and CodeableConcept repeat these options and are frozen (so hashable) instead of inheriting them: type
    checkers refuse a frozen struct on a non-frozen base.
    """


class Coding(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    """Coding (hashable, so a CodeableConcept can key the vocabulary's memo)."""

    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    """CodeableConcept (hashable)."""

    coding: tuple[Coding, ...] | None = None
    text: str | None = None


class Reference(FhirElement):
    """Reference."""

    reference: str | None = None
    display: str | None = None


class Quantity(FhirElement):
    """Quantity; ``code`` is the UCUM unit when sent."""

    value: float | None = None
    unit: str | None = None
    code: str | None = None


class Range(FhirElement):
    """Range, also the shape of Observation.referenceRange."""

    low: Quantity | None = None
    high: Quantity | None = None


class Period(FhirElement):
    """Period."""

    start: str | None = None
    end: str | None = None


class Repeat(FhirElement):
    """Timing.repeat."""

    frequency: float | None = None
    frequency_max: float | None = None
    period: float | None = None
    period_unit: str | None = None
    bounds_period: Period | None = None


class Timing(FhirElement):
    """Timing."""

    repeat: Repeat | None = None
    code: CodeableConcept | None = None


class DoseAndRate(FhirElement):
    """Dosage.doseAndRate."""

    dose_quantity: Quantity | None = None
    dose_range: Range | None = None


class Dosage(FhirElement):
    """Dosage."""

    sequence: int | None = None
    text: str | None = None
    timing: Timing | None = None
    route: CodeableConcept | None = None
    dose_and_rate: list[DoseAndRate] | None = None


class Meta(FhirElement):
    """Meta: de-duplication keeps the copy with the latest lastUpdated."""

    last_updated: str | None = None


class HumanName(FhirElement):
    """HumanName, for the patient banner and worklists."""

    text: str | None = None
    family: str | None = None
    given: list[str] | None = None


class Identifier(FhirElement):
    """Identifier, for the medical record number on worklists."""

    system: str | None = None
    value: str | None = None
    type: CodeableConcept | None = None


#: An element kept as its JSON text, decoded on demand; absent is this empty value. A record repeats a few codes
#: hundreds of times, so the reader decodes each distinct code once (``concept_of``, ``Vocabulary.match``), and of
#: a concept's many values it reads only the latest (``quantity_of``), instead of building objects for all of them.
ABSENT = msgspec.Raw()


class Component(FhirElement):
    """Observation.component: a code and a value, read like an Observation of its own."""

    code: msgspec.Raw = ABSENT
    value_quantity: msgspec.Raw = ABSENT
    value_string: str | None = None
    value_integer: float | None = None
    value_decimal: float | None = None
    value_boolean: bool | None = None
    value_codeable_concept: CodeableConcept | None = None
    reference_range: list[Range] | None = None


class Resource(Component):
    """Any resource, flattened: the union over every resource type of the fields the engine reads.

    A Bundle is a Resource with ``entry``; an Observation's value fields come from Component. Where resource types
    give one name different shapes (Bundle.type is a code, Device.type a CodeableConcept, Organization.name a
    string), the field is a union of them, so any valid resource decodes.
    """

    resource_type: str | None = None
    id: str | None = None
    meta: Meta | None = None
    subject: Reference | None = None
    patient: Reference | None = None
    beneficiary: Reference | None = None
    status: str | None = None
    intent: str | None = None
    clinical_status: CodeableConcept | None = None
    verification_status: CodeableConcept | None = None
    effective_date_time: str | None = None
    effective_instant: str | None = None
    effective_period: Period | None = None
    issued: str | None = None
    component: list[Component] | None = None
    body_site: CodeableConcept | list[CodeableConcept] | None = None
    medication_codeable_concept: CodeableConcept | None = None
    medication_reference: Reference | None = None
    dosage_instruction: list[Dosage] | None = None
    dosage: list[Dosage] | Dosage | None = None
    authored_on: str | None = None
    status_reason: CodeableConcept | list[CodeableConcept] | None = None
    reason_code: list[CodeableConcept] | None = None
    reason_reference: list[Reference] | None = None
    type: str | CodeableConcept | list[CodeableConcept] | None = None
    birth_date: str | None = None
    gender: str | None = None
    deceased_boolean: bool | None = None
    deceased_date_time: str | None = None
    name: str | list[HumanName] | None = None
    identifier: list[Identifier] | Identifier | None = None
    contained: list[Resource] | None = None
    entry: list[Entry] | None = None

    @property
    def reference(self) -> str:
        """The relative reference ``Type/id``."""
        return f"{self.resource_type}/{self.id}"


class Entry(FhirElement):
    """Bundle.entry."""

    full_url: str | None = None
    resource: Resource | None = None


Element = TypeVar("Element", bound=msgspec.Struct)

RESOURCE_DECODER = msgspec.json.Decoder(Resource)
_CONCEPT_DECODER = msgspec.json.Decoder(CodeableConcept | None)
_QUANTITY_DECODER = msgspec.json.Decoder(Quantity | None)


def concept_of(code: msgspec.Raw) -> CodeableConcept | None:
    """A ``code`` kept as JSON text, decoded; None when absent, null or not an object."""
    return _decoded(code, _CONCEPT_DECODER, CodeableConcept)


def quantity_of(value: msgspec.Raw) -> Quantity | None:
    """A ``valueQuantity`` kept as JSON text, decoded; None when absent, null or not an object."""
    return _decoded(value, _QUANTITY_DECODER, Quantity)


def _decoded(text: msgspec.Raw, decoder: msgspec.json.Decoder[Element | None], kind: type[Element]) -> Element | None:
    if not text:
        return None
    try:
        return decoder.decode(text)
    except msgspec.ValidationError:
        pass
    try:
        document = msgspec.json.decode(text)
    except msgspec.MsgspecError:  # a number beyond a double, skipped unchecked when the resource was decoded
        return None
    return from_json(document, kind)


def as_json(element: msgspec.Struct) -> dict[str, Any]:
    """The decoded fields as FHIR JSON (camelCase names, absent fields left out)."""
    encoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(element))
    return encoded


def from_json(value: object, kind: type[Element]) -> Element | None:
    """``value`` (parsed JSON) as ``kind``, dropping any field of the wrong shape; None if it is not an object."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        return None
    try:
        return _typed(value, kind)
    except msgspec.ValidationError:
        return _typed(_pruned(value, kind), kind)


def _typed(value: dict[str, Any], kind: type[Element]) -> Element:
    # Through JSON text rather than msgspec.convert, which cannot fill a field kept as JSON text (ABSENT's kind).
    return msgspec.json.decode(msgspec.json.encode(value), type=kind)


def _pruned(document: dict[str, Any], kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The fields of ``document`` that fit ``kind``; list items that do not fit are left out one by one."""
    hints = typing.get_type_hints(kind)
    kept: dict[str, Any] = {}
    for field in msgspec.structs.fields(kind):
        if field.encode_name not in document:
            continue
        value = _fitted(document[field.encode_name], hints[field.name])
        if value is not _UNFIT:
            kept[field.encode_name] = value
    return kept


_UNFIT = object()


def _fitted(value: Any, annotation: Any) -> Any:
    """``value`` made to fit ``annotation`` by pruning, or _UNFIT."""
    if annotation is msgspec.Raw:
        return value
    try:
        msgspec.convert(value, annotation)
    except msgspec.ValidationError:
        pass
    else:
        return value
    for option in _options(annotation):
        origin = typing.get_origin(option)
        if isinstance(option, type) and issubclass(option, msgspec.Struct) and isinstance(value, dict):
            return _pruned(value, option)
        if origin in (list, tuple) and isinstance(value, list):
            item_type = typing.get_args(option)[0]
            items = [_fitted(item, item_type) for item in value]
            return [item for item in items if item is not _UNFIT]
    return _UNFIT


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
