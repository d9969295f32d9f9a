"""Write a run's outputs: Task/closed/open NDJSON, OperationOutcomes, CSV and HTML worklists, counts, manifest."""

from __future__ import annotations

import csv
import html
import itertools
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from spasticity_cds.batch import policy, problems, worklist
from spasticity_cds.batch.patient import DECEASED, EVALUATED, FAILED, PatientOutcome
from spasticity_cds.batch.tasks import close_task, finding_of_task, worklist_row
from spasticity_cds.batch.worklist import CSV_COLUMNS, HTML_COLUMNS, LATE_CSV_COLUMNS, csv_cell, html_row
from spasticity_cds.errors import BatchError

if TYPE_CHECKING:
    import duckdb

TASKS = "Task.ndjson"
CLOSED = "closed.ndjson"
OPEN = "open.ndjson"
OUTCOMES = "OperationOutcome.ndjson"
CSV_NAME = "worklist.csv"
HTML_NAME = "worklist.html"
RULE_COUNTS = "rule_counts.json"
MANIFEST = "manifest.json"
WORK = "_work"
#: The HTML page lists at most this many rows (most severe first); the CSV always has every row.
HTML_ROW_LIMIT = 10_000
SEVERITY_RANKS = (0, 1, 2)
SEVERITY_TITLES = {"critical": "Critical", "warning": "Warning", "info": "Information"}
_LINES = (
    "read_csv(?, columns={'line': 'VARCHAR'}, delim='\x1f\x1e\x1d\x1c', quote='', escape='', header=false, "
    "auto_detect=false, max_line_size=16777216, buffer_size=33554432) WITH ORDINALITY"
)


@dataclass(slots=True)
class Counts:
    """Running totals of a run: patients, tasks, problems, findings per rule and per kind."""

    patients: int = 0
    evaluated: int = 0
    failed: int = 0
    deceased: int = 0
    in_scope: int = 0
    tasks: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, outcome: PatientOutcome) -> None:
        """Fold one patient's outcome into the totals."""
        self.patients += 1
        if outcome.status == EVALUATED:
            self.evaluated += 1
            self.in_scope += 1 if outcome.in_scope else 0
        elif outcome.status == DECEASED:
            self.deceased += 1
        else:
            self.failed += 1
        self.tasks += len(outcome.items)
        for rule_id, version, kind, severity, actionable in outcome.fired:
            rule = self.rules.setdefault(
                rule_id, {"version": version, "fired": 0, "dataGaps": 0, "actionable": 0, "bySeverity": {}}
            )
            rule["dataGaps" if kind == "data-gap" else "fired"] += 1
            rule["actionable"] += 1 if actionable else 0
            rule["bySeverity"][severity] = rule["bySeverity"].get(severity, 0) + 1
            per_kind = self.kinds.setdefault(kind, {"findings": 0, "actionable": 0})
            per_kind["findings"] += 1
            per_kind["actionable"] += 1 if actionable else 0
        for problem in outcome.problems:
            self.problem(orjson.loads(problem)["issue"][0]["details"]["coding"][0]["code"])

    def merge(self, other: Counts) -> None:
        """Add totals counted elsewhere (a worker's partition); the result does not depend on the order."""
        self.patients += other.patients
        self.evaluated += other.evaluated
        self.failed += other.failed
        self.deceased += other.deceased
        self.in_scope += other.in_scope
        self.tasks += other.tasks
        for category, number in other.problems.items():
            self.problem(category, number)
        for rule_id, theirs in other.rules.items():
            rule = self.rules.setdefault(
                rule_id, {**theirs, "fired": 0, "dataGaps": 0, "actionable": 0, "bySeverity": {}}
            )
            for name in ("fired", "dataGaps", "actionable"):
                rule[name] += theirs[name]
            for severity, number in theirs["bySeverity"].items():
                rule["bySeverity"][severity] = rule["bySeverity"].get(severity, 0) + number
        for kind, theirs_kind in other.kinds.items():
            per_kind = self.kinds.setdefault(kind, {"findings": 0, "actionable": 0})
            per_kind["findings"] += theirs_kind["findings"]
            per_kind["actionable"] += theirs_kind["actionable"]

    def problem(self, category: str, count: int = 1) -> None:
        """Count reported problems by category."""
        self.problems[category] = self.problems.get(category, 0) + count

    def rule_counts(self, knowledge_base: Mapping[str, Any]) -> dict[str, Any]:
        """The ``rule_counts.json`` document."""
        return {
            "knowledgeBase": dict(knowledge_base),
            "patients": {
                "total": self.patients,
                "evaluated": self.evaluated,
                "failed": self.failed,
                "deceased": self.deceased,
                "inScope": self.in_scope,
            },
            "rules": {rule_id: self.rules[rule_id] for rule_id in sorted(self.rules)},
            "kinds": {kind: self.kinds[kind] for kind in sorted(self.kinds)},
        }


