"""The library surface every interface uses: load the knowledge base once, read a patient, evaluate, explain."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.engine.facts import Value
from spasticity_cds.errors import InputError
from spasticity_cds.fhir.parse import ParsedInput, parse_bytes
from spasticity_cds.fhir.record import PatientRecord, build_record
from spasticity_cds.knowledge import loader

PatientInput = PatientRecord | bytes | Mapping[str, Any] | list[Any]


def load_knowledge_base(path: Path | str | None = None) -> Engine:
    """The knowledge base at ``path`` (the shipped one by default), validated and compiled for evaluation."""
    if path is None:
        return _default_engine()
    return Engine(loader.load(Path(path)))


@lru_cache(maxsize=1)
def _default_engine() -> Engine:
    return Engine(loader.load())


def read_patient(data: PatientInput, *, source: str = "<input>", patient_id: str | None = None) -> PatientRecord:
    """One patient's record from bytes (JSON or NDJSON), a parsed Bundle or prefetch map, or a resource list.

    ``patient_id`` names the patient when the input may hold other Patients too (a CDS Hooks context.patientId).
    """
    if isinstance(data, PatientRecord):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return build_record(parse_bytes(bytes(data), source=source), source=source, patient_id=patient_id)
    parsed = ParsedInput()
    if not isinstance(data, Mapping | list):
        raise InputError(f"cannot read a patient from {type(data).__name__}", where=source)
    parsed.add(data if isinstance(data, list) else dict(data), source=source)
    return build_record(parsed, source=source, patient_id=patient_id)


def evaluate(
    patient: PatientInput,
    *,
    now: datetime,
    engine: Engine | None = None,
    settings: Mapping[str, Value] | None = None,
) -> dict[str, Any]:
    """The treatment plan for one patient at ``now`` (timezone-aware), as the JSON result contract.

    The result is the caller's own to change: the engine shares the parts that depend only on the knowledge base
    (citations, monitoring) between its results, so it is handed over as a copy.
    """
    active = engine or load_knowledge_base()
    moment = _checked_now(now)
    own: dict[str, Any] = orjson.loads(orjson.dumps(active.evaluate(read_patient(patient), moment, settings)))
    return own


def explain(
    patient: PatientInput,
    rule_id: str,
    *,
    now: datetime,
    engine: Engine | None = None,
    settings: Mapping[str, Value] | None = None,
) -> dict[str, Any]:
    """One rule's tree for this patient with the value of every node and the nodes that decided it."""
    active = engine or load_knowledge_base()
    return active.explain(read_patient(patient), _checked_now(now), rule_id, settings)


#: The last year an evaluation instant may fall in: titration and monitoring dates run up to years after it.
LATEST_INSTANT_YEAR = 9000


def _checked_now(now: object) -> datetime:
    """The evaluation instant as the library takes it: a timezone-aware datetime (InputError otherwise)."""
    if not isinstance(now, datetime):
        raise InputError(
            f"now must be a datetime with a UTC offset, not {type(now).__name__} (parse_instant reads text)"
        )
    if now.tzinfo is None:
        raise InputError("now needs a UTC offset (a timezone-aware datetime)")
    if now.year > LATEST_INSTANT_YEAR:
        raise InputError(f"now is past the year {LATEST_INSTANT_YEAR}")
    return now


def parse_instant(text: str, *, name: str = "now") -> datetime:
    """An evaluation instant from ISO 8601 text; the UTC offset is required (InputError otherwise)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{name} {text!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise InputError(f"{name} {text!r} needs a UTC offset, e.g. 2026-11-24T09:30:00-05:00")
    if moment.year > LATEST_INSTANT_YEAR:  # dose plans and monitoring dates are counted forward from it
        raise InputError(f"{name} {text!r} is past the year {LATEST_INSTANT_YEAR}")
    return moment


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--jurisdiction`` and ``--set NAME=VALUE`` (repeatable) for every command that evaluates, so that
    they all take settings alike; ``parse_settings`` reads them."""
    parser.add_argument("--jurisdiction", choices=("us", "uk"), help="labelling for maximum doses (default: us)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        dest="overrides",
        help="override a KB setting",
    )


def parse_settings(args: argparse.Namespace) -> dict[str, Value]:
    """The overrides ``add_settings_arguments`` options give; ``InputError`` for a ``--set`` that is not
    ``NAME=VALUE``. Names and values are checked against the knowledge base by ``Engine.settings_for``."""
    settings: dict[str, Value] = {}
    for item in args.overrides:
        name, separator, raw = item.partition("=")
        if not separator or not name:
            raise InputError(f"--set {item!r} must look like NAME=VALUE")
        settings[name.strip()] = _setting_value(raw.strip())
    if args.jurisdiction:
        settings["jurisdiction"] = args.jurisdiction
    return settings


def _setting_value(raw: str) -> Value:
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(raw.lower(), raw)


def to_json(result: Mapping[str, Any], *, pretty: bool = False) -> bytes:
    """Canonical JSON: sorted keys, UTF-8; indented when ``pretty``."""
    option = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(result, option=option)
