"""The command line: outputs, the disclaimer, and one clear line with a defined exit code for every bad input."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from spasticity_cds import api
from spasticity_cds.interfaces.cli import render
from spasticity_cds.interfaces.cli.main import main

NOW = "2026-11-24T09:30:00-05:00"


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1958-03-02", "gender": "female"}
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in (patient, *resources)]}


ALS = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
}
TIZANIDINE_AND_CIPRO = [
    {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "57258"}]
        },
    },
    {
        "resourceType": "MedicationRequest",
        "id": "m2",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "Ciprofloxacin 500 mg tablets"},
    },
]


@pytest.fixture
def patient_file(tmp_path: Path) -> Path:
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, *TIZANIDINE_AND_CIPRO)))
    return path


def _run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    code = main(argv, console=Console(file=buffer, width=120, color_system=None))
    return code, buffer.getvalue()


def test_text_output_shows_the_plan_citations_and_the_decision_support_note(patient_file: Path) -> None:
    code, out = _run(["evaluate", str(patient_file), "--now", NOW])
    assert code == 0
    assert "Tizanidine" in out and "contraindicated" in out
    assert "TIZ-CYP1A2-STRONG" in out
    assert "[C-primary]" in out
    assert "by its text 'Ciprofloxacin 500 mg tablets'" in out
    assert out.rstrip().endswith("╯")
    assert "Decision support for a clinician" in out


def test_text_output_shows_the_basis_of_every_option_and_the_record_entries_used(patient_file: Path) -> None:
    code, out = _run(["evaluate", str(patient_file), "--now", NOW])
    assert code == 0
    details = out.split("Options in detail")[1].split("Findings")[0]
    assert 'kedlaya-medscape-2021 [C-primary] "Baclofen ... is the drug of choice"' in details  # an option's source
    assert "Start: Start 5 mg three times daily" in details and "Steps: 2026-11-24 5 mg x3 (15 mg/day)" in details
    assert "Because TIZ-CYP1A2-STRONG v" in details
    assert "MedicationRequest/m2" in out.split("Findings")[1]  # the record entry a finding rests on


def test_the_header_says_when_findings_rest_on_out_of_date_results(tmp_path: Path) -> None:
    old_tone = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://spasticity-cds.org/fhir/CodeSystem/local", "code": "relies-on-tone"}]},
        "effectiveDateTime": "2025-11-01",
        "valueBoolean": True,
    }
    path = tmp_path / "old.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, old_tone)))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0
    assert "Confidence: reduced" in out and "findings rest on out-of-date results" in out


BACLOFEN_80_EGFR_60 = [
    {
        "resourceType": "MedicationRequest",
        "id": "bac",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1292"}]
        },
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 20, "unit": "mg"}}],
            }
        ],
    },
    {
        "resourceType": "Observation",
        "id": "gfr",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20",
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "valueQuantity": {"value": 60, "unit": "mL/min/{1.73_m2}"},
    },
]


def test_text_output_reduces_a_dose_above_the_ceiling_gradually_and_cites_it(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, *BACLOFEN_80_EGFR_60)))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0
    table = out.split("Options in detail")[0]
    assert "stepwise to 45 mg/day" in table and "start 5 mg" not in table
    details = re.split(r"\n +\d+\. ", out.split("Baclofen (oral): caution")[1])[0]
    assert "Where the patient stands: Taken at 80 mg/day, above the ceiling of 53.6 mg/day" in details
    assert "From the record: MedicationRequest/bac" in details
    assert "Start (a new patient): Start 5 mg three times daily" in details
    assert "Steps:" not in details  # never the new-patient titration from today
    assert "Reduction steps: 2026-11-24 20 mg x3 (60 mg/day); 2026-12-01 15 mg x3 (45 mg/day)" in details
    assert "Pace: One titration step down every 7 days" in details
    assert 'project-design-proposal [UNCONFIRMED] "dose_reduction_step_days setting' in details
    assert "Taper: Never stop abruptly" in details
    assert "Kidneys (eGFR <= 80: reduce): CrCl 50-80 mL/min" in details


def _baclofen_60_egfr_20() -> list[dict[str, Any]]:
    """Baclofen 20 mg three times a day at eGFR 20: ruled out critically, withdrawn without a date."""
    baclofen, kidney = (dict(resource) for resource in BACLOFEN_80_EGFR_60)
    baclofen["dosageInstruction"] = [
        {
            "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 20, "unit": "mg"}}],
        }
    ]
    kidney["valueQuantity"] = {"value": 20, "unit": "mL/min/{1.73_m2}"}
    return [baclofen, kidney]


def _dantrolene_150_alt_130() -> list[dict[str, Any]]:
    """Dantrolene 50 mg three times a day with ALT 130 U/L (upper limit 40): stopped today, as the label says."""
    dantrolene = dict(BACLOFEN_80_EGFR_60[0])
    dantrolene["medicationCodeableConcept"] = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "3105"}]
    }
    dantrolene["dosageInstruction"] = [
        {
            "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 50, "unit": "mg"}}],
        }
    ]
    liver = dict(BACLOFEN_80_EGFR_60[1])
    liver["code"] = {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]}
    liver["valueQuantity"] = {"value": 130, "unit": "U/L"}
    liver["referenceRange"] = [{"high": {"value": 40, "unit": "U/L"}}]
    return [dantrolene, liver]


def test_text_output_withdraws_a_drug_taken_but_ruled_out_critically_undated_and_cited(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, *_baclofen_60_egfr_20())))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0
    assert "stop on" not in out.split("Options in detail")[0]
    details = out.split("Baclofen (oral): avoid")[1].split("Monitoring:")[0]
    assert "Where the patient stands: Taken at 60 mg/day, but ruled out for this patient" in details
    assert "Start" not in details and "Titration" not in details and "Withdrawal steps" not in details
    assert "Withdrawal: A critical finding rules Baclofen (oral) out" in " ".join(details.split())
    assert "Taper: Never stop abruptly" in details and "Pace:" not in details
    assert "Ruled out by: BACLOFEN-KIDNEY-FAILURE-AVOID v3" in details


def test_text_output_says_stop_at_once_where_the_sources_do(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, *_dantrolene_150_alt_130())))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0
    details = out.split("Dantrolene: avoid")[1].split("Monitoring:")[0]
    assert "Withdrawal: Stop Dantrolene today rather than taper it" in details
    assert "Withdrawal steps" not in details and "Pace:" not in details
    assert "Stop at once: The label advises discontinuing dantrolene" in details
    assert 'dantrium-label [C-primary] "Warnings: liver monitoring"' in details


def _tables(out: str) -> str:
    """The options tables as printed: one, "Options, ranked", or one per group (what to act on first, then the
    ranking), between the patient's standing and the options' details."""
    return out.split("Where the patient stands:")[1].split("\n", 1)[1].split("Options in detail", maxsplit=1)[0]


def _column(out: str, heading: str) -> list[tuple[str, str]]:
    """The options tables as printed (``out`` whole, or the tables alone): per row, its rank and its text in the
    column headed ``heading``, the lines the cell wrapped or folded onto joined with no space (compare texts with
    their whitespace removed)."""
    lines = (_tables(out) if "Where the patient stands:" in out else out).splitlines()
    rows: list[tuple[str, str]] = []
    index = -1
    for line in lines:
        if line.startswith("┃") and heading in line:
            index = [cell.strip() for cell in line.split("┃")].index(heading)
        if not line.startswith("│"):
            continue
        assert line.rstrip().endswith("│"), f"a table line cut at the terminal's edge: {line!r}"
        cells = line.split("│")
        if cells[1].strip():
            rows.append((cells[1].strip(), ""))
        rank, text = rows[-1]
        rows[-1] = (rank, text + "".join(cells[index].split()))
    return rows


DOSE_FIXTURES = {
    "reduction to the ceiling": BACLOFEN_80_EGFR_60,
    "undated withdrawal": _baclofen_60_egfr_20(),
    "stop today": _dantrolene_150_alt_130(),
    "dose steps": TIZANIDINE_AND_CIPRO,
}


DOSE_WORDS = {
    "reduction to the ceiling": ["now 80 mg/day", "reduce stepwise to 45 mg/day by 2026-12-01", "ceiling 53.6 mg/day"],
    "undated withdrawal": ["now 60 mg/day", "taper (not dated)"],
    "stop today": ["now 150 mg/day", "stop today (2026-11-24), no taper"],
    "dose steps": ["start 5 mg x3/day", "start 25 mg x1/day", "ceiling 400 mg/day", "taper (not dated)"],
}


def _doses_at_80_columns(path: Path) -> dict[str, str]:
    """Per rank, the Dose column of the options table printed at 80 columns, after checking the whole table: no cut
    (no ellipsis, no line past 80), each option's name and status whole in its row (the status on a line of its
    own), and each dose, whitespace aside, as the renderer wrote it."""
    buffer = io.StringIO()
    assert main(["evaluate", str(path), "--now", NOW], console=Console(file=buffer, width=80, color_system=None)) == 0
    out = buffer.getvalue()
    table = _tables(out)
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80
    result = api.evaluate(path.read_bytes(), now=datetime.fromisoformat(NOW))
    doses = dict(_column(out, "Dose"))
    names = dict(_column(out, "Option, status"))  # the status goes under the name at 80 columns
    assert sorted(doses, key=int) == [str(option["rank"]) for option in result["options"]]
    for option in result["options"]:
        rank = str(option["rank"])
        assert names[rank].startswith("".join(f"{option['name']}{option['status']}".split()))
        assert re.search(rf"│ {option['status']} +│", table)
        assert doses[rank] == "".join(render._dose_cell(option).split()), option["agent"]
    return doses


@pytest.mark.parametrize("name", DOSE_FIXTURES)
def test_the_dose_cell_wraps_whole_on_an_80_column_terminal(name: str, tmp_path: Path) -> None:
    """The Dose cell is clinical text: at 80 columns it wraps (rich's default cut it to "mg/da…"), and every word of
    it is in the table, in its option's row."""
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, *DOSE_FIXTURES[name])))
    doses = _doses_at_80_columns(path)
    for words in DOSE_WORDS[name]:  # as a clinician reads them, checked by hand once
        assert any("".join(words.split()) in dose for dose in doses.values()), f"{words!r} not in the Dose column"


