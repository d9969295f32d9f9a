"""The local engine: scan blocks into hash partitions, evaluate partitions in parallel, merge outcomes in key order."""

from __future__ import annotations

import heapq
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import orjson

from spasticity_cds.batch import partition, problems, scan
from spasticity_cds.batch.inputs import InputFile
from spasticity_cds.batch.patient import EvaluationSpec, Line
from spasticity_cds.errors import BatchError

if TYPE_CHECKING:
    from spasticity_cds.batch.inputs import InputSet
    from spasticity_cds.batch.output import RunWriter
    from spasticity_cds.batch.runner import BatchOptions, EngineReport

T = TypeVar("T")
R = TypeVar("R")
#: Seconds between a pool process's checks that the run's main process is still alive.
PARENT_POLL_S = 0.5
#: A pool process's exit status on Ctrl-C, as a shell reports a process that SIGINT ended.
INTERRUPTED_STATUS = 130


@dataclass(slots=True)
class Layout:
    """The scan put together: each partition's slices, per-file counts, problem lines, references, shared lines."""

    partitions: int
    slices: list[list[partition.Slice]]
    stats: list[dict[str, int]]
    kept: dict[tuple[int, str], list[problems.KeptLine]] = field(default_factory=dict)
    medication_refs: set[str] = field(default_factory=set)
    shared: list[partition.Slice] = field(default_factory=list)
    patient_lines: int = 0
    #: Per file that could not be read to its end (a truncated gzip): why, after how many lines.
    unreadable: dict[int, str] = field(default_factory=dict)
    #: The identifier tokens conditional patient links search by.
    identifiers: set[str] = field(default_factory=set)


class Mapper(Protocol):
    """``map`` in order, here or in the pool."""

    def __call__(self, function: Callable[[T], R], items: Sequence[T], /) -> Iterable[R]: ...


class _Pool:
    """``map`` in order: in this process (one worker) or in a pool of spawned processes."""

    def __init__(self, executor: ProcessPoolExecutor | None) -> None:
        self.executor = executor

    def map(self, function: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """``function`` over ``items``, results in order."""
        if self.executor is None:
            return map(function, items)
        return self.executor.map(function, items)


@contextmanager
def _pool(workers: int) -> Iterator[_Pool]:
    if workers == 1:
        yield _Pool(None)
        return
    context = multiprocessing.get_context("spawn")  # no inherited state or threads: the same start on every OS
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_pool_process_start, initargs=(os.getpid(),)
    ) as executor:
        try:
            yield _Pool(executor)
        except BrokenProcessPool:
            processes = list(executor._processes.values())  # shutdown drops the executor's own reference
            executor.shutdown(wait=True, cancel_futures=True)  # joins them: their exit codes are then known
            raise BatchError(_worker_death([process.exitcode for process in processes])) from None
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise


def _worker_death(exit_codes: Sequence[int | None]) -> str:
    """Why the pool broke, as far as the workers' exit codes tell. The pool ends the survivors with SIGTERM, so
    another code names the worker that died first; the out-of-memory killer is named only for SIGKILL, its signal."""
    first = [code for code in exit_codes if code not in (None, 0, -signal.SIGTERM)]
    code = first[0] if first else next((code for code in exit_codes if code == -signal.SIGTERM), None)
    if code is None:
        cause = "for an unknown reason"
    elif code == INTERRUPTED_STATUS:
        cause = "interrupted by SIGINT"
    elif code < 0:
        cause = f"killed by signal {signal.Signals(-code).name}"
    else:
        cause = f"exit status {code}"
    hint = (
        ", perhaps by the out-of-memory killer: run again with fewer --workers if memory is short"
        if code == -signal.SIGKILL
        else ""
    )
    return f"a worker process died ({cause}{hint}); the run stopped"


