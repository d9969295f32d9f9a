"""Load the knowledge-base files, decode them into strict structs and check every cross-reference."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from spasticity_cds.errors import KnowledgeBaseError
from spasticity_cds.knowledge.schema import (
    Citation,
    CitationRef,
    Definition,
    Ladder,
    Manifest,
    Monograph,
    Rule,
    RuleFile,
    Setting,
    Strict,
    ValueSets,
)

T = TypeVar("T")
# libyaml's safe loader when PyYAML was built with it (about ten times faster at start-up), else the Python one.
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


class _Citations(Strict, kw_only=True, frozen=True):
    citations: list[Citation]


class _Settings(Strict, kw_only=True, frozen=True):
    settings: dict[str, Setting]


class _Definitions(Strict, kw_only=True, frozen=True):
    definitions: dict[str, Definition]


@dataclass(frozen=True)
class KnowledgeBase:
    """Every knowledge-base file, decoded and cross-checked; immutable once loaded."""

    manifest: Manifest
    citations: dict[str, Citation]
    valuesets: ValueSets
    settings: dict[str, Setting]
    definitions: dict[str, Definition]
    ladder: Ladder
    monographs: dict[str, Monograph]
    rules: dict[str, Rule]
    rule_files: dict[str, str]
    digest: str
    root: str
    files: tuple[str, ...] = field(default=())

    @property
    def version(self) -> str:
        return self.manifest.version


def default_root() -> Path:
    """The knowledge base shipped inside the package."""
    return Path(str(resources.files("spasticity_cds.knowledge") / "data"))


def load(root: Path | None = None) -> KnowledgeBase:
    """Read, decode and cross-check the knowledge base at ``root`` (the shipped one by default)."""
    root = root or default_root()
    if not root.is_dir():
        raise KnowledgeBaseError("knowledge-base folder not found", where=str(root))
    files = sorted(path for path in root.rglob("*.yaml") if path.is_file())
    digest = _digest(root, files)
    manifest = _decode(root, "manifest.yaml", Manifest)
    citations = {c.id: c for c in _decode(root, "citations.yaml", _Citations).citations}
    drug_files = sorted(root.glob("drugs/*.yaml"))
    monographs = {m.id: m for m in (_decode(root, _rel(root, path), Monograph) for path in drug_files)}
    rules: dict[str, Rule] = {}
    rule_files: dict[str, str] = {}
    for path in sorted(root.glob("rules/*.yaml")):
        for rule in _decode(root, _rel(root, path), RuleFile).rules:
            if rule.id in rules:
                raise KnowledgeBaseError(f"rule id {rule.id!r} is defined twice", where=_rel(root, path))
            rules[rule.id] = rule
            rule_files[rule.id] = _rel(root, path)
    kb = KnowledgeBase(
        manifest=manifest,
        citations=citations,
        valuesets=_decode(root, "valuesets.yaml", ValueSets),
        settings=_decode(root, "settings.yaml", _Settings).settings,
        definitions=_decode(root, "definitions.yaml", _Definitions).definitions,
        ladder=_decode(root, "ladder.yaml", Ladder),
        monographs=monographs,
        rules=rules,
        rule_files=rule_files,
        digest=digest,
        root=str(root),
        files=tuple(_rel(root, path) for path in files),
    )
    _check(kb)
    return kb


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _digest(root: Path, files: Iterable[Path]) -> str:
    hasher = hashlib.sha256()
    for path in files:
        hasher.update(_rel(root, path).encode())
        hasher.update(b"\0")
        hasher.update(path.read_bytes())
        hasher.update(b"\0")
    return "sha256:" + hasher.hexdigest()


def _decode(root: Path, where: str, shape: type[T]) -> T:
    """Decode one file (``where`` is its path relative to the knowledge-base root, as errors name it)."""
    path = root / where
    if not path.is_file():
        raise KnowledgeBaseError("file is missing", where=where)
    try:
        raw: Any = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except yaml.YAMLError as error:
        raise KnowledgeBaseError(f"not valid YAML: {error}", where=where) from None
    except UnicodeDecodeError:
        raise KnowledgeBaseError("not UTF-8 text", where=where) from None
    try:
        return msgspec.convert(raw, shape, strict=True)
    except msgspec.ValidationError as error:
        raise KnowledgeBaseError(_explain_validation(str(error), shape), where=where) from None


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`(?: - at `([^`]+)`)?")


def _explain_validation(message: str, shape: type[Any]) -> str:
    match = _UNKNOWN_FIELD.search(message)
    if not match:
        return message
    name, path = match.group(1), match.group(2) or "$"
    return f"unknown field {name!r} at {path}" + did_you_mean(name, _all_field_names(shape))


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest valid name to a misspelt one, if any is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """The end of an error message naming a misspelt name's closest valid one ("; did you mean 'x'?"), or ""."""
    hint = suggest(name, candidates)
    return f"; did you mean {hint!r}?" if hint else ""