def test_every_demo_patients_doses_are_whole_at_80_columns() -> None:
    demos = Path(str(resources.files("spasticity_cds.demo") / "data"))
    patients = sorted(path for path in demos.glob("*.json") if path.name != "index.json")
    assert patients
    for path in patients:
        _doses_at_80_columns(path)


DEMOS = sorted(
    path
    for path in Path(str(resources.files("spasticity_cds.demo") / "data")).glob("*.json")
    if path.name != "index.json"
)
NARROW_FIXTURES = {**{f"demo {path.stem}": path for path in DEMOS}, **{name: name for name in DOSE_FIXTURES}}


def _cell_words(option: dict[str, Any]) -> set[str]:
    """Every word the options table may print for ``option``, whole: its name, status, whether taken or ordered,
    role, dose, and the rules that set its status (or "ladder default")."""
    words = f"{option['name']} {option['status']} taking it now ordered or proposed {option['role']}"
    words += f" {render._dose_cell(option)} why: {' '.join(option['because']) or 'ladder default'}"
    return set(words.split())


@pytest.mark.parametrize("width", [60, 79, 80])  # 79: the widest with the rules under the dose
@pytest.mark.parametrize("name", NARROW_FIXTURES)
def test_the_options_table_keeps_every_word_whole_down_to_60_columns(name: str, width: int, tmp_path: Path) -> None:
    """Below 80 columns the Why column kept its 29 characters and the Dose column was left a few (4 at 60): its words
    folded mid-word ("2026-" / "11-27"). From 80 down to 60 every word of the table is printed whole on a line of
    its own row, the rules under the dose below 80, and no line is wider than the terminal."""
    fixture = NARROW_FIXTURES[name]
    path = fixture if isinstance(fixture, Path) else tmp_path / "patient.json"
    if not isinstance(fixture, Path):
        path.write_bytes(orjson.dumps(_bundle(ALS, *DOSE_FIXTURES[fixture])))
    buffer = io.StringIO()
    terminal = Console(file=buffer, width=width, color_system=None)
    assert main(["evaluate", str(path), "--now", NOW], console=terminal) == 0
    out = buffer.getvalue()
    tables = _tables(out)
    assert "…" not in tables and max(len(line) for line in tables.splitlines()) <= width
    result = api.evaluate(path.read_bytes(), now=datetime.fromisoformat(NOW))
    words = {str(option["rank"]): _cell_words(option) for option in result["options"]}
    rank = ""
    for line in tables.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        rank = cells[0] or rank
        for cell in cells[1:]:
            assert set(cell.split()) <= words[rank], f"a word broken at {width} columns in row {rank}: {cell!r}"
    dose_heading = "Dose" if width >= render.WHY_COLUMN_FROM else render.NARROW_DOSE_HEADING
    doses = dict(_column(out, dose_heading))
    for option in result["options"]:
        why = "".join(option["because"]) or "ladderdefault"
        dose = "".join(render._dose_cell(option).split())
        expected = dose if width >= render.WHY_COLUMN_FROM else f"{dose}why:{why}"
        assert doses[str(option["rank"])] == expected, option["agent"]


