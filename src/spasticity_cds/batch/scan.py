"""Scan NDJSON files in line-aligned blocks: classify each line once and spill it to its patient's hash partition."""

from __future__ import annotations

import functools
import gzip
import itertools
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import orjson

from spasticity_cds.batch import problems
from spasticity_cds.batch.bundles import bundle_block, entry_lines
from spasticity_cds.batch.inputs import InputFile
from spasticity_cds.fhir.parse import ndjson_lines

#: Input bytes per scan block (one segment of spilled partitions) and per patient partition.
BLOCK_BYTES = 32 * 1024 * 1024
#: Estimated expansion of a gzip file, to size the partitions before it is read.
GZIP_RATIO = 8
#: Decompressed bytes per read of a gzip stream: a read that fails loses what it had, so reads are small.
GZIP_PIECE = 1024 * 1024
#: What a file that breaks off raises (a truncated or mislabelled gzip).
_STREAM_ERRORS = (OSError, EOFError, zlib.error)
#: At most this many partitions (open outcome files in the final merge); past it partitions grow instead.
MAX_PARTITIONS = 512


class _Reference(msgspec.Struct, gc=False):
    """A Reference; only its ``reference`` string is read."""

    reference: str | None = None


class _Fields(msgspec.Struct, gc=False):
    """The only fields classification reads, typed as in valid FHIR; msgspec skips (but checks) the rest."""

    resourceType: str | None = None  # noqa: N815 - FHIR's field names
    id: str | None = None
    subject: _Reference | None = None
    patient: _Reference | None = None
    beneficiary: _Reference | None = None
    medicationReference: _Reference | None = None  # noqa: N815


_DECODER = msgspec.json.Decoder(_Fields)
_R4_TYPES = problems.R4_TYPES
_UNUSUAL = (msgspec.DecodeError, ValueError, RecursionError)  # invalid UTF-8 raises UnicodeDecodeError


def fast_key(raw: bytes) -> str | None:
    """The patient key of the usual line (a known R4 type with a plain relative ``Patient/{id}`` link and no
    ``medicationReference``), exactly as ``problems.classify`` finds it; ``None``: ask ``problems.classify``.
    A Patient's key ends in a tab (stripped by the caller) so that Patient resources can be counted."""
    try:
        fields = _DECODER.decode(raw)
    except _UNUSUAL:
        return None
    resource_type = fields.resourceType
    if fields.medicationReference is not None or resource_type not in _R4_TYPES:
        return None
    if resource_type == "Patient":
        return f"Patient/{fields.id}\t" if fields.id else None
    link = fields.subject or fields.patient or fields.beneficiary  # the first present; an empty one -> slow path
    reference = link.reference if link is not None else None
    if (
        reference
        and len(reference) > len("Patient/")
        and reference.startswith("Patient/")
        and reference.find("/", 8) < 0
        and not reference.endswith("\t")  # the Patient mark: such a rare key takes the slow path
    ):
        return reference
    return None


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a patient key (its JSON text): the same in every process, unlike ``hash``."""
    return zlib.crc32(key) % partitions


@dataclass(frozen=True, slots=True)
class ScanTask:
    """One byte range of one file (a whole file when gzipped or a Bundle), spilled to ``out``."""

    file_id: int
    path: str
    start: int
    end: int
    gzipped: bool
    partitions: int
    out: str
    block_bytes: int = BLOCK_BYTES
    bundle: bool = False


@dataclass(slots=True)
class Segment:
    """One scanned block in a spill file: partition ``p`` lies at ``offsets[p]:offsets[p + 1]``; the last
    partition (index ``partitions``) holds shared ``Medication`` lines."""

    path: str
    offsets: list[int]


@dataclass(slots=True)
class ScanResult:
    """What scanning one task found: its segments, line counts by status, first problem lines, references."""

    file_id: int
    lines: int = 0
    segments: list[Segment] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[problems.KeptLine]] = field(default_factory=dict)
    medication_refs: set[str] = field(default_factory=set)
    patient_lines: int = 0
    error: str | None = None
    #: The identifier tokens conditional patient links search by (their lines wait in the shared partition).
    identifiers: set[str] = field(default_factory=set)


def partition_count(files: Sequence[InputFile], block_bytes: int, workers: int) -> int:
    """Enough partitions for each to hold about one block of input, and a few per worker to balance them."""
    size = 0
    for item in files:
        stat = item.path.stat().st_size
        size += stat * GZIP_RATIO if item.path.name.endswith(".gz") else stat
    return max(4 * workers, min(MAX_PARTITIONS, -(-size // block_bytes)))


def plan(files: Sequence[InputFile], work: Path, partitions: int, block_bytes: int = BLOCK_BYTES) -> list[ScanTask]:
    """Cut plain NDJSON files into ranges of about ``block_bytes`` ending at a newline; a gzip file or a Bundle is
    one task."""
    tasks: list[ScanTask] = []
    for file_id, item in enumerate(files):
        gzipped = item.path.name.endswith(".gz")
        cuts = [0, -1] if gzipped or item.bundle else _cuts(item.path, block_bytes)
        for start, end in itertools.pairwise(cuts):
            out = str(work / f"scan-{len(tasks):05d}.bin")
            path = str(item.path)
            tasks.append(ScanTask(file_id, path, start, end, gzipped, partitions, out, block_bytes, item.bundle))
    return tasks


def _cuts(path: Path, block_bytes: int) -> list[int]:
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as handle:
        while cuts[-1] + block_bytes < size:
            handle.seek(cuts[-1] + block_bytes)
            handle.readline()
            position = handle.tell()
            if position >= size:
                break
            cuts.append(position)
    return [*cuts, size]


def scan(task: ScanTask) -> ScanResult:
    """Classify every line of the task's range and spill the usable ones by partition; never raises on content."""
    result = ScanResult(file_id=task.file_id)
    try:
        with Path(task.out).open("wb") as out:
            for block in _blocks(task):
                _scan_block(task, block, result, out)
    except _STREAM_ERRORS as error:
        result.error = f"cannot read the file: {error}"
    return result


