"""The per-patient step every engine runs: parse the patient's lines, read_patient + evaluate, build Tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson

from spasticity_cds import api
from spasticity_cds.batch import policy, problems, worklist
from spasticity_cds.batch.tasks import build_task, worklist_row
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.engine.facts import Value
from spasticity_cds.errors import InputError
from spasticity_cds.fhir.model import RESOURCE_DECODER, Resource

#: A patient's outcome status: evaluated; its record could not be read or evaluated (its open Tasks are carried);
#: recorded as deceased (counted, not evaluated, no Tasks).
EVALUATED: Final = "ok"
FAILED: Final = "failed"
DECEASED: Final = "deceased"
#: One input line of a patient: (file index, 1-based line number, raw bytes).
Line = tuple[int, int, bytes]
#: One fired finding for the rule counts: (rule id, rule version, kind, severity, actionable).
Fired = tuple[str, int, str, str, bool]
#: At most this many duplicated resources are named one by one in a patient's report; the rest are counted.
DUPLICATES_NAMED: Final = 10
#: One worklist item, serialised where it was evaluated (the writer only appends the bytes): the key line
#: ``{"id", "patient", "rule_id"}``, the Task, the severity rank, the row line ``{"id", "row"}``.
Item = tuple[bytes, bytes, int, bytes]


@dataclass(slots=True)
class PatientOutcome:
    """What one patient's evaluation produced, in a form cheap to pickle between processes."""

    key: str
    status: str
    in_scope: bool | None = None
    items: list[Item] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    problems: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EvaluationSpec:
    """Everything a worker needs to evaluate patients; small and picklable."""

    now: datetime
    files: tuple[str, ...]
    kb_path: str | None = None
    #: Knowledge-base setting overrides (``--jurisdiction``, ``--set``) as (name, value) pairs: hashable.
    settings: tuple[tuple[str, Value], ...] = ()


class PatientEvaluator:
    """Holds the compiled knowledge base (loaded once per process) and evaluates one patient at a time."""

    def __init__(self, spec: EvaluationSpec, engine: Engine | None = None) -> None:
        self.spec = spec
        self.engine = engine or api.load_knowledge_base(Path(spec.kb_path) if spec.kb_path else None)
        self.authored_on = spec.now.isoformat()
        active = self.engine.settings_for(dict(spec.settings))
        #: The overrides that change a setting (``--jurisdiction us``, the default, changes none): they enter every
        #: Task key, so that items found under other settings are superseded, and the manifest.
        self.settings = {name: value for name, value in active.items() if value != self.engine.defaults[name]}
        self.boundaries_of = self.engine.fact_boundaries(active)
        manifest = self.engine.kb.manifest
        self.knowledge_base = {"name": manifest.name, "version": manifest.version, "digest": self.engine.kb.digest}

    def location(self, line: Line) -> str:
        """``file:line`` of an input line."""
        return f"{self.spec.files[line[0]]}:{line[1]}"

    def evaluate(self, key: str, lines: Sequence[Line]) -> PatientOutcome:
        """Evaluate one patient from its input lines; bad lines and bad records are reported, never raised."""
        outcome = PatientOutcome(key=key, status=EVALUATED)
        resources: list[Resource | dict[str, Any]] = []
        read_lines: list[Line] = []
        for line in lines:
            raw = line[2]
            try:
                document = decode_line(raw)
            except orjson.JSONDecodeError as error:
                outcome.problems.append(
                    _dump(
                        problems.operation_outcome(problems.MALFORMED, f"not valid JSON ({error})", self.location(line))
                    )
                )
                continue
            if isinstance(document, Resource | dict):
                resources.append(document)
                read_lines.append(line)
        where = f"{key} ({self.location(lines[0])})" if lines else key
        try:
            record = api.read_patient(resources, source=where)
            # The record counts the copies it collapsed; only then are the lines keyed to name them.
            duplicated = _copies(resources, read_lines, record.duplicated) if record.duplicated else {}
            if duplicated:
                report = self._duplicates(duplicated)
                outcome.problems.append(_dump(problems.operation_outcome(problems.DUPLICATE, report, where)))
            if policy.is_deceased(record, self.spec.now):
                outcome.status = DECEASED
                return outcome
            result = self.engine.evaluate(record, self.spec.now, self.settings)
        except InputError as error:
            outcome.status = FAILED
            outcome.problems.append(_dump(problems.operation_outcome(problems.PATIENT_INPUT, error.message, where)))
            return outcome
        except Exception as error:  # an evaluator bug must not stop the population run; it is reported
            outcome.status = FAILED
            message = f"evaluation failed: {type(error).__name__}: {error}"
            outcome.problems.append(_dump(problems.operation_outcome(problems.EVALUATION, message, where)))
            return outcome
        outcome.in_scope = bool(result.get("in_scope"))
        patient_ref = str(result["patient"])
        for finding in result["findings"]:
            actionable = policy.is_actionable(finding)
            outcome.fired.append(
                (
                    str(finding["rule_id"]),
                    int(finding["rule_version"]),
                    str(finding["kind"]),
                    str(finding["severity"]),
                    actionable,
                )
            )
            if actionable:
                outcome.items.append(self._item(finding, patient_ref, record.patient))
        return outcome

    def _duplicates(self, duplicated: Mapping[str, Sequence[Line]]) -> str:
        """What a patient's duplicate report says: how many copies were collapsed, and which (where each copy
        stands, and whether their text differs: then only one of them was read)."""
        extra = sum(len(found) - 1 for found in duplicated.values())
        named = []
        for resource_key, found in list(duplicated.items())[:DUPLICATES_NAMED]:
            differ = " (copies differ)" if len({line[2] for line in found}) > 1 else ""
            named.append(f"{resource_key} at {', '.join(self.location(line) for line in found)}{differ}")
        more = len(duplicated) - len(named)
        tail = f"; and {more} more resources" if more else ""
        return (
            f"{extra} duplicate resources collapsed, one copy of each kept (the later meta.lastUpdated, else the "
            f"one whose JSON sorts last): {'; '.join(named)}{tail}"
        )

    def _item(self, finding: Mapping[str, Any], patient_ref: str, patient: Mapping[str, Any]) -> Item:
        task = build_task(
            finding,
            patient_ref=patient_ref,
            patient=patient,
            knowledge_base=self.knowledge_base,
            authored_on=self.authored_on,
            settings=self.settings,
        )
        row = worklist.render(worklist_row(task, finding, self.boundaries_of))
        return (
            _dump({"id": task["id"], "patient": patient_ref, "rule_id": finding["rule_id"]}),
            _dump(task),
            policy.SEVERITY_RANK.get(str(finding["severity"]), 9),
            _dump({"id": task["id"], "row": row}),
        )


