"""Worklist rows rendered where a patient is evaluated: CSV and HTML cells all but the ``new`` flag and the link."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping
from typing import Any

CSV_COLUMNS = (
    "severity", "priority", "patient", "name", "mrn", "rule", "version", "kind", "action",
    "summary", "values", "missing", "focus", "task", "new", "link",
)  # fmt: skip
HTML_COLUMNS = (
    ("patient", "Patient"), ("name", "Name"), ("mrn", "MRN"), ("rule", "Rule"), ("kind", "Kind"),
    ("action", "Action"), ("summary", "Summary"), ("values", "Key values"), ("missing", "Missing data"),
    ("new", "New"),
)  # fmt: skip
#: The columns only the end of a run knows (the last ones in both tables).
LATE_CSV_COLUMNS = ("new", "link")


def csv_cell(value: Any) -> str:
    """A CSV cell that spreadsheets will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render(row: Mapping[str, Any]) -> dict[str, str]:
    """The row's severity and patient, its CSV cells up to ``task`` and its HTML cells from ``name`` to
    ``missing``, each escaped as the finished worklists need."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(row.get(column, "")) for column in CSV_COLUMNS[: -len(LATE_CSV_COLUMNS)]])
    # dir="auto" isolates each cell's direction: a name written right to left, or holding a bidirectional control
    # character, cannot reorder the cells around it.
    cells = "".join(
        f'<td dir="auto">{html.escape(str(row.get(column, "")), quote=True)}</td>' for column, _ in HTML_COLUMNS[1:-1]
    )
    return {
        "severity": str(row["severity"]),
        "patient": str(row["patient"]),
        "csv": buffer.getvalue().removesuffix("\r\n"),
        "html": cells,
    }


def html_row(rendered: Mapping[str, str], new: str, link: str) -> str:
    """One ``<tr>`` of the HTML worklist: the linked patient, the rendered cells, the ``new`` flag."""
    patient = html.escape(rendered["patient"], quote=True)
    return (
        f'<tr><td><a href="{html.escape(link, quote=True)}">{patient}</a></td>{rendered["html"]}'
        f"<td>{html.escape(new, quote=True)}</td></tr>\n"
    )
