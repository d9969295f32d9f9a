"""Stream synthetic cohorts to disk, one patient at a time, as NDJSON bundles or a Bulk Data export."""

from __future__ import annotations

import gzip as gzip_module
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Literal, Protocol

import orjson

from spasticity_cds.errors import InputError
from spasticity_cds.synth import codes
from spasticity_cds.synth.patient import AS_OF, generate_patient
from spasticity_cds.synth.profiles import PROFILES
from spasticity_cds.synth.resources import Resource, instant

Format = Literal["bundles", "bulk"]
FORMATS: tuple[Format, ...] = ("bundles", "bulk")


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(slots=True)
class CohortSummary:
    """What ``write_cohort`` wrote: patients, resources per type (duplicates included) and files."""

    out_dir: Path
    fmt: Format
    profile: str
    seed: int
    start: int
    patients: int = 0
    resource_counts: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def total_resources(self) -> int:
        """All resources written (duplicate lines counted)."""
        return sum(self.resource_counts.values())

    def count(self, resources: list[Resource]) -> None:
        """Add one patient's resources to the tallies."""
        self.patients += 1
        for resource in resources:
            kind = resource["resourceType"]
            self.resource_counts[kind] = self.resource_counts.get(kind, 0) + 1


def _open(stack: ExitStack[bool | None], path: Path, gz: bool) -> _Sink:
    """Open ``path`` for binary writing; gzip output is reproducible (no timestamp, no file name)."""
    raw = stack.enter_context(path.open("wb"))
    if not gz:
        return raw
    return stack.enter_context(gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0))


def _suffix(gz: bool) -> str:
    return ".ndjson.gz" if gz else ".ndjson"


def bundle_of(resources: list[Resource], seed: int, index: int, as_of: date) -> Resource:
    """Wrap one patient's resources in a FHIR collection Bundle."""
    entries = [{"fullUrl": f"{codes.FHIR_BASE}{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
    return {
        "resourceType": "Bundle",
        "id": f"b-{seed}-{index}",
        "type": "collection",
        "timestamp": instant(as_of, time(0, 0)),
        "entry": entries,
    }


def manifest_of(summary: CohortSummary, n: int, as_of: date, gz: bool) -> dict[str, object]:
    """A Bulk Data ``$export`` completion manifest for the files written."""
    types = sorted(summary.resource_counts)
    return {
        "transactionTime": instant(as_of, time(0, 0)),
        "request": f"{codes.FHIR_BASE}$export?_type={','.join(types)}",
        "requiresAccessToken": False,
        "output": [{"type": t, "url": f"{t}{_suffix(gz)}", "count": summary.resource_counts[t]} for t in types],
        "error": [],
        "extension": {
            "https://spasticity-cds.org/synth": {
                "profile": summary.profile,
                "seed": summary.seed,
                "start": summary.start,
                "n": n,
                "asOf": as_of.isoformat(),
            }
        },
    }


def _check(out_dir: Path, n: int, profile: str, fmt: str, start: int) -> None:
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose 'bundles' or 'bulk'")
    if n < 0 or start < 0:
        raise InputError(f"--n and --start must not be negative (got n={n}, start={start})")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a directory", where=str(out_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory: {exc.strerror or exc}", where=str(out_dir)) from exc


def write_cohort(
    out_dir: Path,
    *,
    n: int,
    profile: str,
    seed: int,
    fmt: Format,
    start: int = 0,
    gzip: bool = False,
    progress: Callable[[int], None] | None = None,
    as_of: date = AS_OF,
) -> CohortSummary:
    """Write patients ``start`` .. ``start + n - 1`` to ``out_dir`` with constant memory.

    ``progress`` is called after each patient with the number of patients written so far.
    """
    out_dir = Path(out_dir)
    _check(out_dir, n, profile, fmt, start)
    summary = CohortSummary(out_dir=out_dir, fmt=fmt, profile=profile, seed=seed, start=start)
    try:
        if fmt == "bundles":
            _write_bundles(summary, n, gzip, as_of, progress)
        else:
            _write_bulk(summary, n, gzip, as_of, progress)
    except OSError as exc:
        raise InputError(f"cannot write output: {exc.strerror or exc}", where=str(out_dir)) from exc
    return summary


def _write_bundles(
    summary: CohortSummary, n: int, gz: bool, as_of: date, progress: Callable[[int], None] | None
) -> None:
    path = summary.out_dir / f"bundles{_suffix(gz)}"
    with ExitStack() as stack:
        out = _open(stack, path, gz)
        for index in range(summary.start, summary.start + n):
            resources = generate_patient(summary.seed, index, summary.profile, as_of)
            out.write(orjson.dumps(bundle_of(resources, summary.seed, index, as_of)) + b"\n")
            summary.count(resources)
            if progress is not None:
                progress(summary.patients)
    summary.files.append(path)


def _write_bulk(summary: CohortSummary, n: int, gz: bool, as_of: date, progress: Callable[[int], None] | None) -> None:
    manifest = summary.out_dir / "manifest.json"
    manifest.unlink(missing_ok=True)
    with ExitStack() as stack:
        files: dict[str, _Sink] = {}
        for index in range(summary.start, summary.start + n):
            resources = generate_patient(summary.seed, index, summary.profile, as_of)
            lines: dict[str, list[bytes]] = {}
            for resource in resources:
                lines.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
            for kind, chunk in lines.items():
                if kind not in files:
                    files[kind] = _open(stack, summary.out_dir / f"{kind}{_suffix(gz)}", gz)
                files[kind].write(b"\n".join(chunk) + b"\n")
            summary.count(resources)
            if progress is not None:
                progress(summary.patients)
    summary.files.extend(summary.out_dir / f"{kind}{_suffix(gz)}" for kind in sorted(files))
    manifest.write_bytes(orjson.dumps(manifest_of(summary, n, as_of, gz), option=orjson.OPT_INDENT_2) + b"\n")
    summary.files.append(manifest)