class RunWriter:
    """Streams per-patient outcomes to work files in ``root``, then writes the final outputs in ``finish``."""

    def __init__(self, root: Path, previous: Path | None) -> None:
        """``previous``: the run to compare with (``--since``), for which item keys and patient statuses are kept."""
        self.root = root
        self.previous = previous
        self.work = root / WORK
        self.work.mkdir(parents=True, exist_ok=True)
        self.counts = Counts()
        self._keys = (self.work / "keys.ndjson").open("wb") if previous is not None else None
        self._tasks = (self.work / "tasks.ndjson").open("wb")
        self._rows = [(self.work / f"rows-{rank}.ndjson").open("wb") for rank in SEVERITY_RANKS]
        self._patients = (self.work / "patients.ndjson").open("wb") if previous is not None else None
        self._outcomes = (root / OUTCOMES).open("wb")
        self.outcome_count = 0

    def close(self) -> None:
        """Close the open files (idempotent)."""
        for handle in (self._keys, self._tasks, *self._rows, self._patients, self._outcomes):
            if handle is not None:
                handle.close()

    def add(self, outcome: PatientOutcome) -> None:
        """Record and count one patient's outcome."""
        self.counts.add(outcome)
        self.write(outcome)

    def write(self, outcome: PatientOutcome) -> None:
        """Record one patient's outcome counted elsewhere (``counts.merge``)."""
        for key, task, severity, row in outcome.items:
            if self._keys is not None:
                self._keys.write(key + b"\n")
            self._tasks.write(task + b"\n")
            self._rows[min(severity, SEVERITY_RANKS[-1])].write(row + b"\n")
        if self._patients is not None:
            self._patients.write(orjson.dumps({"key": outcome.key, "status": outcome.status}) + b"\n")
        for problem in outcome.problems:
            self._outcomes.write(problem + b"\n")
            self.outcome_count += 1

    def problem(self, record: Mapping[str, Any]) -> None:
        """Write one problem found while reading the input (line problems are counted from the file stats)."""
        self._outcomes.write(orjson.dumps(record) + b"\n")
        self.outcome_count += 1

    def line_problems(
        self, names: Sequence[str], collected: Iterable[tuple[tuple[int, str], tuple[int, Sequence[problems.KeptLine]]]]
    ) -> None:
        """Write line problems in a fixed order: by file and line, then one overflow record per file and category.

        ``collected`` holds per (file index, category) the number of lines and the first of them (any order)."""
        detailed: list[tuple[int, int, str, str | None, bytes]] = []
        overflow: list[tuple[int, str, int]] = []
        for (file_id, status), (total, first) in collected:
            detailed.extend((file_id, line_no, status, rtype, raw) for line_no, rtype, raw in first)
            if total > problems.DETAIL_CAP:
                overflow.append((file_id, status, total - problems.DETAIL_CAP))
        for file_id, line_no, status, rtype, raw in sorted(detailed, key=lambda entry: (entry[0], entry[1])):
            diagnostics = problems.describe(status, rtype, raw)
            self.problem(problems.operation_outcome(status, diagnostics, f"{names[file_id]}:{line_no}"))
        for file_id, status, more in sorted(overflow):
            self.problem(problems.overflow(status, names[file_id], more))

    def finish(self, *, now: str, app_url: str, memory_limit: str, incomplete: bool = False) -> dict[str, int]:
        """Write Task, open, closed, CSV, HTML; returns counts of new, open, closed, carried and withheld Tasks.

        ``incomplete``: the input is known to lack data (the export reported errors, a file was cut short), so with
        ``--since`` no item changes (``_hold``)."""
        self.close()
        previous = self.previous
        if previous is None:
            return _finish_first(self.root, self.work, app_url, self.counts.tasks)
        import duckdb

        connection = _duckdb(memory_limit, self.work / "spill")
        try:
            connection.execute("SET enable_progress_bar = false")
            _load(connection, self.work, previous / OPEN)
            if incomplete:
                return _hold(connection, self.root, self.work, previous / OPEN, app_url)
            return _finish(connection, self.root, self.work, previous / OPEN, now, app_url)
        except duckdb.Error as error:
            raise BatchError(
                f"cannot compare with the previous run: {_first_line(error)}", where=str(previous)
            ) from None
        except RuntimeError as error:  # DuckDB turns a Ctrl-C during a query into "Query interrupted"
            if "interrupted" in str(error).lower():
                raise KeyboardInterrupt from None
            raise
        finally:
            connection.close()


