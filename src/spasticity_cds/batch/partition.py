"""One hash partition: read its spilled lines, group them per patient in key order, evaluate, spill the outcomes."""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from pathlib import Path

import orjson

from spasticity_cds.batch.output import Counts
from spasticity_cds.batch.patient import EvaluationSpec, Line, PatientOutcome, cached_evaluator

#: Shared Medication lines per ``Medication/{id}`` (JSON text), loaded once per process and path.
_MEDICATIONS: dict[str, dict[bytes, list[Line]]] = {}


@dataclass(frozen=True, slots=True)
class Slice:
    """One partition's bytes in one scanned segment; line number = ``base`` + the line's index in its task."""

    path: str
    start: int
    stop: int
    file_id: int
    base: int


@dataclass(frozen=True, slots=True)
class PartitionTask:
    """Everything a worker needs for one partition; small and picklable."""

    index: int
    slices: tuple[Slice, ...]
    medications: str
    out: str
    spec: EvaluationSpec


def runs(piece: Slice) -> Iterator[tuple[bytes, bytes, list[Line]]]:
    """The runs spilled in one slice: (key, medication reference, numbered lines), keys and references as JSON."""
    with Path(piece.path).open("rb") as handle:
        handle.seek(piece.start)
        records = handle.read(piece.stop - piece.start).split(b"\n")
    file_id, position, end = piece.file_id, 0, len(records) - 1
    while position < end:
        first, count, key, medication = records[position].split(b"\t", 3)
        start, stop = position + 1, position + 1 + int(count)
        number = piece.base + int(first) - start
        yield key, medication, [(file_id, number + at, records[at]) for at in range(start, stop)]
        position = stop


def group(slices: Iterable[Slice], medications: str) -> list[tuple[str, list[Line]]]:
    """Each patient of a partition with its lines in file and line order (shared Medications joined), by key."""
    groups: dict[bytes, list[Line]] = {}
    references: dict[bytes, set[bytes]] = {}
    for piece in slices:
        for key, medication, lines in runs(piece):
            known = groups.get(key)
            if known is None:
                groups[key] = lines
            else:
                known.extend(lines)
            if medication:
                references.setdefault(key, set()).add(medication)
    shared = _medications(medications)
    patients: list[tuple[str, list[Line]]] = []
    for key, lines in groups.items():
        joined = [line for reference in references.get(key, ()) for line in shared.get(reference, ())]
        # Sorted even without shared Medications: lines placed by a conditional patient link come last.
        patients.append((str(orjson.loads(key)), sorted([*lines, *joined], key=_FILE_AND_LINE)))
    patients.sort(key=lambda patient: patient[0])
    return patients


#: A line's place in the input: file index, then line number.
_FILE_AND_LINE = itemgetter(0, 1)


def _medications(path: str) -> dict[bytes, list[Line]]:
    if not path:
        return {}
    if path not in _MEDICATIONS:
        table: dict[bytes, list[Line]] = {}
        for record in Path(path).read_bytes().split(b"\n")[:-1]:
            file_id, line_no, reference, raw = record.split(b"\t", 3)
            table.setdefault(reference, []).append((int(file_id), int(line_no), raw))
        _MEDICATIONS.clear()
        _MEDICATIONS[path] = table
    return _MEDICATIONS[path]


def evaluate(task: PartitionTask) -> Counts:
    """Evaluate the partition's patients in key order and spill their outcomes to ``task.out``; their totals."""
    evaluator = cached_evaluator(task.spec)
    counts = Counts()
    with Path(task.out).open("wb") as out:
        for key, lines in group(task.slices, task.medications):
            outcome = evaluator.evaluate(key, lines)
            counts.add(outcome)
            pickle.dump(outcome, out, protocol=pickle.HIGHEST_PROTOCOL)
    return counts


def outcomes(path: str) -> Iterator[PatientOutcome]:
    """The outcomes one partition spilled, in key order."""
    with Path(path).open("rb") as source:
        while True:
            try:
                outcome: PatientOutcome = pickle.load(source)
            except EOFError:
                return
            yield outcome


def merged(paths: Iterable[str]) -> Iterator[PatientOutcome]:
    """Every partition's outcomes merged into one stream in patient-key order (as DuckDB or Spark sorted them)."""
    return heapq.merge(*(outcomes(path) for path in paths), key=attrgetter("key"))
