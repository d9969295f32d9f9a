"""Find the NDJSON files of a run: a folder of ``.ndjson``/``.ndjson.gz`` files or a Bulk Data ``$export`` manifest."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import orjson

from spasticity_cds.batch.download import is_remote
from spasticity_cds.errors import BatchError

if TYPE_CHECKING:
    from spasticity_cds.batch.download import Downloader

#: NDJSON file names (``.jsonl`` is the same format under another name); other names, ``.NDJSON`` too, are skipped
#: and listed as such.
SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
#: A file of one JSON document in a folder, plain or gzipped: a Bundle (Synthea writes one per patient) or a single
#: resource.
BUNDLE_SUFFIXES = (".json", ".json.gz")
#: The export log the SMART Bulk Data client writes beside the files it downloads (events, not resources).
CLIENT_LOG = "log.ndjson"
CLIENT_LOG_REASON = "the Bulk Data client's export log"
OTHER_FILE_REASON = "not an NDJSON (.ndjson, .jsonl) or Bundle (.json) file, optionally .gz"
FOLDER_REASON = "a folder: the input folder is read without its subfolders"
#: Bytes read at a time, from the end, looking for the start of a file's last line.
TAIL_STEP = 64 * 1024


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file (NDJSON, or a Bundle when ``bundle``): its path on disk and the name reports use (manifest url
    or name in the folder)."""

    path: Path
    name: str
    declared_type: str | None = None
    declared_count: int | None = None
    bundle: bool = False


@dataclass(frozen=True, slots=True)
class InputSet:
    """The files of one run and what the export says about them."""

    source: Path
    kind: str
    files: tuple[InputFile, ...]
    transaction_time: str | None
    request: str | None
    #: Entries of an input folder that were not read, each with the reason.
    skipped: tuple[tuple[str, str], ...] = ()
    #: The export manifest's ``error[]`` files: the server says some of the export failed, so the input is
    #: incomplete and what is absent from it says nothing.
    export_errors: tuple[str, ...] = ()
    #: Files an input folder's manifest lists that the folder does not hold: the copy of the export is incomplete.
    missing: tuple[str, ...] = ()


def discover(source: Path, downloader: Downloader | None = None) -> InputSet:
    """The input files named by ``source`` (a folder or a manifest, whose remote files ``downloader`` fetches);
    raises ``BatchError`` when unusable."""
    if source.is_dir():
        manifest = source / "manifest.json"
        classified = [(path, _skip_reason(path)) for path in sorted(source.iterdir()) if path != manifest]
        files = [path for path, reason in classified if reason is None]
        if not files:
            raise BatchError("no .ndjson(.gz) or Bundle .json(.gz) files in the folder", where=str(source))
        info = _read_manifest(manifest) if manifest.is_file() else {}
        _refuse_incremental(manifest, info)
        listed = _listed_by_name(info)
        present = {path.name for path, _ in classified}
        # Only a manifest that names some of the folder's files describes it; files renamed on download match none.
        missing = sorted(listed.keys() - present) if listed.keys() & present else []
        return InputSet(
            source=source,
            kind="folder",
            files=tuple(_folder_file(path, listed.get(path.name, {})) for path in files),
            transaction_time=_text(info.get("transactionTime")),
            request=_text(info.get("request")),
            skipped=tuple((path.name, reason) for path, reason in classified if reason is not None),
            export_errors=_export_errors(info),
            missing=tuple(missing),
        )
    if source.is_file():
        info = _read_manifest(source)
        _refuse_incremental(source, info)
        return InputSet(
            source=source,
            kind="manifest",
            files=tuple(_manifest_files(source, info, downloader)),
            transaction_time=_text(info.get("transactionTime")),
            request=_text(info.get("request")),
            export_errors=_export_errors(info),
        )
    raise BatchError("no such file or folder", where=str(source))