def check_memory_limit(memory_limit: str) -> None:
    """Refuse a ``--memory-limit`` DuckDB cannot read before the run starts, not after the evaluation."""
    _duckdb(memory_limit, None).close()


def _duckdb(memory_limit: str, spill: Path | None) -> duckdb.DuckDBPyConnection:
    import duckdb  # here, so that registering the command does not load DuckDB

    config: dict[str, str | bool | int | float | list[str]] = {"memory_limit": memory_limit}
    if spill is not None:
        config["temp_directory"] = str(spill)
    try:
        return duckdb.connect(":memory:", config=config)
    except duckdb.Error as error:
        raise BatchError(f"--memory-limit {memory_limit!r}: {_first_line(error)}") from None


def _first_line(error: Exception, limit: int = 500) -> str:
    """An error's first line, cut: DuckDB quotes the offending input line, which may be megabytes long."""
    text = str(error).strip().split("\n", 1)[0]
    return text if len(text) <= limit else f"{text[:limit]}…"


def _finish_first(root: Path, work: Path, app_url: str, count: int) -> dict[str, int]:
    """Without ``--since`` every item (``count`` of them) is new and open and nothing closes: no join, the work
    files are the output."""
    (work / "tasks.ndjson").replace(root / TASKS)
    shutil.copyfile(root / TASKS, root / OPEN)
    (root / CLOSED).write_bytes(b"")
    _write_worklists(root, _rows(work, app_url, None), count)
    return {"new": count, "open": count, "closed": 0, "carried": 0, "withheld": 0}


def _load(connection: duckdb.DuckDBPyConnection, work: Path, prev_file: Path) -> None:
    """With ``--since``: only ids and keys go into DuckDB (this run's items, its patients, the previous open
    items); Task and row text is streamed from the files in step with the queries."""
    connection.execute(
        f"CREATE TABLE cur AS SELECT ordinality AS ord, v[1] AS id, v[2] AS patient, v[3] AS rule_id FROM "
        f"(SELECT ordinality, json_extract_string(line, ['$.id', '$.patient', '$.rule_id']) AS v FROM {_LINES})",
        [str(work / "keys.ndjson")],
    )
    connection.execute(
        f"CREATE TABLE pats AS SELECT v[1] AS key, v[2] AS status FROM (SELECT "
        f"json_extract_string(line, ['$.key', '$.status']) AS v FROM {_LINES})",
        [str(work / "patients.ndjson")],
    )
    connection.execute(
        f"CREATE TABLE prev AS SELECT ordinality AS ord, v[1] AS id, v[2] AS patient, v[3] AS rule_id, "
        f"v[4] AS authored FROM (SELECT ordinality, line, json_extract_string(line, ['$.id', '$.for.reference', "
        f"'$.reasonCode.coding[0].code', '$.authoredOn']) AS v FROM {_LINES}) WHERE line IS NOT NULL",
        [str(prev_file)],
    )
    connection.execute("CREATE TABLE prev_ids AS SELECT id, min(authored) AS authored FROM prev GROUP BY id")


def _hold(
    connection: duckdb.DuckDBPyConnection, root: Path, work: Path, prev_file: Path, app_url: str
) -> dict[str, int]:
    """An incomplete input with ``--since`` opens and closes nothing: the data it lacks may be what made an item
    fire, stop firing or fire on other data. The previous open items are carried as they were, and are the
    worklists; the items only this run found are counted (``withheld``), not opened, so that the next complete run
    raises the real ones as new."""
    (root / TASKS).write_bytes(b"")
    (root / CLOSED).write_bytes(b"")
    shutil.copyfile(prev_file, root / OPEN)
    for rank in SEVERITY_RANKS:
        (work / f"rows-{rank}.ndjson").write_bytes(b"")  # this run's rows: none of its items is opened
    carried = 0
    with prev_file.open("rb") as old:
        for line in old:
            if line.strip():
                _append_carried_row(work, orjson.loads(line))
                carried += 1
    (withheld,) = connection.execute(
        "SELECT count(DISTINCT c.id) FROM cur AS c LEFT JOIN prev_ids AS p USING (id) WHERE p.id IS NULL"
    ).fetchone() or (0,)
    _write_worklists(root, _rows(work, app_url, _row_flags(connection)), carried)
    return {"new": 0, "open": carried, "closed": 0, "carried": carried, "withheld": withheld}


