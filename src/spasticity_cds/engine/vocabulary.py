"""Match FHIR CodeableConcepts to knowledge-base concepts by code, code prefix, then text."""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from spasticity_cds.fhir import model as fhir
from spasticity_cds.knowledge.schema import Coding, Concept, ConceptKind, ValueSets

ICD_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10"})
SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.88": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "urn:oid:2.16.840.1.113883.6.1": "http://loinc.org",
    "urn:oid:2.16.840.1.113883.6.96": "http://snomed.info/sct",
    "urn:oid:2.16.840.1.113883.6.90": "http://hl7.org/fhir/sid/icd-10-cm",
}


#: Distinct CodeableConcepts remembered per concept kind before the memo starts afresh (bounds memory in long runs).
CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class Match:
    """A concept found in a CodeableConcept, and how: by ``code``, ``prefix`` or ``text``."""

    concept: Concept
    how: str
    coding: Coding | None
    text: str | None = None


def _normal_code(system: str, code: str) -> str:
    return code.replace(".", "").upper() if system in ICD_SYSTEMS else code


class Vocabulary:
    """The value sets compiled for lookup: exact codes in a dict, prefixes and text patterns in order."""

    def __init__(self, valuesets: ValueSets) -> None:
        self.concepts = {concept.id: concept for concept in valuesets.concepts}
        self._codes: dict[tuple[str, str], tuple[Concept, Coding]] = {}
        self._prefixes: dict[str, list[tuple[str, Concept, Coding]]] = {}
        self._patterns: dict[ConceptKind, list[tuple[re.Pattern[str], re.Pattern[str] | None, Concept]]] = {}
        self._cache: dict[ConceptKind, dict[fhir.CodeableConcept | bytes, Match | None]] = {}
        for concept in valuesets.concepts:
            for coding in concept.codings:
                self._codes[(coding.system, _normal_code(coding.system, coding.code))] = (concept, coding)
            for coding in concept.code_prefixes:
                prefix = _normal_code(coding.system, coding.code)
                self._prefixes.setdefault(coding.system, []).append((prefix, concept, coding))
            if concept.text_patterns:
                pattern = re.compile("|".join(f"(?:{p})" for p in concept.text_patterns), re.IGNORECASE)
                exclude = (
                    re.compile("|".join(f"(?:{p})" for p in concept.text_excludes), re.IGNORECASE)
                    if concept.text_excludes
                    else None
                )
                self._patterns.setdefault(concept.kind, []).append((pattern, exclude, concept))

    def match(self, codeable: fhir.CodeableConcept | msgspec.Raw | object, kind: ConceptKind) -> Match | None:
        """The first concept of ``kind`` a CodeableConcept (decoded, as JSON text, or parsed JSON) matches.

        Codes win over text. Answers are memoised per distinct CodeableConcept (by its JSON text when it comes as
        text): a record repeats a few codes many times.
        """
        key: fhir.CodeableConcept | bytes | None
        if isinstance(codeable, msgspec.Raw):
            key = bytes(codeable) if codeable else None
        elif isinstance(codeable, fhir.CodeableConcept):
            key = codeable
        else:
            key = fhir.from_json(codeable, fhir.CodeableConcept)
        if key is None:
            return None
        cache = self._cache.get(kind)
        if cache is None:
            cache = self._cache[kind] = {}
        try:
            return cache[key]
        except KeyError:
            pass
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        decoded = fhir.concept_of(codeable) if isinstance(codeable, msgspec.Raw) else key
        found = cache[key] = self._match_uncached(decoded, kind) if isinstance(decoded, fhir.CodeableConcept) else None
        return found

    def _match_uncached(self, codeable: fhir.CodeableConcept, kind: ConceptKind) -> Match | None:
        codings = codeable.coding or ()
        for coding in codings:
            found = self._match_coding(coding, kind)
            if found is not None:
                return found
        for text in (codeable.text, *(coding.display for coding in codings)):
            if text:
                found = self.match_text(text, kind)
                if found is not None:
                    return found
        return None

    def _match_coding(self, coding: fhir.Coding, kind: ConceptKind) -> Match | None:
        system, code = coding.system, coding.code
        if system is None or code is None:
            return None
        system = SYSTEM_ALIASES.get(system, system)
        normal = _normal_code(system, code)
        exact = self._codes.get((system, normal))
        if exact is not None and exact[0].kind == kind:
            return Match(exact[0], "code", exact[1])
        for prefix, concept, prefix_coding in self._prefixes.get(system, ()):
            if concept.kind == kind and normal.startswith(prefix):
                return Match(concept, "prefix", prefix_coding)
        return None

    def match_text(self, text: str, kind: ConceptKind) -> Match | None:
        """Name-matching fallback for text-only codings; the trace reports that it was used."""
        for pattern, exclude, concept in self._patterns.get(kind, ()):
            if pattern.search(text) and not (exclude and exclude.search(text)):
                return Match(concept, "text", None, text)
        return None
