"""The `spasticity-cds` command: argument parsing, subcommands, and the one place errors become exit codes.

Exit codes: 0 success; 1 unexpected internal error; 2 bad input or usage; 3 knowledge-base error;
4 evaluation error; 5 feedback-store error; 130 interrupted. `evaluate` over several files reports a file it
cannot read and goes on with the others; the run then exits with the code of the first such file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from spasticity_cds import __version__
from spasticity_cds.api import (
    add_settings_arguments,
    explain,
    load_knowledge_base,
    parse_instant,
    parse_settings,
    read_patient,
    to_json,
)
from spasticity_cds.engine.display import BoundariesOf
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.engine.facts import Value
from spasticity_cds.errors import InputError, SpasticityCdsError
from spasticity_cds.interfaces.cli.render import render_explanation, render_result
from spasticity_cds.knowledge.loader import load as load_kb_files

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Subcommands implemented next to their feature; each module offers add_arguments(parser) and run(args, console).
PLUGGED_COMMANDS = {
    "synth": (
        "spasticity_cds.synth.cli",
        "Generate deterministic synthetic ALS patients (bundles or Bulk Data).",
    ),
    "serve": ("spasticity_cds.interfaces.cli.serve_command", "Run the web app and CDS Hooks service."),
    "batch": ("spasticity_cds.batch.cli", "Population worklists over a FHIR Bulk Data export."),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() stays callable in tests."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar."""
    parser = _Parser(prog="spasticity-cds", description="Clinical decision support for spasticity in ALS.")
    parser.add_argument("--version", action="version", version=f"spasticity-cds {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    evaluate = commands.add_parser("evaluate", help="Evaluate one or more patient records (FHIR JSON or NDJSON).")
    evaluate.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="FHIR Bundle, resource list, prefetch map or NDJSON; - for stdin",
    )
    _common_evaluation_options(evaluate)
    evaluate.add_argument("--format", choices=("text", "json"), default="text")
    evaluate.set_defaults(handler=_cmd_evaluate)

    explain_parser = commands.add_parser("explain", help="Show one rule's tree for a patient, with each node's value.")
    explain_parser.add_argument("file", metavar="FILE")
    explain_parser.add_argument("rule_id", metavar="RULE_ID")
    _common_evaluation_options(explain_parser)
    explain_parser.add_argument("--format", choices=("text", "json"), default="text")
    explain_parser.set_defaults(handler=_cmd_explain)

    kb = commands.add_parser("kb", help="Validate or list the knowledge base.")
    kb_commands = kb.add_subparsers(dest="kb_command", required=True, parser_class=_Parser)
    validate = kb_commands.add_parser("validate", help="Load, type-check and compile a knowledge-base folder.")
    validate.add_argument("path", nargs="?", type=Path, help="knowledge-base folder (default: the shipped one)")
    validate.set_defaults(handler=_cmd_kb_validate)
    listing = kb_commands.add_parser("list", help="List rules, drugs, citations and settings.")
    listing.add_argument("what", nargs="?", choices=("rules", "drugs", "citations", "settings"), default="rules")
    listing.add_argument("--kb", type=Path, dest="kb_path", help="knowledge-base folder (default: the shipped one)")
    listing.add_argument("--format", choices=("text", "json"), default="text", help="a table, or JSON for scripts")
    listing.set_defaults(handler=_cmd_kb_list)

    demo = commands.add_parser("demo", help="Evaluate the bundled example patients that walk the ladder.")
    demo.add_argument("--now", help="evaluation instant, ISO 8601 with offset (default: now)")
    demo.add_argument("--format", choices=("text", "json"), default="text")
    demo.set_defaults(handler=_cmd_demo)

    for name, (module_name, help_text) in PLUGGED_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=_plugged(module_name), plug_module=module_name)
        _add_plugged_arguments(sub, module_name)
    return parser


def _common_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", help="evaluation instant, ISO 8601 with offset (default: now)")
    add_settings_arguments(parser)
    parser.add_argument("--kb", type=Path, dest="kb_path", help="knowledge-base folder (default: the shipped one)")