def _pool_process_start(parent: int) -> None:
    """In each pool process: leave Ctrl-C to the main process (which reports it and removes the partial output)
    and exit without a traceback; exit too when the main process is gone (killed outright, it cannot shut the
    pool down, and an orphaned process would hold the caller's output pipes open)."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED_STATUS))
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def run_local(
    inputs: InputSet,
    spec: EvaluationSpec,
    writer: RunWriter,
    options: BatchOptions,
    progress: Callable[[int, int], None] | None,
) -> EngineReport:
    """Scan, report line problems, evaluate each partition, then stream every outcome to the writer in key order."""
    from spasticity_cds.batch.runner import EngineReport

    work = writer.work / "local"
    work.mkdir(parents=True, exist_ok=True)
    with _pool(options.workers) as pool:
        layout, medications = _scanned(inputs.files, work, options.block_bytes, options.workers, pool.map)
        writer.line_problems([item.name for item in inputs.files], _collected(layout))
        jobs = [
            partition.PartitionTask(
                index, tuple(layout.slices[index]), medications, str(work / f"part-{index:04d}.bin"), spec
            )
            for index in range(layout.partitions)
        ]
        total = layout.patient_lines  # patients are counted exactly only once grouped; those without one come on top
        done = 0
        if progress is not None:
            progress(0, total)
        for counts in pool.map(partition.evaluate, jobs):
            writer.counts.merge(counts)
            done += counts.patients
            if progress is not None:
                progress(done, max(total, done))
    for outcome in partition.merged(job.out for job in jobs):
        writer.write(outcome)
    return EngineReport(
        patients=done,
        file_stats=layout.stats,
        engine={"name": "local", "workers": options.workers},
        unreadable={inputs.files[file_id].name: why for file_id, why in sorted(layout.unreadable.items())},
    )


def grouped(
    files: Sequence[InputFile], work: Path, block_bytes: int = scan.BLOCK_BYTES
) -> Iterator[tuple[str, list[Line]]]:
    """Every patient's lines without evaluating them (tests, the benchmark), one partition after the other."""
    layout, medications = _scanned(files, work, block_bytes, 1, map)
    for slices in layout.slices:
        yield from partition.group(slices, medications)


def _scanned(
    files: Sequence[InputFile],
    work: Path,
    block_bytes: int,
    workers: int,
    mapper: Mapper,
) -> tuple[Layout, str]:
    """Scan every file into partitions under ``work`` (``mapper`` runs the scan and index tasks); the layout and
    the path of the shared Medications some patient references."""
    count = scan.partition_count(files, block_bytes, workers)
    tasks = scan.plan(files, work, count, block_bytes)
    results = list(mapper(scan.scan, tasks))
    layout = _layout(files, tasks, results, count)
    if layout.identifiers:
        wanted = frozenset(layout.identifiers)
        # Only the ranges that hold Patients are read again (in an export, Patient.ndjson alone).
        holding = [task for task, result in zip(tasks, results, strict=True) if result.patient_lines]
        indexes = mapper(scan.index_patients, [scan.IndexTask(task, wanted) for task in holding])
        _place_conditional(layout, _merged_index(indexes), work / "linked.bin")
    return layout, _split_shared(layout, work / "medications.bin")


