"""Out-of-core grouping of Bulk NDJSON lines per patient with DuckDB, keeping each line's file and number."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb

from spasticity_cds.batch import problems
from spasticity_cds.batch.inputs import InputFile
from spasticity_cds.batch.patient import Line
from spasticity_cds.errors import BatchError

#: A delimiter no valid JSON line contains (raw control characters are not allowed in JSON), so each line is
#: read as one column. latin-1 maps every byte to one character, so invalid UTF-8 never stops the scan and the
#: exact bytes come back with ``str.encode("latin-1")``.
_READ_LINES = (
    "read_csv(?, columns={'line': 'VARCHAR'}, delim=?, quote='', escape='', header=false, auto_detect=false, "
    "strict_mode=false, encoding='latin-1', max_line_size=16777216, buffer_size=33554432) WITH ORDINALITY"
)
_DELIMITER = "\x1f\x1e\x1d\x1c"
_FIELDS = [
    "$.resourceType",
    "$.id",
    "$.subject.reference",
    "$.patient.reference",
    "$.beneficiary.reference",
    "$.medicationReference.reference",
]
_INGEST = f"""
INSERT INTO lines
SELECT ?::INTEGER, ordinality,
  CASE
    WHEN line IS NULL OR trim(line) = '' THEN '{problems.BLANK}'
    WHEN v IS NULL OR v[1] IS NULL THEN '{problems.MALFORMED}'
    WHEN v[1] NOT IN (SELECT name FROM r4types) THEN '{problems.UNKNOWN_TYPE}'
    WHEN key IS NULL AND v[1] <> 'Medication' THEN '{problems.NO_PATIENT}'
    ELSE '{problems.OK}'
  END,
  v[1], key, v[2], med_ref, line
FROM (
  SELECT ordinality, line, v,
    CASE WHEN v[1] = 'Patient' THEN 'Patient/' || nullif(v[2], '')
         ELSE 'Patient/' || nullif(regexp_extract(coalesce(v[3], v[4], v[5]), '{problems.PATIENT_REFERENCE}', 2), '')
    END AS key,
    'Medication/' || nullif(regexp_extract(v[6], '{problems.MEDICATION_REFERENCE}', 2), '') AS med_ref
  FROM (
    SELECT ordinality, line,
      CASE WHEN line IS NOT NULL AND json_valid(line) THEN json_extract_string(line, {_FIELDS!r}) END AS v
    FROM {_READ_LINES}
  )
)
"""
_UNUSED_MEDICATIONS = f"""
UPDATE lines SET status = '{problems.NO_PATIENT}'
WHERE status = '{problems.OK}' AND key IS NULL AND (
  res_id IS NULL OR res_id = '' OR 'Medication/' || res_id NOT IN (
    SELECT med_ref FROM lines WHERE status = '{problems.OK}' AND key IS NOT NULL AND med_ref IS NOT NULL))
