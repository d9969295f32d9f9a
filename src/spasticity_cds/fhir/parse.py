"""Turn the shapes FHIR arrives in (Bundle, prefetch map, NDJSON, single resource) into a flat resource list."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any

import msgspec
import orjson

from spasticity_cds.errors import InputError
from spasticity_cds.fhir.model import RESOURCE_DECODER, Entry, Resource, from_json

#: A UTF-8 byte-order mark, which Windows editors, some exporters and some servers write before JSON (which
#: forbids it); dropped wherever JSON text is read.
UTF8_BOM = b"\xef\xbb\xbf"


def first_invalid_utf8(data: bytes) -> int | None:
    """The offset of the first byte of ``data`` that is not UTF-8, or None when all of it is. ASCII, the usual
    text, is told without decoding."""
    if data.isascii():
        return None
    try:
        data.decode()
    except UnicodeDecodeError as error:
        return error.start
    return None


def invalid_utf8(data: bytes, offset: int) -> str:
    """The words every reader uses for ``data`` that stops being UTF-8 at ``offset``: the byte and where it stands
    (its column in bytes, and its line when ``data`` has several)."""
    newline = b"\n"
    where = f"column {offset - data.rfind(newline, 0, offset)}"
    if newline in data:
        where = f"line {data.count(newline, 0, offset) + 1}, {where}"
    return f"not valid UTF-8 (byte 0x{data[offset]:02x} at {where})"


@dataclass
class ParsedInput:
    """Resources by ``Type/id`` in first-seen order, duplicates collapsed as they arrive, plus fullUrl aliases.

    Of two copies of one ``Type/id`` the one with the later meta.lastUpdated is kept (on a tie, the one whose JSON
    sorts last: the same copy whatever the order they came in);
    resources without an id cannot be duplicates; ``duplicated`` holds the ``Type/id`` of each resource seen more than
    once. ``aliases`` maps Bundle fullUrls such as ``urn:uuid:...``
    to ``Type/id``. ``by_type`` indexes the same resources by type, and ``owners`` holds every patient link
    (subject, patient or beneficiary reference; None for none) the resources carry, so that a record whose links
    all point at its patient needs no check per resource.
    """

    resources: dict[str, Resource] = field(default_factory=dict)
    by_type: dict[str, list[Resource]] = field(default_factory=dict)
    owners: set[str | None] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    duplicated: set[str] = field(default_factory=set)
    _positions: dict[str, dict[int, int]] = field(default_factory=dict, repr=False)

    def add(self, document: object, *, source: str = "<input>") -> None:
        """Add every resource held by one parsed JSON document (a resource, Bundle, prefetch map or list).

        Items of a list may already be decoded Resources (the batch engine decodes each line straight into one).
        """
        resources: list[Resource] = []
        for item in document if isinstance(document, list) else (document,):
            if isinstance(item, Resource):
                resources.append(item)
                continue
            for found in _fhir_documents(item, source=source):
                resource = from_json(found, Resource)
                if resource is not None:
                    resources.append(resource)
        self._add_located(zip(resources, repeat(None)))

    def add_resource(self, resource: Resource) -> None:
        """Add one decoded resource; a Bundle adds its entries (nested Bundles included) instead."""
        self._add_located(((resource, None),))

    def _add_entries(self, entries: Sequence[Entry]) -> None:
        self._add_located(zip(map(_entry_resource, entries), map(_entry_full_url, entries), strict=True))

    def _add_located(self, located: Iterable[tuple[Resource | None, str | None]]) -> None:
        """Add (resource, its Bundle fullUrl or None) pairs; a Bundle adds its entries (nested ones included)."""
        # One loop with no call per resource: a record holds hundreds of them.
        resources, by_type, owners, aliases = self.resources, self.by_type, self.owners, self.aliases
        for sent, full_url in located:
            resource = sent
            if resource is None:
                continue
            resource_type = resource.resource_type
            if resource_type is None:
                continue
            if resource_type == "Bundle":
                self._add_entries(resource.entry or ())
                continue
            resource_id = resource.id
            if full_url is not None:
                if not resource_id:
                    resource_id = id_from_full_url(full_url)
                    resource = msgspec.structs.replace(resource, id=resource_id)
                key = f"{resource_type}/{resource_id}"
                # Absolute URLs ending in Type/id resolve by their tail (PatientRecord.normalise); only other
                # forms, such as urn:uuid, need an alias.
                if not full_url.endswith(key):
                    aliases[full_url] = key
            elif resource_id is None:
                key = f"{resource_type}/#{len(resources)}"
            else:
                key = f"{resource_type}/{resource_id}"
            previous = resources.get(key)
            if previous is not None:
                self._collapse(key, previous, resource)
                continue
            resources[key] = resource
            same_type = by_type.get(resource_type)
            if same_type is None:
                by_type[resource_type] = [resource]
            else:
                same_type.append(resource)
            link = resource.subject
            owners.add(link.reference if link is not None and link.reference is not None else owner_reference(resource))

    def _collapse(self, key: str, previous: Resource, resource: Resource) -> None:
        """Keep one of two copies of a ``Type/id``: the later lastUpdated, else the greater JSON (``_keeps_first``)."""
        self.duplicates += 1
        self.duplicated.add(key)
        # An equal copy changes nothing; our own prefetch sends the newest observations twice (two searches).
        if previous == resource or _keeps_first(previous, resource):
            return
        self.resources[key] = resource
        resource_type = resource.resource_type or ""
        same_type = self.by_type[resource_type]
        # The kept copy takes the first one's place. Positions are indexed as resources arrive (only those since the
        # last copy), not searched per copy: a prefetch can repeat a whole search, copies among new resources.
        positions = self._positions.setdefault(resource_type, {})
        for index in range(len(positions), len(same_type)):
            positions[id(same_type[index])] = index
        index = positions.pop(id(previous))
        same_type[index] = resource
        positions[id(resource)] = index
        self.owners.add(owner_reference(resource))


_entry_resource = attrgetter("resource")
_entry_full_url = attrgetter("full_url")


def id_from_full_url(full_url: str) -> str:
    """The id a server would give an entry without one: the last part of its fullUrl (``urn:uuid:{id}``,
    ``urn:oid:{id}`` or ``.../Type/{id}``)."""
    return full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


def owner_reference(resource: Resource) -> str | None:
    """The reference of the first patient link (subject, patient, beneficiary) that has one."""
    for link in (resource.subject, resource.patient, resource.beneficiary):
        if link is not None and link.reference is not None:
            return link.reference
    return None


def _keeps_first(first: Resource, second: Resource) -> bool:
    """Whether of two different copies the first one seen stays: the later lastUpdated wins and, on a tie, the one
    whose JSON sorts last, so that which copy a record holds does not depend on the order they came in."""
    first_updated, second_updated = _last_updated(first), _last_updated(second)
    if first_updated != second_updated:
        return first_updated > second_updated
    return msgspec.json.encode(first) > msgspec.json.encode(second)


def _last_updated(resource: Resource) -> str:
    meta = resource.meta
    return (meta.last_updated or "") if meta is not None else ""


def parse_bytes(data: bytes, *, source: str = "<input>") -> ParsedInput:
    """Parse JSON or NDJSON bytes into the resources they hold, in document order."""
    stripped = data.removeprefix(UTF8_BOM).strip()
    if not stripped:
        raise InputError("the input is empty", where=source)
    parsed = ParsedInput()
    try:
        # The common case, one Bundle or resource of the expected shapes, decodes straight into structs.
        resource = RESOURCE_DECODER.decode(stripped)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):  # orjson below names the problem
        resource = None
    if resource is not None and resource.resource_type is not None:
        parsed.add_resource(resource)
        return parsed
    try:
        document = orjson.loads(stripped)
    except orjson.JSONDecodeError as first_error:
        _refuse_invalid_utf8(data, source)
        if b"\n" not in stripped:
            raise InputError(f"not valid JSON ({first_error})", where=source) from None
        return _parse_ndjson(stripped, source)
    parsed.add(document, source=source)
    return parsed


def _refuse_invalid_utf8(data: bytes, source: str) -> None:
    """JSON is UTF-8 text: bytes that are not are named where they stand (orjson's error points elsewhere, and a
    pretty-printed document would be reported as NDJSON whose first line is cut short)."""
    offset = first_invalid_utf8(data)
    if offset is not None:
        raise InputError(invalid_utf8(data, offset), where=source)


def ndjson_lines(data: bytes) -> list[bytes]:
    """The lines of NDJSON text, split at LF only (as the NDJSON spec says): a CR alone is JSON whitespace and may
    stand inside a line; a CR before the LF (Windows line ends) is dropped. No empty last line after a final LF."""
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines] if b"\r" in data else lines


def _parse_ndjson(data: bytes, source: str) -> ParsedInput:
    parsed = ParsedInput()
    for line_number, line in enumerate(ndjson_lines(data), start=1):
        if not line.strip():
            continue
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise InputError(f"line {line_number} is not valid JSON ({error})", where=source) from None
        parsed.add(document, source=f"{source}:{line_number}")
    return parsed


def _fhir_documents(document: object, *, source: str) -> Iterator[dict[str, Any] | Resource]:
    """Every FHIR resource or Bundle in a resource, Bundle, prefetch map, CDS Hooks request or list."""
    if isinstance(document, Resource):
        yield document
        return
    if isinstance(document, list):
        for item in document:
            yield from _fhir_documents(item, source=source)
        return
    if not isinstance(document, dict):
        raise InputError("expected a FHIR resource, Bundle or prefetch object", where=source)
    if isinstance(document.get("resourceType"), str):
        yield document
    elif "prefetch" in document and isinstance(document["prefetch"], dict):
        yield from _prefetch_documents(document["prefetch"], source)
    elif document and all(value is None or isinstance(value, dict) for value in document.values()):
        yield from _prefetch_documents(document, source)
    else:
        raise InputError("not FHIR: the JSON has no resourceType", where=source)


def _prefetch_documents(prefetch: dict[str, Any], source: str) -> Iterator[dict[str, Any] | Resource]:
    for key, value in prefetch.items():
        if value is None:
            continue
        if not isinstance(value, dict) or "resourceType" not in value:
            raise InputError(f"prefetch key {key!r} does not hold a FHIR resource", where=source)
        if value["resourceType"] == "OperationOutcome":
            continue
        yield from _fhir_documents(value, source=f"{source}#prefetch.{key}")