def _blocks(task: ScanTask) -> Iterator[bytes]:
    """The range as blocks of whole lines. A plain range ends at a newline and is read at once; a gzip stream is
    cut after the last ``\\n`` of each block (so a ``\\r\\n`` is never split); a Bundle is its entries' lines."""
    if task.bundle:
        yield bundle_block(Path(task.path))
    elif task.gzipped:
        with gzip.open(task.path, "rb") as stream:
            yield from _line_blocks(iter(functools.partial(stream.read1, GZIP_PIECE), b""), task.block_bytes)
    else:
        with Path(task.path).open("rb") as handle:
            handle.seek(task.start)
            yield handle.read(task.end - task.start)


def _line_blocks(pieces: Iterator[bytes], block_bytes: int) -> Iterator[bytes]:
    """Whole lines of a stream read in ``pieces``, about ``block_bytes`` at a time. When the stream breaks off (a
    truncated gzip), the whole lines read before it come first, then the error; the line it cut is dropped."""
    buffer = bytearray()
    end = 0  # just past the buffer's last newline
    try:
        for piece in pieces:
            newline = piece.rfind(b"\n")
            if newline >= 0:
                end = len(buffer) + newline + 1
            buffer += piece
            if end >= block_bytes:
                yield _take(buffer, end)
                end = 0
    except _STREAM_ERRORS:
        if end:
            yield _take(buffer, end)
        raise
    if buffer:
        yield bytes(buffer)


def _take(buffer: bytearray, end: int) -> bytes:
    """The first ``end`` bytes of ``buffer``, removed from it."""
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