NIV_DIAZEPAM = Path(str(resources.files("spasticity_cds.demo") / "data")) / "niv-diazepam-respiratory-gate.json"


@pytest.mark.parametrize("width", [120, 80])
def test_a_drug_ordered_but_ruled_out_heads_the_options_as_not_to_start(width: int) -> None:
    """The NIV demo patient's draft diazepam order, ruled out by the respiratory gate (the engine ranks it 10th of
    11): its own table comes first, then the ranking; its details come first too, saying not to start it."""
    buffer = io.StringIO()
    argv = ["evaluate", str(NIV_DIAZEPAM), "--now", NOW]
    assert main(argv, console=Console(file=buffer, width=width, color_system=None)) == 0
    out = buffer.getvalue()
    tables = _tables(out)
    titles = [line.strip() for line in tables.splitlines() if line.strip() and line.strip()[0] not in "┏┃┡│└"]
    assert titles == ["Options", "Ordered or proposed: do not start", "The other options, in ranked order"]
    ordered = tables.split("The other options, in ranked order")[0]
    assert [rank for rank, _ in _column(ordered, "Dose")] == ["10"]
    heading, status = ("Option", "") if width >= render.STATUS_COLUMN_FROM else ("Option, status", "contraindicated")
    assert dict(_column(out, heading))["10"].startswith(f"Diazepam{status}orderedorproposed")
    assert dict(_column(out, "Dose"))["10"] == "ordered2mg/day"  # the order's dose, not one taken now
    details = out.split("Options in detail")[1]
    assert details.index(" 10. Diazepam: contraindicated") < details.index(" 1. Baclofen (oral): current")
    diazepam = " ".join(details.split(" 1. Baclofen (oral)")[0].split())
    assert "(ordered or proposed)" in diazepam
    said = "Do not start: ordered or proposed for this patient, and ruled out. From the record: MedicationRequest/med-6"
    assert said in diazepam
    assert "Because BENZO-RESP-GATE v3: Benzodiazepines are contraindicated here" in diazepam