def _finish(
    connection: duckdb.DuckDBPyConnection, root: Path, work: Path, prev_file: Path, now: str, app_url: str
) -> dict[str, int]:
    """With ``--since`` on a complete input: new items are written, gone ones closed, those of patients that could
    not be evaluated carried."""
    counts = {"new": 0, "open": 0, "closed": 0, "carried": 0, "withheld": 0}
    flags = _stream(
        connection, "SELECT p.id IS NULL, p.authored FROM cur AS c LEFT JOIN prev_ids AS p USING (id) ORDER BY c.ord"
    )
    with (
        (work / "tasks.ndjson").open("rb") as source,
        (root / TASKS).open("wb") as tasks,
        (root / OPEN).open("wb") as open_tasks,
    ):
        for line, (is_new, authored) in zip(source, flags, strict=True):
            open_tasks.write(line if is_new else _first_authored(line, authored))
            counts["open"] += 1
            if is_new:
                tasks.write(line)
                counts["new"] += 1
        gone = _stream(
            connection,
            "SELECT p.ord, s.status, k.patient IS NOT NULL FROM prev AS p "
            "LEFT JOIN (SELECT key, min(status) AS status FROM pats GROUP BY key) AS s ON s.key = p.patient "
            "LEFT JOIN (SELECT DISTINCT patient, rule_id FROM cur) AS k ON k.patient = p.patient "
            "AND k.rule_id = p.rule_id WHERE p.id NOT IN (SELECT id FROM cur) ORDER BY p.ord",
        )
        with prev_file.open("rb") as old, (root / CLOSED).open("wb") as closed:
            numbered = enumerate(old, start=1)
            for ord_, status, superseded in gone:
                line = next(text for number, text in numbered if number == ord_)
                if status == FAILED:
                    open_tasks.write(line)
                    _append_carried_row(work, orjson.loads(line))
                    counts["carried"] += 1
                    counts["open"] += 1
                    continue
                if status is None:
                    new_status, reason = "cancelled", "the patient is not in this run's input"
                elif status == DECEASED:
                    new_status, reason = "cancelled", "the patient is recorded as deceased"
                elif superseded:
                    new_status, reason = "cancelled", "superseded: the rule now fires on other data or version"
                else:
                    new_status, reason = "completed", "the finding no longer fires"
                closed_task = close_task(orjson.loads(line), status=new_status, reason=reason, when=now)
                closed.write(orjson.dumps(closed_task) + b"\n")
                counts["closed"] += 1
    _write_worklists(root, _rows(work, app_url, _row_flags(connection)), counts["open"])
    return counts


def _row_flags(connection: duckdb.DuckDBPyConnection) -> Callable[[Path], Iterator[tuple[Any, ...]]]:
    """Which rows of a rows file are new: their item was not open in the previous run."""

    def flags(path: Path) -> Iterator[tuple[Any, ...]]:
        return _stream(
            connection,
            "SELECT p.id IS NULL FROM (SELECT ordinality AS ord, json_extract_string(line, '$.id') AS id "
            f"FROM {_LINES}) AS c LEFT JOIN prev_ids AS p USING (id) ORDER BY c.ord",
            [str(path)],
        )

    return flags


def _first_authored(line: bytes, authored: str | None) -> bytes:
    """An item that was open before, found again, keeps the ``authoredOn`` of the run that first raised it (the
    rest of its Task is this run's, which may have refreshed the patient's name or a result's age)."""
    task = orjson.loads(line)
    if authored is None or task.get("authoredOn") == authored:
        return line
    task["authoredOn"] = authored
    return orjson.dumps(task) + b"\n"


def _append_carried_row(work: Path, task: Mapping[str, Any]) -> None:
    """The worklist row of an item carried over (its patient could not be evaluated this run), rebuilt from its
    Task: it is still open, so the clinicians' list shows it."""
    finding = finding_of_task(task)
    rank = min(policy.SEVERITY_RANK.get(str(finding["severity"]), SEVERITY_RANKS[-1]), SEVERITY_RANKS[-1])
    row = worklist.render(worklist_row(task, finding))
    with (work / f"rows-{rank}.ndjson").open("ab") as rows:
        rows.write(orjson.dumps({"id": task["id"], "row": row}) + b"\n")