def _add_plugged_arguments(parser: argparse.ArgumentParser, module_name: str) -> None:
    module = _optional_module(module_name)
    if module is not None:
        module.add_arguments(parser)


def _optional_module(module_name: str) -> ModuleType | None:
    try:
        return import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            return None
        raise


def _plugged(module_name: str) -> Callable[[argparse.Namespace, Console], int]:
    def run(args: argparse.Namespace, console: Console) -> int:
        module = _optional_module(module_name)
        if module is None:
            raise InputError(f"`{args.command}` is not available in this installation")
        result: int = module.run(args, console)
        return result

    return run


def parse_now(text: str | None) -> datetime:
    """The evaluation instant: the given ISO 8601 time (offset required), else the local time now."""
    if text is None:
        return datetime.now(UTC).astimezone()
    return parse_instant(text, name="--now")


def _engine(args: argparse.Namespace) -> Engine:
    return load_knowledge_base(getattr(args, "kb_path", None))


def _read_file(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if not path.exists():
        raise InputError("file not found", where=name)
    if path.is_dir():
        raise InputError("is a folder, not a file (use `spasticity-cds batch` for an export folder)", where=name)
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read ({error.strerror})", where=name) from None


#: What evaluating one file gave: its result, or the error that kept it from being read.
Outcome = dict[str, Any] | InputError


def _cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    engine = _engine(args)
    now, settings = parse_now(args.now), parse_settings(args)
    engine.settings_for(settings)  # a bad --set is the whole run's mistake: refused before any file, not per file
    outcomes = [_evaluated(engine, name, now, settings) for name in args.files]
    if len(outcomes) == 1 and isinstance(outcomes[0], InputError):
        raise outcomes[0]  # one file: its error is the run's, reported by console_entry as ever
    _emit(console, outcomes, args.format, engine.fact_boundaries(settings))
    return next((outcome.exit_code for outcome in outcomes if isinstance(outcome, InputError)), EXIT_OK)


def _evaluated(engine: Engine, name: str, now: datetime, settings: dict[str, Value]) -> Outcome:
    """One file's result, or the InputError that kept it from being read: one bad file must not cost the others."""
    try:
        record = read_patient(_read_file(name), source=name)
    except InputError as error:
        return error
    return engine.evaluate(record, now, settings)


def _emit(
    console: Console, outcomes: Sequence[Outcome], output_format: str, boundaries_of: BoundariesOf | None = None
) -> None:
    """Results in order: on stdout as JSON (one object for one file, else an array with an error entry in place of
    each bad file) or as text; each bad file's error on stderr, in its place among the text results."""
    if output_format == "json":
        for outcome in outcomes:
            if isinstance(outcome, InputError):
                _report(outcome)
        entries = [_json_entry(outcome) for outcome in outcomes]
        payload: Any = entries[0] if len(entries) == 1 else entries
        sys.stdout.buffer.write(to_json(payload, pretty=True) + b"\n")
        sys.stdout.flush()
        return
    for outcome in outcomes:
        if isinstance(outcome, InputError):
            _report(outcome)
        else:
            render_result(console, outcome, boundaries_of)


def _json_entry(outcome: Outcome) -> dict[str, Any]:
    """A result as it is, or a bad file as ``{"source", "error": {"exit_code", "message"}}``: the file as named on
    the command line, the exit code it would have given alone, and what is wrong with it."""
    if not isinstance(outcome, InputError):
        return outcome
    return {"source": outcome.where, "error": {"exit_code": outcome.exit_code, "message": outcome.message}}


def _cmd_explain(args: argparse.Namespace, console: Console) -> int:
    engine = _engine(args)
    record = read_patient(_read_file(args.file), source=args.file)
    explanation = explain(record, args.rule_id, now=parse_now(args.now), engine=engine, settings=parse_settings(args))
    if args.format == "json":
        sys.stdout.buffer.write(to_json(explanation, pretty=True) + b"\n")
        sys.stdout.flush()
    else:
        render_explanation(console, explanation, engine.fact_boundaries(parse_settings(args)))
    return EXIT_OK


def _cmd_kb_validate(args: argparse.Namespace, console: Console) -> int:
    engine = Engine(load_kb_files(args.path)) if args.path else load_knowledge_base()
    kb = engine.kb
    console.print(
        f"[green]valid[/green] knowledge base {kb.version} ({kb.digest}): {len(engine.rules)} active rules, "
        f"{len(kb.monographs)} drug monographs, {len(kb.citations)} citations, "
        f"{len(kb.valuesets.concepts)} concepts, {len(engine.fact_names)} facts"
    )
    return EXIT_OK


def _cmd_kb_list(args: argparse.Namespace, console: Console) -> int:
    kb = (Engine(load_kb_files(args.kb_path)) if args.kb_path else load_knowledge_base()).kb
    rows: list[tuple[str, ...]]
    header: tuple[str, ...]
    if args.what == "rules":
        header = ("id", "v", "kind", "severity", "agents", "file")
        rows = [
            (r.id, str(r.version), r.kind, r.severity, ",".join(r.agents), kb.rule_files[r.id])
            for r in kb.rules.values()
        ]
    elif args.what == "drugs":
        header = ("id", "name", "role", "max/day (us, uk)")
        rows = [
            (m.id, m.name, m.role, ", ".join(f"{k} {v:g} {m.max_unit}" for k, v in m.max_daily.items()))
            for m in kb.monographs.values()
        ]
    elif args.what == "citations":
        header = ("id", "status", "kind", "title")
        rows = [(c.id, c.status, c.kind, c.title) for c in kb.citations.values()]
    else:
        header = ("name", "value", "choices", "description")
        rows = [(n, str(s.value), ",".join(s.choices), s.description) for n, s in kb.settings.items()]
    if args.format == "json":
        listing = [dict(zip(header, row, strict=True)) for row in sorted(rows)]
        sys.stdout.buffer.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _table(console, header, sorted(rows))
    return EXIT_OK


def _table(console: Console, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table

    table = Table(show_lines=False)
    for index, name in enumerate(header):
        # The first column holds the ids that explain and --set take: never cut, never broken.
        widest = max((len(row[0]) for row in rows), default=0) if index == 0 else None
        table.add_column(name, no_wrap=index == 0, overflow="fold", min_width=widest)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from spasticity_cds.demo import list_demo_patients, load_demo_bundle

    engine = load_knowledge_base()
    now = parse_now(args.now)
    results = []
    for patient in list_demo_patients():
        if args.format == "text":
            console.rule(f"[bold]{patient.title}[/bold]")
            console.print(patient.summary, markup=False)
        results.append(engine.evaluate(read_patient(load_demo_bundle(patient.id), source=patient.id), now))
        if args.format == "text":
            render_result(console, results[-1], engine.fact_boundaries())
    if args.format == "json":
        _emit(console, results, "json")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    """Run one command; returns its exit code. Errors raised here are mapped by console_entry."""
    console = console or _PipeConsole()
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    handler: Callable[[argparse.Namespace, Console], int] = args.handler
    return handler(args, console)


class _PipeConsole(Console):
    """A console whose reader going away (``| head``) ends the run like a finished one, as the JSON output does;
    rich's own answer is exit 1."""

    def on_broken_pipe(self) -> None:
        """Quiet from here on, stdout pointed at /dev/null (so nothing fails at exit), then exit 0."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise BrokenPipeError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _report(error: SpasticityCdsError, errors: Console | None = None) -> None:
    """The one line an error gets on stderr: ``error: where: what``."""
    (errors or _stderr()).print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False)


def console_entry() -> None:
    """Console script: run main() and turn every error into one clear line and an exit code."""
    errors = _stderr()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` is Ctrl-C: partial output removed, "interrupted", 130
    try:
        code = main()
    except SpasticityCdsError as error:
        _report(error, errors)
        code = error.exit_code
    except KeyboardInterrupt:
        errors.print("interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = EXIT_OK
    except Exception as error:  # the last guard: a bug must still not print a traceback at a user
        errors.print(
            f"[bold red]internal error:[/bold red] {type(error).__name__}: {escape(str(error))}. "
            "Please report it with the command you ran.",
            highlight=False,
        )
        code = EXIT_INTERNAL
    sys.exit(code)
