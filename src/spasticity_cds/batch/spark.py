"""The PySpark engine: the same line classification and per-patient evaluator, grouped by patient on Spark."""

from __future__ import annotations

import heapq
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from spasticity_cds.batch import problems
from spasticity_cds.batch.bundles import entry_lines
from spasticity_cds.batch.patient import EvaluationSpec, Line, PatientOutcome, cached_evaluator
from spasticity_cds.batch.problems import KeptLine as Kept
from spasticity_cds.errors import BatchError

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import SparkSession

    from spasticity_cds.batch.inputs import InputFile, InputSet
    from spasticity_cds.batch.output import RunWriter
    from spasticity_cds.batch.runner import BatchOptions, EngineReport

#: A classified line: ((file index, line number, raw bytes), classification).
Row = tuple[Line, problems.Classified]
#: The master when neither ``--spark-master`` nor spark-submit names one.
LOCAL_MASTER = "local[2]"
#: File names Spark's readers pass over without a word (Hadoop's hidden files).
HIDDEN_PREFIXES = ("_", ".")


def evaluate_partition(
    spec: EvaluationSpec,
) -> Callable[[Iterable[tuple[str, Line]]], Iterator[PatientOutcome]]:
    """The ``mapPartitions`` function over (patient key, line) pairs sorted by key: group each patient's lines
    (a range partition never splits a key), put them in file and line order, run the local engine's step."""

    def run(pairs: Iterable[tuple[str, Line]]) -> Iterator[PatientOutcome]:
        evaluator = cached_evaluator(spec)
        for key, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
            lines = sorted((pair[1] for pair in group), key=lambda line: (line[0], line[1]))
            yield evaluator.evaluate(key, lines)

    return run


def _classify(line: Line) -> list[Row]:
    """The line classified, plus a row of its own when it is not UTF-8 throughout (counted and reported apart, as
    the local scan does)."""
    rows = _classified(line)
    head = problems.invalid_utf8_head(line[2])
    if head is not None:
        rows.append(((line[0], line[1], head), problems.Classified(problems.INVALID_UTF8)))
    return rows


def _classified(line: Line) -> list[Row]:
    """The line classified; a line that holds a whole Bundle, its entries (as the local scan reads them)."""
    found = problems.classify(line[2])
    entries = entry_lines(line[2]) if found.resource_type == "Bundle" else None
    if entries is None:
        return [(line, found)]
    return [row for entry in entries for row in _classified((line[0], line[1], entry))]


#: Per (file, status): the number of lines and the first problem lines.
Tally = tuple[int, list[Kept]]


def _lines(session: SparkSession, index: int, path: str) -> RDD[Line]:
    """The file's lines as the bytes it holds, numbered. Not ``textFile``: Hadoop's Text.toString has already put
    U+FFFD in place of invalid UTF-8 when a line reaches Python; the text source's strings are the file's bytes,
    which a cast to binary hands over as they are. A line ends at LF only, as NDJSON says and the local engine
    reads it (Hadoop otherwise also ends a line at a lone CR, which JSON allows inside a line as whitespace)."""
    frame = session.read.option("lineSep", "\n").text(path)
    raw = frame.select(frame.value.cast("binary")).rdd.map(lambda row: bytes(row[0]))
    # The scan keeps one file's splits in file order (all of one length but the last, sorted stably by length),
    # so the index is the line's place in the file; a spark test cuts a file into many splits to hold it to that.
    return raw.zipWithIndex().map(_numbered(index))


def _numbered(index: int) -> Callable[[tuple[bytes, int]], Line]:
    def number(pair: tuple[bytes, int]) -> Line:
        return index, pair[1] + 1, pair[0].removesuffix(b"\r")  # a Windows line end, as ndjson_lines

    return number


def _refuse_hidden(files: Sequence[InputFile]) -> None:
    """Spark would read a file named like Hadoop's hidden files as empty: refused, so that no patient goes missing."""
    for item in files:
        if item.path.name.startswith(HIDDEN_PREFIXES):
            raise BatchError(
                "the Spark engine cannot read a file whose name starts with _ or . (rename it or use --engine local)",
                where=item.name,
            )