def _stream(
    connection: duckdb.DuckDBPyConnection, query: str, parameters: list[str] | None = None, size: int = 10_000
) -> Iterator[tuple[Any, ...]]:
    cursor = connection.execute(query, parameters or [])
    while True:
        rows = cursor.fetchmany(size)
        if not rows:
            return
        yield from rows


def _rows(
    work: Path, app_url: str, flags: Callable[[Path], Iterator[tuple[Any, ...]]] | None
) -> Iterator[dict[str, Any]]:
    """Worklist rows, most severe first, each with its patient link and its ``new`` flag: ``flags`` says which rows
    are new with ``--since``; without it (``None``) every row is."""
    for rank in SEVERITY_RANKS:
        path = work / f"rows-{rank}.ndjson"
        marks = flags(path) if flags is not None else itertools.repeat((True,))
        with path.open("rb") as source:
            for line, (is_new,) in zip(source, marks, strict=flags is not None):
                row: dict[str, Any] = orjson.loads(line)["row"]
                row["new"] = "yes" if is_new else "no"
                row["link"] = f"{app_url.rstrip('/')}/patients/{quote(str(row['patient']), safe='')}"
                yield row


def _write_worklists(root: Path, rows: Iterator[dict[str, Any]], total: int) -> None:
    with (
        (root / CSV_NAME).open("w", encoding="utf-8", newline="") as csv_file,
        (root / HTML_NAME).open("w", encoding="utf-8") as page,
    ):
        writer = csv.writer(csv_file)
        writer.writerow(CSV_COLUMNS)
        _html_head(page, total)
        severity: str | None = None
        shown = 0
        for row in rows:
            csv_file.write(row["csv"] + ",")
            writer.writerow([csv_cell(row[column]) for column in LATE_CSV_COLUMNS])
            if shown >= HTML_ROW_LIMIT:
                continue
            if row["severity"] != severity:
                if severity is not None:
                    page.write("</tbody></table></section>\n")
                severity = str(row["severity"])
                _html_section(page, severity)
            page.write(html_row(row, row["new"], row["link"]))
            shown += 1
        if severity is not None:
            page.write("</tbody></table></section>\n")
        if shown == 0:
            page.write("<p>No actionable findings.</p>\n")
        if shown < total:
            page.write(
                f'<p class="note">Showing the first {shown:,} of {total:,} items (most severe first); '
                f"{CSV_NAME} lists every item.</p>\n"
            )
        page.write(f"<script>{_SORT_SCRIPT}</script>\n</body></html>\n")


def _html_head(page: IO[str], total: int) -> None:
    page.write(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Spasticity worklist</title>"
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>Spasticity worklist</h1>\n<p>{total:,} open items. Click a column heading to sort.</p>\n"
    )


def _html_section(page: IO[str], severity: str) -> None:
    title = html.escape(SEVERITY_TITLES.get(severity, severity))
    slug = html.escape(severity, quote=True)
    header = "".join(
        f'<th scope="col" data-column="{index}" tabindex="0">{html.escape(label)}</th>'
        for index, (_, label) in enumerate(HTML_COLUMNS)
    )
    page.write(
        f'<section class="severity-{slug}"><h2>{title}</h2>\n'
        f'<table class="worklist"><thead><tr>{header}</tr></thead><tbody>\n'
    )


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem}table{border-collapse:collapse;width:100%;"
    "margin-bottom:2rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}"
    "th{cursor:pointer;background:#f3f3f3}th[aria-sort=ascending]::after{content:' \\25B2'}"
    "th[aria-sort=descending]::after{content:' \\25BC'}.severity-critical h2{color:#a00}"
    ".severity-warning h2{color:#a60}.note{font-style:italic}"
)
_SORT_SCRIPT = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    var number = parseFloat(text);
    return isNaN(number) || String(number) !== text ? text.toLowerCase() : number;
  }
  function sort(header) {
    var table = header.closest('table');
    var body = table.tBodies[0];
    var column = Number(header.getAttribute('data-column'));
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th').forEach(function (th) { th.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[column]), y = key(b.cells[column]);
      var order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll('table.worklist th').forEach(function (header) {
    header.addEventListener('click', function () { sort(header); });
    header.addEventListener('keydown', function (event) {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sort(header); }
    });
  });
})();
"""


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Pretty JSON with sorted keys and a final newline."""
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
