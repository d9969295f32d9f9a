"""Bundled example patients that walk the treatment ladder.

Each demo bundle is a copy of a golden clinical vignette's ``bundle.json`` (``tests/vignettes/``); a test keeps
the copies identical. ``data/index.json`` lists them in ladder order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import orjson

from spasticity_cds.errors import InputError

__all__ = ["DemoPatient", "list_demo_patients", "load_demo_bundle"]

_SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True, slots=True)
class DemoPatient:
    """One bundled example: its id (the bundle's file stem), a title and a one-line summary."""

    id: str
    title: str
    summary: str


def _data() -> Traversable:
    return resources.files("spasticity_cds.demo") / "data"


def list_demo_patients() -> list[DemoPatient]:
    """The demo patients in ladder order, as ``data/index.json`` lists them."""
    entries = orjson.loads(_data().joinpath("index.json").read_bytes())
    return [DemoPatient(id=str(e["id"]), title=str(e["title"]), summary=str(e["summary"])) for e in entries]


def load_demo_bundle(demo_id: str) -> bytes:
    """The FHIR Bundle of one demo patient as JSON bytes; an unknown id is an :class:`InputError`."""
    known = [patient.id for patient in list_demo_patients()]
    if demo_id not in known or not _SAFE_ID.match(demo_id):
        raise InputError(f"no demo patient {demo_id!r}; choose one of {', '.join(known)}", where="demo")
    return _data().joinpath(f"{demo_id}.json").read_bytes()
