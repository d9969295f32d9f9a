"""Bundle files (Synthea's default output, one transaction Bundle per patient) turned into NDJSON lines: read by
the local scan directly, written out as NDJSON files for the Spark engine."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from spasticity_cds.batch import problems
from spasticity_cds.batch.inputs import InputFile, InputSet
from spasticity_cds.errors import BatchError
from spasticity_cds.fhir.parse import id_from_full_url

#: A reference as orjson writes it whose target may be another entry's ``fullUrl`` (a ``urn:uuid:``/``urn:oid:``).
_URN_REFERENCE = re.compile(rb'"reference":"(urn:(?:uuid|oid):[^"\\]*)"')


def converted(inputs: InputSet, work: Path) -> InputSet:
    """``inputs`` with every Bundle file replaced by an NDJSON file of its lines in ``work`` (the reported name is
    kept), one file after the other."""
    if not any(item.bundle for item in inputs.files):
        return inputs
    work.mkdir(parents=True, exist_ok=True)
    files = tuple(_converted(item, work / f"{index:05d}.ndjson") for index, item in enumerate(inputs.files))
    return replace(inputs, files=files)


def _converted(item: InputFile, out: Path) -> InputFile:
    if not item.bundle:
        return item
    try:
        out.write_bytes(bundle_block(item.path))
    except (OSError, EOFError, zlib.error) as error:
        raise BatchError(f"cannot read or convert the file: {error}", where=item.name) from None
    return replace(item, path=out, bundle=False)


def bundle_block(path: Path) -> bytes:
    """A Bundle file (gunzipped when its name ends in ``.gz``) as NDJSON text: its lines, each ending in ``\\n``."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return b"".join(line + b"\n" for line in bundle_lines(raw))


def entry_lines(raw: bytes) -> list[bytes] | None:
    """The lines of an NDJSON line that holds a whole Bundle (one per line, as ``synth --format bundles`` writes
    them): its entries, read as a Bundle file's are; None when the line is no Bundle with an array of entries."""
    try:
        document = problems.loads(raw)
    except orjson.JSONDecodeError:
        return None
    entries = _bundle_entries(document)
    if entries is None or "entry" not in document:  # a Bundle line without entries stays a line of its own
        return None
    return list(_entry_lines(entries))


def bundle_lines(raw: bytes) -> Iterator[bytes]:
    """One line per entry of a Bundle (line ``n`` is entry ``n``; an entry without a resource is a blank line, one
    that is not an object its JSON), references to another entry's ``urn:`` fullUrl rewritten to ``Type/id``; a
    file that is not a Bundle is one line: the resource it holds, or its text for the line classifier to report."""
    try:
        document = problems.loads(raw)  # invalid UTF-8 becomes U+FFFD, as on an NDJSON line
    except orjson.JSONDecodeError:
        yield b" ".join(raw.removeprefix(problems.BOM).split())
        return
    entries = _bundle_entries(document)
    if entries is None:
        yield _dumps(document)
        return
    yield from _entry_lines(entries)


def _bundle_entries(document: Any) -> list[Any] | None:
    """A Bundle's entries; None for anything else, or a Bundle whose ``entry`` is not an array."""
    if not (isinstance(document, dict) and document.get("resourceType") == "Bundle"):
        return None
    entries = document.get("entry", [])
    return entries if isinstance(entries, list) else None


def _entry_lines(entries: list[Any]) -> Iterator[bytes]:
    targets = _targets(entries)
    for entry in entries:
        if not isinstance(entry, dict):
            yield _dumps(entry)  # reported by the line classifier as not a JSON object
            continue
        resource = entry.get("resource")
        yield b"" if resource is None else _rewritten(_dumps(resource), targets)


def _dumps(value: Any) -> bytes:
    """One JSON line. orjson writes at most 254 levels of nesting (it reads 1024): deeper values are written by
    the standard library, as an NDJSON line of that depth would be read; past its recursion limit, a JSON string
    the classifier reports as not a JSON object."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except RecursionError:
            return b'"nested too deeply to read"'


def _targets(entries: Sequence[Any]) -> dict[bytes, bytes]:
    """``urn:`` fullUrl -> ``Type/id`` of the entries that have one. A resource without an ``id`` (usual in a
    transaction Bundle that POSTs) takes the one the FHIR reader gives it (``id_from_full_url``)."""
    targets: dict[bytes, bytes] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        full_url, resource = entry.get("fullUrl"), entry.get("resource")
        if not (isinstance(full_url, str) and full_url.startswith("urn:") and isinstance(resource, dict)):
            continue
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            continue
        if not resource.get("id"):
            resource["id"] = id_from_full_url(full_url)
        if isinstance(resource["id"], str):
            targets[full_url.encode()] = f"{resource_type}/{resource['id']}".encode()
    return targets


def _rewritten(line: bytes, targets: dict[bytes, bytes]) -> bytes:
    if not targets or b'"reference":"urn:' not in line:
        return line

    def target(match: re.Match[bytes]) -> bytes:
        found = targets.get(match.group(1))
        return match.group(0) if found is None else b'"reference":"' + found + b'"'

    return _URN_REFERENCE.sub(target, line)