def _listed_by_name(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An input folder's manifest ``output`` entries by the file name their url ends in; a name two entries share
    is left out, as the folder's file cannot be matched to one of them."""
    output = info.get("output")
    entries = [entry for entry in output if isinstance(entry, dict)] if isinstance(output, list) else []
    names = [unquote(urlparse(str(entry.get("url", ""))).path).rsplit("/", 1)[-1] for entry in entries]
    counts = Counter(names)
    return {name: entry for name, entry in zip(names, entries, strict=True) if name and counts[name] == 1}


def _folder_file(path: Path, entry: dict[str, Any]) -> InputFile:
    """A file of an input folder, with the type and count its manifest entry declares, if any."""
    declared_type, declared_count = _declared(entry)
    return InputFile(path, path.name, declared_type, declared_count, bundle=_is_bundle_name(path.name))


def _declared(entry: dict[str, Any]) -> tuple[str | None, int | None]:
    """The resource type and count a manifest ``output`` entry declares (a count must be a whole number)."""
    count = entry.get("count")
    return _text(entry.get("type")), count if isinstance(count, int) and not isinstance(count, bool) else None


def unterminated_last_line(path: Path) -> bytes | None:
    """A plain file's last line when the file does not end with a line end (a copy or export cut mid-line ends
    so); None when it does, or is empty. Only the last line is read, from the end."""
    with path.open("rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        chunks: list[bytes] = []
        while position > 0:
            step = min(TAIL_STEP, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            if not chunks and chunk.endswith(b"\n"):
                return None
            newline = chunk.rfind(b"\n")
            chunks.append(chunk[newline + 1 :])
            if newline >= 0:
                break
    return b"".join(reversed(chunks)) or None


def _refuse_incremental(manifest: Path, info: dict[str, Any]) -> None:
    """An export made with ``_since`` holds only what changed since then (and a ``deleted`` list): read as a
    population, every patient it leaves out would look gone and their open items would be cancelled."""
    request = info.get("request")
    incremental = isinstance(request, str) and "_since=" in request
    if incremental or info.get("deleted"):
        raise BatchError(
            "this is an incremental export (made with _since, or with a deleted list): it holds only what changed, "
            "not the population; run the batch on a full export",
            where=str(manifest),
        )


def _export_errors(info: dict[str, Any]) -> tuple[str, ...]:
    """The manifest's ``error[]`` entries, by url (or position when an entry has none)."""
    errors = info.get("error")
    if not isinstance(errors, list):
        return ()
    return tuple(
        entry["url"] if isinstance(entry, dict) and isinstance(entry.get("url"), str) else f"error[{index}]"
        for index, entry in enumerate(errors)
    )


def _is_input_name(name: str) -> bool:
    return name.endswith(SUFFIXES) or _is_bundle_name(name)


def _is_bundle_name(name: str) -> bool:
    return name.endswith(BUNDLE_SUFFIXES) and name != "manifest.json"


def _skip_reason(path: Path) -> str | None:
    """Why a folder entry is not read (every one is named in the run's manifest), or None when it is read."""
    if path.is_dir():
        return FOLDER_REASON
    if path.name == CLIENT_LOG:
        return CLIENT_LOG_REASON
    return None if path.is_file() and _is_input_name(path.name) else OTHER_FILE_REASON


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as error:
        raise BatchError(f"cannot read the manifest: {error.strerror or error}", where=str(path)) from None
    except orjson.JSONDecodeError as error:
        raise BatchError(f"the manifest is not valid JSON ({error})", where=str(path)) from None
    if not isinstance(data, dict):
        raise BatchError("the manifest is not a JSON object", where=str(path))
    return data


def _manifest_files(manifest: Path, info: dict[str, Any], downloader: Downloader | None) -> list[InputFile]:
    output = info.get("output")
    if not isinstance(output, list):
        raise BatchError("the manifest has no output list", where=str(manifest))
    for index, entry in enumerate(output):
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise BatchError("an output entry has no url", where=f"{manifest}: output[{index}]")
    if not output:
        raise BatchError("the manifest lists no output files", where=str(manifest))
    requires_token = info.get("requiresAccessToken") is True
    files: list[InputFile] = []
    for index, entry in enumerate(output):
        where = f"{manifest}: output[{index}]"
        url: str = entry["url"]
        if not is_remote(url):
            path = _local_path(manifest.parent, url, where)
        elif downloader is None:
            raise BatchError(f"{url!r} is a remote URL; download the export first", where=where)
        else:
            path = downloader.fetch(url, requires_token, where)
        if not path.is_file():
            raise BatchError(f"file {url!r} is missing", where=where)
        files.append(InputFile(path, url, *_declared(entry)))
    return files


def _local_path(base: Path, url: str, where: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise BatchError(f"unsupported URL scheme in {url!r}", where=where)
    path = Path(unquote(url))  # a relative URL: "sub%20dir/Patient.ndjson" names "sub dir/Patient.ndjson"
    return path if path.is_absolute() else base / path