"""
_PATIENT_LINES = f"""
SELECT key, file_id, line_no, line FROM (
  SELECT key, file_id, line_no, line FROM lines WHERE status = '{problems.OK}' AND key IS NOT NULL
  UNION ALL
  SELECT r.key, m.file_id, m.line_no, m.line
  FROM (SELECT DISTINCT key, med_ref FROM lines
        WHERE status = '{problems.OK}' AND key IS NOT NULL AND med_ref IS NOT NULL) AS r
  JOIN lines AS m ON m.status = '{problems.OK}' AND m.key IS NULL AND 'Medication/' || m.res_id = r.med_ref
)
ORDER BY key, file_id, line_no
"""
_PROBLEMS = f"""
SELECT file_id, line_no, status, rtype, line, n FROM (
  SELECT file_id, line_no, status, rtype, line,
    row_number() OVER (PARTITION BY file_id, status ORDER BY line_no) AS rn,
    count(*) OVER (PARTITION BY file_id, status) AS n
  FROM lines WHERE status IN ('{problems.MALFORMED}', '{problems.UNKNOWN_TYPE}', '{problems.NO_PATIENT}')
) WHERE rn <= ? ORDER BY file_id, line_no
"""


class DuckGrouper:
    """Load NDJSON files into DuckDB (spilling to ``spill_dir``), then stream each patient's lines in key order."""

    def __init__(self, files: Sequence[InputFile], spill_dir: Path, *, memory_limit: str, threads: int) -> None:
        self.files = list(files)
        spill_dir.mkdir(parents=True, exist_ok=True)
        self.connection = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": memory_limit,
                "temp_directory": str(spill_dir),
                "threads": max(1, threads),
            },
        )
        self.connection.execute("SET enable_progress_bar = false")
        self.connection.execute(
            "CREATE TABLE lines (file_id INTEGER, line_no BIGINT, status VARCHAR, rtype VARCHAR, key VARCHAR, "
            "res_id VARCHAR, med_ref VARCHAR, line VARCHAR)"
        )
        self.connection.execute("CREATE TABLE r4types (name VARCHAR)")
        self.connection.executemany("INSERT INTO r4types VALUES (?)", [(name,) for name in sorted(problems.R4_TYPES)])

    def __enter__(self) -> DuckGrouper:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release DuckDB (its spill files go with it)."""
        self.connection.close()

    def load(self) -> None:
        """Read and classify every line of every file."""
        for index, item in enumerate(self.files):
            try:
                self.connection.execute(_INGEST, [index, str(item.path), _DELIMITER])
            except duckdb.Error as error:
                raise BatchError(f"cannot read the file: {error}", where=item.name) from None
        self.connection.execute(_UNUSED_MEDICATIONS)

    def patient_count(self) -> int:
        """Distinct patient keys among usable lines."""
        row = self.connection.execute(
            f"SELECT count(DISTINCT key) FROM lines WHERE status = '{problems.OK}' AND key IS NOT NULL"
        ).fetchone()
        return int(row[0]) if row else 0

    def file_stats(self) -> list[dict[str, int]]:
        """Per input file: lines by status."""
        stats: list[dict[str, int]] = [{} for _ in self.files]
        for file_id, status, count in self.connection.execute(
            "SELECT file_id, status, count(*) FROM lines GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            stats[int(file_id)][str(status)] = int(count)
        return stats

    def patients(self, fetch_rows: int = 20_000) -> Iterator[tuple[str, list[Line]]]:
        """Each patient's key and lines (file index, line number, text), patients in key order."""
        cursor = self.connection.execute(_PATIENT_LINES)
        key: str | None = None
        lines: list[Line] = []
        while True:
            rows: list[Any] = cursor.fetchmany(fetch_rows)
            if not rows:
                break
            for row_key, file_id, line_no, text in rows:
                if row_key != key:
                    if key is not None:
                        yield _decode_key(key), lines
                    key, lines = row_key, []
                lines.append((file_id, line_no, text))
        if key is not None:
            yield _decode_key(key), lines

    def problems(self, cap: int = problems.DETAIL_CAP) -> Iterator[dict[str, Any]]:
        """OperationOutcome records for unusable lines: ``cap`` per file and category, then one summary each."""
        overflow: dict[tuple[int, str], int] = {}
        for file_id, line_no, status, rtype, text, total in self.connection.execute(_PROBLEMS, [cap]).fetchall():
            name = self.files[int(file_id)].name
            raw = (text or "").encode("latin-1")
            resource_type = rtype.encode("latin-1").decode("utf-8", "replace") if rtype else None
            yield problems.operation_outcome(status, problems.describe(status, resource_type, raw), f"{name}:{line_no}")
            if int(total) > cap:
                overflow[(int(file_id), str(status))] = int(total) - cap
        for (file_id, status), more in sorted(overflow.items()):
            yield problems.overflow(status, self.files[file_id].name, more)


def _decode_key(key: str) -> str:
    return key.encode("latin-1").decode("utf-8", "replace")
