"""Turn the shapes FHIR arrives in (Bundle, prefetch map, NDJSON, single resource) into a flat resource list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from spasticity_cds.errors import InputError

Resource = dict[str, Any]


@dataclass
class ParsedInput:
    """Resources in document order plus the Bundle fullUrl aliases (``urn:uuid:...`` -> ``Type/id``)."""

    resources: list[Resource] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def add(self, document: object, *, source: str = "<input>") -> None:
        """Add every resource held by one parsed JSON document."""
        for resource in flatten(document, source=source, aliases=self.aliases):
            self.resources.append(resource)


def parse_bytes(data: bytes, *, source: str = "<input>") -> ParsedInput:
    """Parse JSON or NDJSON bytes into the resources they hold, in document order."""
    stripped = data.strip()
    if not stripped:
        raise InputError("the input is empty", where=source)
    try:
        document = orjson.loads(stripped)
    except orjson.JSONDecodeError as first_error:
        if b"\n" not in stripped:
            raise InputError(f"not valid JSON ({first_error})", where=source) from None
        return _parse_ndjson(stripped, source)
    parsed = ParsedInput()
    parsed.add(document, source=source)
    return parsed


def _parse_ndjson(data: bytes, source: str) -> ParsedInput:
    parsed = ParsedInput()
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise InputError(f"line {line_number} is not valid JSON ({error})", where=source) from None
        parsed.add(document, source=f"{source}:{line_number}")
    return parsed


def flatten(document: object, *, source: str, aliases: dict[str, str]) -> Iterator[Resource]:
    """Yield every resource in a Bundle, prefetch map, CDS Hooks request, list or single resource."""
    if isinstance(document, list):
        for item in document:
            yield from flatten(item, source=source, aliases=aliases)
        return
    if not isinstance(document, dict):
        raise InputError("expected a FHIR resource, Bundle or prefetch object", where=source)
    resource_type = document.get("resourceType")
    if resource_type == "Bundle":
        yield from _bundle_resources(document, source, aliases)
    elif isinstance(resource_type, str):
        yield document
    elif "prefetch" in document and isinstance(document["prefetch"], dict):
        yield from _prefetch_resources(document["prefetch"], source, aliases)
    elif document and all(value is None or isinstance(value, dict) for value in document.values()):
        yield from _prefetch_resources(document, source, aliases)
    else:
        raise InputError("not FHIR: the JSON has no resourceType", where=source)


def _prefetch_resources(prefetch: dict[str, Any], source: str, aliases: dict[str, str]) -> Iterator[Resource]:
    for key, value in prefetch.items():
        if value is None:
            continue
        if not isinstance(value, dict) or "resourceType" not in value:
            raise InputError(f"prefetch key {key!r} does not hold a FHIR resource", where=source)
        if value["resourceType"] == "OperationOutcome":
            continue
        yield from flatten(value, source=f"{source}#prefetch.{key}", aliases=aliases)


def _bundle_resources(bundle: dict[str, Any], source: str, aliases: dict[str, str]) -> Iterator[Resource]:
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        resource_type = resource.get("resourceType")
        if resource_type == "Bundle":
            yield from _bundle_resources(resource, source, aliases)
            continue
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and isinstance(resource_type, str):
            resource_id = resource.get("id")
            if not resource_id:
                resource_id = full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
                resource = {**resource, "id": resource_id}
            # Absolute URLs ending in Type/id resolve by their tail (PatientRecord.normalise); only other forms,
            # such as urn:uuid, need an alias.
            relative = f"{resource_type}/{resource_id}"
            if not full_url.endswith(relative):
                aliases[full_url] = relative
        yield resource