class _Spill:
    """The partitions of one block: runs of consecutive lines of one patient, each behind a header line
    ``first index, count, key, medication reference`` (JSON strings)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.buckets: list[list[bytes]] = [[] for _ in range(partitions + 1)]

    def run(self, first: int, key: str, medication: bytes, lines: list[bytes], *, shared: bool = False) -> None:
        """Spill ``lines`` (numbered from ``first``) of ``key``; ``shared``: unowned Medications, joined later."""
        text = orjson.dumps(key)
        bucket = self.buckets[self.partitions if shared else partition_of(text, self.partitions)]
        bucket.append(b"%d\t%d\t%b\t%b\n" % (first, len(lines), text, medication))
        bucket.append(b"\n".join(lines) + b"\n")

    def write(self, out: IO[bytes]) -> list[int]:
        """Append the partitions to ``out``; their offsets."""
        offsets = [out.tell()]
        for bucket in self.buckets:
            out.write(b"".join(bucket))
            offsets.append(out.tell())
        return offsets


def _scan_block(task: ScanTask, block: bytes, result: ScanResult, out: IO[bytes]) -> None:
    spill = _Spill(task.partitions)
    first_line = result.lines
    lines = ndjson_lines(block)
    if not block.isascii():  # the usual block is ASCII, so valid UTF-8 as a whole: no line of it needs a look
        _flag_invalid_utf8(result, lines, first_line)
    run_key: str | None = None
    run_first = 0
    run: list[bytes] = []
    fast = 0
    for index, raw in enumerate(lines, start=first_line):
        key = fast_key(raw)
        if key is not None and key == run_key:
            run.append(raw)
            fast += 1
            continue
        if run_key is not None:
            spill.run(run_first, run_key, b"", run)
            run_key = None
        if key is not None:
            if key.endswith("\t"):
                key = key[:-1]
                result.patient_lines += 1
            run_key, run_first, run = key, index, [raw]
            fast += 1
            continue
        _slow(result, spill, index, raw)
    if run_key is not None:
        spill.run(run_first, run_key, b"", run)
    result.stats[problems.OK] = result.stats.get(problems.OK, 0) + fast
    result.lines += len(lines)
    result.segments.append(Segment(task.out, spill.write(out)))


def _flag_invalid_utf8(result: ScanResult, lines: list[bytes], first_line: int) -> None:
    """Count and keep the lines that are not UTF-8 throughout; they are classified and read all the same (with
    U+FFFD), whichever path they take."""
    for index, raw in enumerate(lines, start=first_line):
        head = problems.invalid_utf8_head(raw)
        if head is not None:
            result.stats[problems.INVALID_UTF8] = result.stats.get(problems.INVALID_UTF8, 0) + 1
            _keep(result, problems.INVALID_UTF8, index, None, head)


def _slow(result: ScanResult, spill: _Spill, index: int, raw: bytes) -> None:
    """A line the fast path left: classify it exactly, count it, keep it as a problem or spill it alone; a line
    that holds a whole Bundle stands for its entries, each read as a line of its own with the Bundle's number."""
    line = problems.classify(raw)
    entries = entry_lines(raw) if line.resource_type == "Bundle" else None
    if entries is not None:
        for entry in entries:
            _slow(result, spill, index, entry)
        return
    status = line.status
    result.stats[status] = result.stats.get(status, 0) + 1
    if status in problems.LINE_PROBLEMS:
        _keep(result, status, index, line.resource_type, raw if status == problems.MALFORMED else b"")
    if status != problems.OK:
        return
    medication = orjson.dumps(line.medication_ref) if line.medication_ref is not None else b""
    if line.identifier is not None:  # its patient is known once the scan has seen every Patient
        result.identifiers.add(line.identifier)
        spill.run(index, problems.conditional_key(line.identifier), medication, [raw], shared=True)
        return
    if line.medication_ref is not None:
        result.medication_refs.add(line.medication_ref)
    if line.key is None:  # a Medication no patient owns: joined to the patients that reference it
        spill.run(index, f"Medication/{line.resource_id}" if line.resource_id else "", b"", [raw], shared=True)
        return
    if line.resource_type == "Patient":
        result.patient_lines += 1
    spill.run(index, line.key, medication, [raw])


def _keep(result: ScanResult, status: str, index: int, resource_type: str | None, text: bytes) -> None:
    """Keep a problem line for the report (the first ``DETAIL_CAP`` of its kind) with the text ``describe`` reads."""
    kept = result.kept.setdefault(status, [])
    if len(kept) < problems.DETAIL_CAP:
        kept.append((index, resource_type, text))


@dataclass(frozen=True, slots=True)
class IndexTask:
    """A scan task's range read again for the Patients that the identifier tokens of conditional links find."""

    scan: ScanTask
    identifiers: frozenset[str]


def index_patients(task: IndexTask) -> dict[str, set[str]]:
    """Token -> keys of the range's Patients that it finds. Only run when some line has a conditional patient link,
    and only the tokens those links search by are kept, so memory follows them, not the number of patients."""
    found: dict[str, set[str]] = {}
    try:
        for block in _blocks(task.scan):
            for raw in ndjson_lines(block):
                _index_line(raw, task.identifiers, found)
    except _STREAM_ERRORS:
        pass  # the scan reported the file as unreadable; the Patients before the break are indexed
    return found


def _index_line(raw: bytes, wanted: frozenset[str], found: dict[str, set[str]]) -> None:
    key = fast_key(raw)
    if key is not None and not key.endswith("\t"):
        return
    if key is None:
        line = problems.classify(raw)
        if line.resource_type == "Bundle":
            for entry in entry_lines(raw) or ():
                _index_line(entry, wanted, found)
            return
        if line.resource_type != "Patient" or line.key is None:
            return
        key = line.key
    for token in problems.patient_tokens(raw) & wanted:
        found.setdefault(token, set()).add(key.removesuffix("\t"))
