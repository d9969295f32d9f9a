"""Tests for the synth sub-command's add_arguments and run."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from spasticity_cds.errors import InputError
from spasticity_cds.synth import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spasticity-cds synth")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=300, force_terminal=False, color_system=None), buffer


def test_defaults() -> None:
    args = parse("--n", "3", "--out", "x")
    assert (args.n, args.profile, args.seed, args.fmt, args.start, args.gzip) == (
        3,
        "typical",
        0,
        "bundles",
        0,
        False,
    )


def test_run_bulk_writes_and_prints_one_line(tmp_path: Path) -> None:
    args = parse(
        "--n",
        "4",
        "--profile",
        "lean",
        "--seed",
        "9",
        "--format",
        "bulk",
        "--start",
        "2",
        "--gzip",
        "--out",
        str(tmp_path),
    )
    out, buffer = console()
    assert cli.run(args, out) == 0
    lines = buffer.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Wrote 4 lean patients (") and "as bulk to" in lines[0]
    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    assert manifest["extension"]["https://spasticity-cds.org/synth"]["start"] == 2
    assert (tmp_path / "Patient.ndjson.gz").is_file()


def test_run_rejects_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("")
    out, _ = console()
    with pytest.raises(InputError, match="not a directory"):
        cli.run(parse("--n", "1", "--out", str(target)), out)


def test_run_rejects_negative_n(tmp_path: Path) -> None:
    out, _ = console()
    with pytest.raises(InputError, match="negative"):
        cli.run(parse("--n", "-2", "--out", str(tmp_path)), out)


def test_bad_choices_are_argparse_errors() -> None:
    with pytest.raises(SystemExit):
        parse("--n", "1", "--out", "x", "--profile", "huge")
    with pytest.raises(SystemExit):
        parse("--n", "1", "--out", "x", "--as-of", "yesterday")


def test_run_with_a_terminal_shows_progress_and_summary(tmp_path: Path) -> None:
    buffer = io.StringIO()
    terminal = Console(file=buffer, width=120, force_terminal=True, color_system=None)
    assert cli.run(parse("--n", "3", "--profile", "lean", "--out", str(tmp_path)), terminal) == 0
    assert "Wrote 3 lean patients" in buffer.getvalue()
    assert len((tmp_path / "bundles.ndjson").read_bytes().splitlines()) == 3