def _placed_conditional(rows: RDD[Row]) -> RDD[Row]:
    """Lines whose conditional patient link finds exactly one Patient of the export keyed by it, the others
    ``conditional-reference`` problems: as the local engine's ``_place_conditional``, with the same tokens."""
    conditional = rows.filter(lambda row: row[1].identifier is not None)
    wanted = frozenset(conditional.map(lambda row: str(row[1].identifier)).distinct().collect())
    if not wanted:
        return rows
    index = (
        rows.filter(_is_patient)
        .flatMap(lambda row: [(token, str(row[1].key)) for token in problems.patient_tokens(row[0][2]) & wanted])
        .distinct()
        .groupByKey()
        .mapValues(set)
    )
    placed = conditional.map(lambda row: (str(row[1].identifier), row)).leftOuterJoin(index).map(_place)
    return rows.filter(lambda row: row[1].identifier is None).union(placed)


def _is_patient(row: Row) -> bool:
    return row[1].status == problems.OK and row[1].resource_type == "Patient" and row[1].key is not None


def _place(pair: tuple[str, tuple[Row, set[str] | None]]) -> Row:
    (line, found), keys = pair[1]
    if keys is not None and len(keys) == 1:
        return line, problems.Classified(
            problems.OK, found.resource_type, next(iter(keys)), found.resource_id, found.medication_ref
        )
    return line, problems.Classified(problems.CONDITIONAL_REFERENCE, found.resource_type, None, found.resource_id)


def _patient_line(row: Row) -> tuple[str, Line]:
    return str(row[1].key), row[0]


def _medication_link(row: Row) -> tuple[str, str]:
    return str(row[1].medication_ref), str(row[1].key)


def _shared(row: Row) -> bool:
    return row[1].status == problems.OK and row[1].key is None


def _references_medication(row: Row) -> bool:
    return row[1].status == problems.OK and row[1].key is not None and bool(row[1].medication_ref)


def _mark_unreferenced(pair: tuple[str, tuple[Row, bool | None]]) -> Row:
    row, used = pair[1]
    if used:
        return row
    return row[0], problems.Classified(problems.NO_PATIENT, row[1].resource_type, None, row[1].resource_id)


def _tally_key(row: Row) -> tuple[tuple[int, str], Kept | None]:
    """Key (file, status); problem lines carry (line number, type, text) for the report, usable lines nothing."""
    line, classified = row
    if classified.status in problems.LINE_PROBLEMS:
        return (line[0], classified.status), (line[1], classified.resource_type, line[2])
    return (line[0], classified.status), None


def _keep_first(
    cap: int,
) -> tuple[
    Callable[[Kept | None], Tally],
    Callable[[Tally, Kept | None], Tally],
    Callable[[Tally, Tally], Tally],
]:
    """combineByKey functions keeping a count and the ``cap`` first problem lines of each (file, status)."""

    def create(item: Kept | None) -> Tally:
        return 1, [] if item is None else [item]

    def merge(acc: Tally, item: Kept | None) -> Tally:
        if item is None:
            return acc[0] + 1, acc[1]
        return acc[0] + 1, heapq.nsmallest(cap, [*acc[1], item], key=lambda entry: entry[0])

    def combine(left: Tally, right: Tally) -> Tally:
        return left[0] + right[0], heapq.nsmallest(cap, left[1] + right[1], key=lambda entry: entry[0])

    return create, merge, combine