def test_a_drug_not_to_start_gives_its_monitoring_and_stopping_only_if_started() -> None:
    """As the plan page folds them: the ordered diazepam's monitoring and taper advice follow the reasons not to start
    it, under "If it is started despite this", indented; baclofen, taken, keeps its own as before."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=400, color_system=None)
    assert main(["evaluate", str(NIV_DIAZEPAM), "--now", NOW], console=console) == 0
    details = buffer.getvalue().split("Options in detail")[1]
    diazepam = details.split(" 1. Baclofen (oral)")[0].splitlines()
    heading = diazepam.index("    If it is started despite this:")
    assert diazepam[heading - 2].startswith("    Because BENZO-RESP-GATE v3: ")
    assert diazepam[heading + 1].startswith("      Monitoring: Breathing and sedation")
    assert diazepam[heading + 2].startswith("        Sources: valium-label")
    assert diazepam[heading + 3].startswith("      Stopping: Physical dependence - taper")
    assert diazepam[heading + 4].startswith("        Sources: valium-label")
    assert len(diazepam) == heading + 5
    baclofen = details.split(" 1. Baclofen (oral)")[1].split(" 2. ")[0].splitlines()
    assert "If it is started despite this" not in "\n".join(baclofen)
    assert any(line.startswith("    Monitoring: ") for line in baclofen)
    assert any(line.startswith("    Stopping: ") for line in baclofen)


def test_a_drug_taken_to_withdraw_heads_the_options_in_the_terminal(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS, *_baclofen_60_egfr_20())))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0
    tables = _tables(out)
    assert tables.index("Taken now: stop or reduce") < tables.index("The other options, in ranked order")
    taken = tables.split("The other options, in ranked order")[0]
    [(rank, name)] = _column(taken, "Option")
    assert name.startswith("Baclofen(oral)takingitnow")  # the engine's rank kept, as in the details
    assert re.match(rf"\s*{rank}\. Baclofen \(oral\): avoid  \(taking it now\)", out.split("Options in detail")[1])


def test_without_anything_to_act_on_the_options_are_one_ranked_table(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(orjson.dumps(_bundle(ALS)))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0
    tables = _tables(out)
    assert tables.lstrip().startswith("Options, ranked")
    assert "Taken now" not in tables and "do not start" not in tables and "in ranked order" not in tables


def test_control_characters_from_a_record_never_reach_the_terminal(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    cipro = dict(TIZANIDINE_AND_CIPRO[1], id="m2\x1b]0;PWNED\x07\x1b[2J")  # an escape sequence in an id
    path.write_bytes(orjson.dumps(_bundle(ALS, TIZANIDINE_AND_CIPRO[0], cipro)))
    code, out = _run(["evaluate", str(path), "--now", NOW])
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "m2\ufffd]0;PWNED\ufffd\ufffd[2J" in out


def test_json_output_is_the_result_contract(patient_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(patient_file), "--now", NOW, "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["patient"] == "Patient/p1"
    assert result["evaluated_at"] == NOW
    assert set(result["knowledge_base"]) >= {"version", "digest"}
    tizanidine = next(o for o in result["options"] if o["agent"] == "tizanidine")
    assert tizanidine["status"] == "contraindicated"
    finding = next(f for f in result["findings"] if f["rule_id"] == "TIZ-CYP1A2-STRONG")
    assert finding["severity"] == "critical"
    assert "MedicationRequest/m2" in finding["evidence"]


def test_several_files_give_a_json_array(patient_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(patient_file), str(patient_file), "--now", NOW, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


@pytest.fixture
def two_good_and_one_bad(tmp_path: Path, patient_file: Path) -> list[str]:
    """A good file (Patient/p1), a file that is not JSON, and another good file (Patient/p2), in that order."""
    second = tmp_path / "second.json"
    second.write_bytes(patient_file.read_bytes().replace(b'"p1"', b'"p2"').replace(b"Patient/p1", b"Patient/p2"))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"resourceType": "Bundle", ')
    return [str(patient_file), str(bad), str(second)]


def test_a_bad_file_among_several_is_an_error_entry_in_its_place_in_json(
    two_good_and_one_bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", *two_good_and_one_bad, "--now", NOW, "--format", "json"])
    captured = capsys.readouterr()
    first, bad, second = json.loads(captured.out)
    assert code == 2
    assert (first["patient"], second["patient"]) == ("Patient/p1", "Patient/p2")
    assert bad == {
        "source": two_good_and_one_bad[1],
        "error": {"exit_code": 2, "message": bad["error"]["message"]},
    }
    assert bad["error"]["message"].startswith("not valid JSON")
    assert f"error: {two_good_and_one_bad[1]}: not valid JSON" in captured.err
    assert "Traceback" not in captured.err


def test_a_bad_file_among_several_is_an_error_line_in_its_place_in_text(two_good_and_one_bad: list[str]) -> None:
    program = "from spasticity_cds.interfaces.cli.main import console_entry; console_entry()"
    merged = subprocess.run(  # stderr into the same pipe as stdout, to see where the error line falls
        [sys.executable, "-c", program, "evaluate", *two_good_and_one_bad, "--now", NOW],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
    )
    out = merged.stdout.decode()
    assert merged.returncode == 2
    error_line = f"error: {two_good_and_one_bad[1]}: not valid JSON"
    assert out.count(error_line) == 1 and "Traceback" not in out
    assert out.index("Patient/p1") < out.index(error_line) < out.index("Patient/p2")
    assert out.count("Spasticity treatment plan") == 2


def test_every_file_bad_still_refuses_a_bad_setting_first(tmp_path: Path) -> None:
    from spasticity_cds.errors import InputError

    missing = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    with pytest.raises(InputError, match="did you mean 'jurisdiction'"):
        _run(["evaluate", *missing, "--set", "jurisdicton=uk", "--now", NOW])


def test_jurisdiction_and_settings_reach_the_engine(patient_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", str(patient_file), "--now", NOW, "--format", "json", "--jurisdiction", "uk"]
    assert main([*argv, "--set", "baclofen_severe_ckd_policy=reduce"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings == {
        "baclofen_severe_ckd_policy": "reduce",
        "jurisdiction": "uk",
        "renal_fraction_ceiling": "scaled-maximum",
    }


def test_explain_shows_the_tree_and_the_deciding_node(patient_file: Path) -> None:
    code, out = _run(["explain", str(patient_file), "TIZ-CYP1A2-STRONG", "--now", NOW])
    assert code == 0
    assert "TIZ-CYP1A2-STRONG v1" in out and "true" in out
    assert "Decided by:" in out


def test_explain_names_the_nearest_rule_when_misspelt(patient_file: Path) -> None:
    from spasticity_cds.errors import KnowledgeBaseError

    with pytest.raises(KnowledgeBaseError, match="did you mean 'TIZ-CYP1A2-STRONG'"):
        _run(["explain", str(patient_file), "TIZ-CYP1A2-STRNG", "--now", NOW])


def test_kb_validate_and_list() -> None:
    code, out = _run(["kb", "validate"])
    assert code == 0 and "valid" in out
    code, out = _run(["kb", "list", "rules"])
    assert code == 0 and "BENZO-RESP-GATE" in out
    code, out = _run(["kb", "list", "settings"])
    assert code == 0 and "jurisdiction" in out


def test_kb_list_keeps_ids_whole_on_a_narrow_terminal_and_gives_json() -> None:
    from spasticity_cds.api import load_knowledge_base

    buffer = io.StringIO()
    assert main(["kb", "list", "rules"], console=Console(file=buffer, width=80, color_system=None)) == 0
    assert all(rule_id in buffer.getvalue() for rule_id in load_knowledge_base().kb.rules)
    completed = _console_entry("kb", "list", "settings", "--format", "json")
    listing = orjson.loads(completed.stdout)
    assert (
        completed.returncode == 0
        and {"name": "jurisdiction"}.items() <= next(item for item in listing if item["name"] == "jurisdiction").items()
    )


def _console_entry(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    program = "from spasticity_cds.interfaces.cli.main import console_entry; console_entry()"
    return subprocess.run(
        [sys.executable, "-c", program, *argv], input=stdin, capture_output=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("argv", "content", "exit_code", "message"),
    [
        (["evaluate", "{missing}"], None, 2, "file not found"),
        (["evaluate", "{file}"], b'{"resourceType": "Bundle", ', 2, "not valid JSON"),
        (["evaluate", "{file}"], b'{"hello": "world"}', 2, "not FHIR"),
        (
            ["evaluate", "{file}"],
            b'{\n "resourceType": "Patient",\n "id": "p\xff"\n}',
            2,
            "input.json: not valid UTF-8 (byte 0xff at line 3, column 10)",
        ),
        (["evaluate", "{file}"], b'{"resourceType": "Bundle", "entry": []}', 2, "no Patient"),
        (["evaluate", "{file}", "--now", "yesterday"], b"{}", 2, "not an ISO 8601"),
        (["evaluate", "{file}", "--now", "2026-11-24T09:30:00"], b"{}", 2, "needs a UTC offset"),
        (["evaluate", "{file}", "--set", "nonsense"], b"{}", 2, "NAME=VALUE"),
        (["evaluate", "{file}", "--set", "jurisdicton=uk", "--now", NOW], None, 2, "did you mean 'jurisdiction'"),
        (["evaluate", "{file}", "--set", "severe_mas_grade=abc", "--now", NOW], None, 2, "a number from 0 up"),
        (["kb", "validate", "{folder}"], None, 3, "manifest.yaml"),
        (["frobnicate"], None, 2, "invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_an_exit_code(
    tmp_path: Path, patient_file: Path, argv: list[str], content: bytes | None, exit_code: int, message: str
) -> None:
    target = tmp_path / "input.json"
    if content is not None:
        target.write_bytes(content)
    else:
        target = patient_file
    (tmp_path / "empty-kb").mkdir()
    replacements = {
        "{missing}": str(tmp_path / "nope.json"),
        "{file}": str(target),
        "{folder}": str(tmp_path / "empty-kb"),
    }
    completed = _console_entry(*[replacements.get(a, a) for a in argv])
    stderr = completed.stderr.decode()
    assert completed.returncode == exit_code, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 3
    assert completed.stdout == b""


def test_stdin_is_read_with_a_dash(patient_file: Path) -> None:
    completed = _console_entry("evaluate", "-", "--now", NOW, "--format", "json", stdin=patient_file.read_bytes())
    assert completed.returncode == 0, completed.stderr.decode()
    assert json.loads(completed.stdout)["patient"] == "Patient/p1"


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_reader_that_goes_away_ends_the_run_quietly_with_exit_0(output: str) -> None:
    """`spasticity-cds demo | head -1`: the pipe closes early; no error, exit 0 in both formats."""
    command = [sys.executable, "-c", "from spasticity_cds.interfaces.cli.main import console_entry; console_entry()"]
    with subprocess.Popen(
        [*command, "demo", "--format", output], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as run:
        assert run.stdout is not None and run.stderr is not None
        run.stdout.read(10)
        run.stdout.close()  # the reader is gone before the plan is written out
        errors = run.stderr.read()
        assert run.wait(timeout=60) == 0 and b"error" not in errors


def test_a_knowledge_base_file_that_is_not_text_is_a_knowledge_base_error(tmp_path: Path) -> None:
    import shutil

    from spasticity_cds.knowledge.loader import default_root

    folder = tmp_path / "kb"
    shutil.copytree(default_root(), folder)
    (folder / "settings.yaml").write_bytes(b"\xf9\xfa binary")
    completed = _console_entry("kb", "validate", str(folder))
    assert completed.returncode == 3 and b"settings.yaml: not UTF-8 text" in completed.stderr


def test_a_synthetic_world_dated_where_dates_cannot_reach_is_a_usage_error(tmp_path: Path) -> None:
    completed = _console_entry("synth", "--n", "1", "--as-of", "0001-01-01", "--out", str(tmp_path / "out"))
    assert completed.returncode == 2 and b"the year must be from 1900 to 9000" in completed.stderr


VIGNETTES = Path(__file__).resolve().parents[2] / "vignettes"


def test_text_output_marks_drugs_taken_and_one_taken_outside_the_spasticity_ladder() -> None:
    bundle = VIGNETTES / "63-palliative-diazepam-niv" / "bundle.json"
    code, out = _run(["evaluate", str(bundle), "--now", NOW])
    assert code == 0
    table = re.sub(r"[│\s]+", " ", out.split("Options in detail")[0])  # the cell wraps across table rows
    assert "Diazepam contraindicated now 4 mg/day BENZO-RESP-GATE taking it now, outside the spasticity ladder" in table
    details = out.split("Options in detail")[1].split("Findings")[0]
    assert "Outside the spasticity ladder: Taken now for palliative breathlessness or anxiety" in details
    assert "MedicationRequest/med-dzp" in details


def test_text_output_shows_a_converted_value_to_sensible_figures() -> None:
    bundle = VIGNETTES / "19-reduced-reserve-diazepam" / "bundle.json"
    code, out = _run(["evaluate", str(bundle), "--now", NOW])
    assert code == 0
    assert "obs.paco2 = 39.8 mmHg" in out and "39.7533" not in out


def test_text_output_says_two_withdrawals_are_alternatives() -> None:
    bundle = VIGNETTES / "15-tizanidine-plus-clonidine" / "bundle.json"
    code, out = _run(["evaluate", str(bundle), "--now", NOW])
    assert code == 0
    details = re.sub(r"\s+", " ", out.split("Options in detail")[1].split("Findings")[0])
    assert "Alternative: Tizanidine is ruled out only because Clonidine is taken too" in details
    assert "withdraw Clonidine or Tizanidine, not both." in details
