"""Match FHIR CodeableConcepts to knowledge-base concepts by code, code prefix, then text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from spasticity_cds.knowledge.schema import Coding, Concept, ConceptKind, ValueSets

ICD_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10"})
SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.88": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "urn:oid:2.16.840.1.113883.6.1": "http://loinc.org",
    "urn:oid:2.16.840.1.113883.6.96": "http://snomed.info/sct",
    "urn:oid:2.16.840.1.113883.6.90": "http://hl7.org/fhir/sid/icd-10-cm",
}


CACHE_LIMIT = 50_000


def _cache_key(codeable: dict[str, Any], kind: ConceptKind) -> tuple[Any, ...] | None:
    """A key for a CodeableConcept (its codings and text), or None when it has odd shapes."""
    codings = codeable.get("coding")
    text = codeable.get("text")
    if not codings:
        return (kind, text)
    if len(codings) == 1:
        coding = codings[0]
        if isinstance(coding, dict):
            return (kind, text, coding.get("system"), coding.get("code"), coding.get("display"))
        return None
    parts: list[Any] = [kind, text]
    for coding in codings:
        if not isinstance(coding, dict):
            return None
        parts.extend((coding.get("system"), coding.get("code"), coding.get("display")))
    return tuple(parts)


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
        self._cache: dict[tuple[Any, ...], Match | None] = {}
        # Exact codes as systems send them (dotted and undotted ICD forms), answered without building a cache key.
        self._exact: dict[tuple[str, str, str], Match] = {}
        for concept in valuesets.concepts:
            for coding in concept.codings:
                self._codes[(coding.system, _normal_code(coding.system, coding.code))] = (concept, coding)
                match = Match(concept, "code", coding)
                for variant in {coding.code, _normal_code(coding.system, coding.code)}:
                    self._exact[(concept.kind, coding.system, variant)] = match
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

    def match(self, codeable: Any, kind: ConceptKind) -> Match | None:
        """The first concept of ``kind`` a CodeableConcept matches; codes win over text. Answers are memoised."""
        if not isinstance(codeable, dict):
            return None
        for coding in codeable.get("coding") or ():
            if isinstance(coding, dict):
                try:
                    exact = self._exact.get((kind, coding.get("system"), coding.get("code")))  # type: ignore[arg-type]
                except TypeError:  # an unhashable value where a string belongs
                    break
                if exact is not None:
                    return exact
        key = _cache_key(codeable, kind)
        if key is None:
            return self._match_uncached(codeable, kind)
        try:
            return self._cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value where a string belongs
            return self._match_uncached(codeable, kind)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        found = self._cache[key] = self._match_uncached(codeable, kind)
        return found

    def _match_uncached(self, codeable: dict[str, Any], kind: ConceptKind) -> Match | None:
        codings = codeable.get("coding") or ()
        for coding in codings:
            found = self._match_coding(coding, kind)
            if found is not None:
                return found
        texts = [codeable.get("text")] + [c.get("display") for c in codings if isinstance(c, dict)]
        for text in texts:
            if isinstance(text, str) and text:
                found = self.match_text(text, kind)
                if found is not None:
                    return found
        return None

    def _match_coding(self, coding: Any, kind: ConceptKind) -> Match | None:
        if not isinstance(coding, dict):
            return None
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
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