def _merged_index(indexes: Iterable[dict[str, set[str]]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for index in indexes:
        for token, keys in index.items():
            found.setdefault(token, set()).update(keys)
    return found


def _place_conditional(layout: Layout, found: dict[str, set[str]], path: Path) -> None:
    """Put each line whose conditional patient link finds exactly one Patient into that patient's partition (as
    runs of its own, in ``path``); report the others as ``conditional-reference``."""
    placed: dict[tuple[int, int], list[bytes]] = {}
    for piece in layout.shared:
        for reference, medication, lines in partition.runs(piece):
            identifier = problems.identifier_of(str(orjson.loads(reference)))
            if identifier is None:
                continue
            keys = found.get(identifier, set())
            if len(keys) == 1:
                key = orjson.dumps(next(iter(keys)))
                if medication:
                    layout.medication_refs.add(str(orjson.loads(medication)))
                where = (scan.partition_of(key, layout.partitions), piece.file_id)
                placed.setdefault(where, []).extend(
                    b"%d\t1\t%b\t%b\n%b\n" % (line[1], key, medication, line[2]) for line in lines
                )
                continue
            stats = layout.stats[piece.file_id]
            stats[problems.OK] -= len(lines)
            stats[problems.CONDITIONAL_REFERENCE] = stats.get(problems.CONDITIONAL_REFERENCE, 0) + len(lines)
            kept = [(line[1], problems.classify(line[2]).resource_type, b"") for line in lines]
            _keep(layout, (piece.file_id, problems.CONDITIONAL_REFERENCE), kept)
    with path.open("wb") as out:
        for (index, file_id), records in sorted(placed.items()):
            start = out.tell()
            out.write(b"".join(records))  # each line a run whose first line number is its own (base 0)
            layout.slices[index].append(partition.Slice(str(path), start, out.tell(), file_id, 0))


def _layout(
    files: Sequence[InputFile], tasks: Sequence[scan.ScanTask], results: Iterable[scan.ScanResult], count: int
) -> Layout:
    layout = Layout(partitions=count, slices=[[] for _ in range(count)], stats=[{} for _ in files])
    next_line = [1] * len(files)
    for task, result in zip(tasks, results, strict=True):
        base = next_line[task.file_id]
        next_line[task.file_id] += result.lines
        _add_result(layout, result, base)
        if result.error is not None:  # the lines read before it are kept; the run goes on, its input incomplete
            layout.unreadable[task.file_id] = f"{result.error} (after line {next_line[task.file_id] - 1:,})"
    return layout


def _add_result(layout: Layout, result: scan.ScanResult, base: int) -> None:
    file_id = result.file_id
    stats = layout.stats[file_id]
    for status, number in result.stats.items():
        stats[status] = stats.get(status, 0) + number
    for status, kept in result.kept.items():
        _keep(layout, (file_id, status), [(base + index, rtype, raw) for index, rtype, raw in kept])
    layout.medication_refs |= result.medication_refs
    layout.identifiers |= result.identifiers
    layout.patient_lines += result.patient_lines
    for segment in result.segments:
        offsets = segment.offsets
        for index in range(layout.partitions):
            if offsets[index + 1] > offsets[index]:
                layout.slices[index].append(
                    partition.Slice(segment.path, offsets[index], offsets[index + 1], file_id, base)
                )
        if offsets[-1] > offsets[-2]:
            layout.shared.append(partition.Slice(segment.path, offsets[-2], offsets[-1], file_id, base))


def _keep(layout: Layout, where: tuple[int, str], lines: list[problems.KeptLine]) -> None:
    kept = layout.kept.setdefault(where, [])
    kept.extend(lines)
    if len(kept) > 2 * problems.DETAIL_CAP:
        kept[:] = _first(kept)


def _first(kept: list[problems.KeptLine]) -> list[problems.KeptLine]:
    return heapq.nsmallest(problems.DETAIL_CAP, kept, key=lambda entry: entry[0])


def _split_shared(layout: Layout, path: Path) -> str:
    """Keep the shared Medications some patient references (in ``path``); report the rest as ``no-patient``."""
    if not layout.shared:
        return ""
    with path.open("wb") as out:
        for piece in layout.shared:
            for reference, _, lines in partition.runs(piece):
                name = str(orjson.loads(reference))
                if problems.identifier_of(name) is not None:
                    continue  # placed (or reported) by _place_conditional
                if name in layout.medication_refs:
                    out.write(b"".join(b"%d\t%d\t%b\t%b\n" % (*line[:2], reference, line[2]) for line in lines))
                    continue
                stats = layout.stats[piece.file_id]
                stats[problems.OK] -= len(lines)
                stats[problems.NO_PATIENT] = stats.get(problems.NO_PATIENT, 0) + len(lines)
                _keep(layout, (piece.file_id, problems.NO_PATIENT), [(line[1], "Medication", b"") for line in lines])
    return str(path)


def _collected(layout: Layout) -> list[tuple[tuple[int, str], tuple[int, list[problems.KeptLine]]]]:
    return [
        ((file_id, status), (layout.stats[file_id].get(status, 0), _first(kept)))
        for (file_id, status), kept in sorted(layout.kept.items())
    ]