def _session(options: BatchOptions) -> tuple[SparkSession, bool]:
    """The Spark session (a local one by default, spark-submit's when under it) and whether this run created it."""
    from pyspark.sql import SparkSession

    created = SparkSession.getActiveSession() is None
    builder = (
        SparkSession.builder.appName("spasticity-cds batch")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this driver with its own master
    if options.spark_master:
        builder = builder.master(options.spark_master)
    elif created and not under_submit:
        builder = builder.master(LOCAL_MASTER)
    if created and not under_submit:
        # Python workers must run this interpreter (its virtualenv has the package and its dependencies);
        # SparkContext reads PYSPARK_PYTHON when it starts, else it runs whatever "python3" is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    try:
        return builder.getOrCreate(), created
    except Exception as error:  # a master Spark cannot reach or parse, no Java: a setup problem, not a bug
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BatchError(f"cannot start Spark: {message}", where=options.spark_master or LOCAL_MASTER) from None


def run_spark(
    inputs: InputSet,
    spec: EvaluationSpec,
    writer: RunWriter,
    options: BatchOptions,
    progress: Callable[[int, int], None] | None,
) -> EngineReport:
    """Group and evaluate with PySpark; outcomes stream back to the driver in patient-key order."""
    from spasticity_cds.batch.runner import EngineReport

    try:
        from py4j.protocol import Py4JJavaError
        from pyspark import StorageLevel
    except ImportError:
        raise BatchError("--engine spark needs PySpark: pip install 'spasticity-cds[spark]'") from None
    _refuse_hidden(inputs.files)
    session, created = _session(options)
    try:
        context = session.sparkContext
        master = str(context.master)
        parts = [_lines(session, index, str(item.path)) for index, item in enumerate(inputs.files)]
        classified = context.union(parts).flatMap(_classify).persist(StorageLevel.MEMORY_AND_DISK)
        rows = _placed_conditional(classified)
        # Medications without a patient go to every patient whose orders reference them; unreferenced ones are
        # reported as resources without a patient, exactly as the DuckDB engine does.
        medications = rows.filter(_shared).map(lambda row: (f"Medication/{row[1].resource_id or ''}", row))
        references = rows.filter(_references_medication).map(_medication_link).distinct()
        referenced = references.keys().distinct().map(lambda ref: (ref, True))
        shared_rows = medications.leftOuterJoin(referenced).map(_mark_unreferenced)
        every_row = rows.filter(lambda row: not _shared(row)).union(shared_rows)

        create, merge, combine = _keep_first(problems.DETAIL_CAP)
        tallies = every_row.map(_tally_key).combineByKey(create, merge, combine).collect()
        stats: list[dict[str, int]] = [{} for _ in inputs.files]
        for (file_id, status), (count, _) in tallies:
            stats[file_id][status] = count
        writer.line_problems([item.name for item in inputs.files], [t for t in tallies if t[1][1]])

        patient_lines = every_row.filter(lambda row: row[1].status == problems.OK and row[1].key is not None)
        medication_lines = medications.join(references.map(lambda pair: (pair[0], pair[1]))).map(
            lambda pair: (pair[1][1], pair[1][0][0])
        )
        partitions = max(1, context.defaultParallelism)
        pairs = patient_lines.map(_patient_line).union(medication_lines)
        total = pairs.keys().distinct().count()
        if progress is not None:
            progress(0, total)
        ordered = pairs.sortByKey(numPartitions=partitions) if total else pairs  # one shuffle; a key never splits
        outcomes = ordered.mapPartitions(evaluate_partition(spec)).toLocalIterator(prefetchPartitions=True)
        for done, outcome in enumerate(outcomes, start=1):
            writer.add(outcome)
            if progress is not None:
                progress(done, total)
        classified.unpersist()
    except Py4JJavaError as error:  # a job failed on the cluster: its Java cause says why, not a Python traceback
        raise BatchError(f"Spark could not finish the run: {_java_cause(error)}") from None
    finally:
        if created:
            session.stop()
    return EngineReport(patients=total, file_stats=stats, engine={"name": "spark", "master": master})


def _java_cause(error: Exception) -> str:
    """The innermost ``Caused by:`` of a Java error (``java.io.IOException: not a gzip file``), else its first line;
    a file Hadoop cannot read (a truncated or mislabelled .gz) fails the whole job."""
    causes = re.findall(r"^Caused by: (.+)$", str(error), flags=re.MULTILINE)
    cause = causes[-1] if causes else str(error).strip().split("\n", 1)[0]
    hint = " (an input file that cannot be read? The local engine reads past one and reports it)"
    return cause[:500] + (hint if "IOException" in cause or "EOFException" in cause else "")