def _copies(
    resources: Sequence[Resource | dict[str, Any]], lines: Sequence[Line], duplicated: AbstractSet[str]
) -> dict[str, list[Line]]:
    """The lines of every ``Type/id`` the record collapsed (``duplicated``), in input order. Only the lines whose id
    one of them carries are keyed: a patient has hundreds of lines and a few copies."""
    ids = {resource_key.partition("/")[2] for resource_key in duplicated}
    found: dict[str, list[Line]] = {}
    for document, line in zip(resources, lines, strict=True):
        if isinstance(document, Resource):
            resource_type, resource_id = document.resource_type, document.id
        else:
            resource_type, resource_id = document.get("resourceType"), document.get("id")
        if isinstance(resource_id, str) and resource_id in ids:
            resource_key = f"{resource_type}/{resource_id}"
            if resource_key in duplicated:
                found.setdefault(resource_key, []).append(line)
    return {resource_key: copies for resource_key, copies in found.items() if len(copies) > 1}


def decode_line(raw: bytes) -> Any:
    """One line straight into the FHIR layer's typed view when it has the usual shapes (``fhir.parse`` does the
    same for one resource), else parsed JSON, which ``read_patient`` fits field by field."""
    try:
        return RESOURCE_DECODER.decode(raw)
    except (msgspec.MsgspecError, ValueError, RecursionError):  # odd shapes; invalid UTF-8 is a ValueError
        return problems.loads(raw)


def _dump(value: Mapping[str, Any]) -> bytes:
    return orjson.dumps(value)


_EVALUATORS: dict[EvaluationSpec, PatientEvaluator] = {}


def cached_evaluator(spec: EvaluationSpec, engine: Engine | None = None) -> PatientEvaluator:
    """One evaluator (one knowledge-base load, or ``engine`` when the caller has it) per process and spec, reused by
    every task the process runs."""
    if spec not in _EVALUATORS:
        _EVALUATORS[spec] = PatientEvaluator(spec, engine)
    return _EVALUATORS[spec]