def _all_field_names(shape: type[Any], seen: set[type[Any]] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if shape in seen or not (isinstance(shape, type) and issubclass(shape, msgspec.Struct)):
        return set()
    seen.add(shape)
    names: set[str] = set()
    for info in msgspec.structs.fields(shape):
        names.add(info.encode_name)
        for inner in _types_within(info.type):
            names |= _all_field_names(inner, seen)
    return names


def _types_within(annotation: Any) -> Iterator[type[Any]]:
    if isinstance(annotation, type):
        yield annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        yield from _types_within(argument)


def _check(kb: KnowledgeBase) -> None:
    if not SEMVER.match(kb.manifest.version):
        raise KnowledgeBaseError(f"version {kb.manifest.version!r} is not semver", where="manifest.yaml")
    agents = {step.agent for step in kb.ladder.steps}
    concepts = {concept.id for concept in kb.valuesets.concepts}
    for concept in kb.valuesets.concepts:
        window = concept.validity_setting
        setting = kb.settings.get(window) if window is not None else None
        if window is not None and (setting is None or not isinstance(setting.value, int | float)):
            raise KnowledgeBaseError(
                f"unknown setting {window!r} (a number of days) for concept {concept.id!r}"
                + did_you_mean(window, kb.settings),
                where="valuesets.yaml",
            )
        if concept.noted_for is not None and concept.noted_for not in concepts:
            raise KnowledgeBaseError(
                f"noted_for names unknown concept {concept.noted_for!r} (concept {concept.id!r})"
                + did_you_mean(concept.noted_for, concepts),
                where="valuesets.yaml",
            )
    for path, ref in _citation_refs(kb):
        if ref.id not in kb.citations:
            raise KnowledgeBaseError(f"unknown citation {ref.id!r}" + did_you_mean(ref.id, kb.citations), where=path)
    for monograph in kb.monographs.values():
        if monograph.concept not in concepts:
            raise KnowledgeBaseError(
                f"monograph concept {monograph.concept!r} is not in valuesets.yaml",
                where=f"drugs/{monograph.id}",
            )
    for monograph in kb.monographs.values():
        _check_stop_at_once(kb, monograph)
        _check_monitoring_jurisdictions(kb, monograph)
    for rule in kb.rules.values():
        _check_rule(kb, rule, agents)
    for scope_rule in kb.manifest.scope_rules:
        if scope_rule not in kb.rules:
            raise KnowledgeBaseError(f"scope rule {scope_rule!r} is not defined", where="manifest.yaml")


def _check_stop_at_once(kb: KnowledgeBase, monograph: Monograph) -> None:
    """Each ``stop_at_once`` entry is cited and names rules that rule this agent out."""
    for entry in monograph.stop_at_once:
        where = f"drugs/{monograph.id}.yaml: stop_at_once"
        if not entry.citations:
            raise KnowledgeBaseError("a stop-at-once statement needs a citation", where=where)
        for rule_id in entry.rules:
            rule = kb.rules.get(rule_id)
            if rule is None:
                raise KnowledgeBaseError(f"unknown rule {rule_id!r}" + did_you_mean(rule_id, kb.rules), where=where)
            if not rule.rules_out(monograph.id):
                raise KnowledgeBaseError(f"rule {rule_id!r} does not rule {monograph.id} out", where=where)


def _check_monitoring_jurisdictions(kb: KnowledgeBase, monograph: Monograph) -> None:
    """A monitoring item limited to some jurisdictions names readings of the ``jurisdiction`` setting."""
    setting = kb.settings.get("jurisdiction")
    choices = [str(choice) for choice in setting.choices] if setting is not None else []
    for index, item in enumerate(monograph.monitoring):
        for name in item.jurisdictions:
            if name not in choices:
                hint = name.lower() if name.lower() in choices else suggest(name, choices)
                raise KnowledgeBaseError(
                    f"unknown jurisdiction {name!r} (the jurisdiction setting's choices: {', '.join(choices)})"
                    + (f"; did you mean {hint!r}?" if hint else ""),
                    where=f"drugs/{monograph.id}.yaml: monitoring[{index}]",
                )


def _check_rule(kb: KnowledgeBase, rule: Rule, agents: set[str]) -> None:
    where = f"{kb.rule_files[rule.id]}: rule {rule.id}"
    for agent in rule.agents:
        if agent not in agents:
            raise KnowledgeBaseError(f"unknown agent {agent!r}" + did_you_mean(agent, agents), where=where)
    for agent in [*rule.effects, *rule.effects_if_unknown]:
        if agent not in rule.agents:
            raise KnowledgeBaseError(f"effect on {agent!r}, which the rule does not name in agents", where=where)
    versions = [change.version for change in rule.changes]
    if not versions or max(versions) != rule.version:
        raise KnowledgeBaseError(f"version {rule.version} has no entry in its change log", where=where)
    if rule.kind == "contraindication" and "critical" in (rule.severity, rule.escalate_if_current):
        statuses = {kb.citations[ref.id].status for ref in rule.citations if ref.id in kb.citations}
        if "C-primary" not in statuses:
            raise KnowledgeBaseError("a hard stop (critical contraindication) needs a C-primary citation", where=where)
    if not rule.citations:
        raise KnowledgeBaseError("every rule needs at least one citation", where=where)
    if rule.quiet_when is not None and rule.quiet_when not in kb.definitions:
        raise KnowledgeBaseError(
            f"quiet_when names unknown definition {rule.quiet_when!r}" + did_you_mean(rule.quiet_when, kb.definitions),
            where=where,
        )
    if rule.exclusive_with is not None:
        _check_exclusive(rule, agents, where)
    if rule.conflict and rule.conflict.setting and rule.conflict.setting not in kb.settings:
        raise KnowledgeBaseError(f"conflict setting {rule.conflict.setting!r} is not defined", where=where)


def _check_exclusive(rule: Rule, agents: set[str], where: str) -> None:
    """``exclusive_with`` names another ladder agent, and the rule rules each of its own agents out."""
    other = rule.exclusive_with
    if other not in agents:
        raise KnowledgeBaseError(
            f"exclusive_with names unknown agent {other!r}" + did_you_mean(str(other), agents), where=where
        )
    if other in rule.agents:
        raise KnowledgeBaseError(f"exclusive_with names {other!r}, one of the rule's own agents", where=where)
    if not rule.agents or not all(rule.rules_out(agent) for agent in rule.agents):
        raise KnowledgeBaseError("exclusive_with needs a rule that rules each of its agents out", where=where)


def _citation_refs(kb: KnowledgeBase) -> Iterator[tuple[str, CitationRef]]:
    yield from (("manifest.yaml", ref) for ref in kb.manifest.disclaimer.citations)
    for statement in kb.manifest.evidence_gaps:
        yield from (("manifest.yaml: evidence_gaps", ref) for ref in statement.citations)
    for rule in kb.rules.values():
        yield from ((f"{kb.rule_files[rule.id]}: rule {rule.id}", ref) for ref in rule.citations)
    for step in kb.ladder.steps:
        yield from ((f"ladder.yaml: {step.agent}", ref) for ref in step.citations)
    for name, setting in kb.settings.items():
        yield from ((f"settings.yaml: {name}", ref) for ref in setting.citations)
    for name, definition in kb.definitions.items():
        yield from ((f"definitions.yaml: {name}", ref) for ref in definition.citations)
    yield from (("valuesets.yaml: egfr_equation", ref) for ref in kb.valuesets.egfr_equation.citations)
    for unit in kb.valuesets.units:
        yield from ((f"valuesets.yaml: units.{unit.quantity}", ref) for ref in unit.citations)
    for concept in kb.valuesets.concepts:
        for coding in concept.codings:
            yield from ((f"valuesets.yaml: {concept.id} {coding.code}", ref) for ref in coding.citations)
    for monograph in kb.monographs.values():
        yield from ((f"drugs/{monograph.id}.yaml", ref) for ref in _monograph_refs(monograph))


def _monograph_refs(monograph: Monograph) -> Iterator[CitationRef]:
    statements = [
        monograph.mechanism,
        monograph.start,
        monograph.titration,
        monograph.max_basis,
        monograph.hepatic,
        monograph.taper,
        monograph.off_label_in_als,
        *monograph.contraindications,
        *monograph.cautions,
    ]
    for statement in statements:
        if statement is not None:
            yield from statement.citations
    for band in monograph.renal_bands:
        yield from band.citations
    for item in monograph.monitoring:
        yield from item.citations
    for formulation in monograph.formulations:
        yield from formulation.citations
    for entry in monograph.stop_at_once:
        yield from entry.citations
