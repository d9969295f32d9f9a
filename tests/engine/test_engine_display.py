"""How numbers read: to sensible figures, but never rounded across or onto a number the rules compare them with."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from spasticity_cds.api import load_knowledge_base
from spasticity_cds.cds_hooks.cards import CardBuilder, CardContext
from spasticity_cds.engine.facts import number_text
from spasticity_cds.interfaces.cli.render import render_result
from spasticity_cds.interfaces.web.plan_view import fact_text

from .records import LOINC, NOW, fvc, obs, record, systolic

ENGINE = load_knowledge_base()


@pytest.mark.parametrize(
    ("value", "limits", "text"),
    [
        (51.004216, (45.0,), "51"),  # 6.8 kPa: three significant figures, far from the threshold
        (39.753286, (45.0,), "39.8"),
        (49.96, (50.0,), "49.96"),  # not 50 beside "above 50" or "below 50"
        (50.04, (50.0,), "50.04"),
        (50.0, (50.0,), "50"),  # on the threshold only when the value is
        (29.999, (15.0, 30.0, 60.0), "29.999"),
        (45.001424, (45.0,), "45.001"),
        (3.0004, (1.0, 3.0, 5.0), "3.0004"),
        (2.96, (1.0, 3.0, 5.0), "2.96"),
        (0.5768, (), "0.577"),
        (1234.56, (), "1235"),
        (12.0004, (), "12"),
        (-0.0004, (0.0,), "-0.0004"),
    ],
)
def test_a_number_is_rounded_no_further_than_its_thresholds_allow(
    value: float, limits: tuple[float, ...], text: str
) -> None:
    assert number_text(value, limits) == text
    shown = float(text)
    for limit in limits:
        assert (shown > limit) - (shown < limit) == (value > limit) - (value < limit)


def test_with_thresholds_unknown_the_guarded_default_stands() -> None:
    assert number_text(51.004216) == "51.0042"
    assert number_text(29.999) == "29.999"
    assert number_text(54.83721) == "54.84"


def test_the_engine_knows_what_each_fact_is_compared_with_under_the_settings() -> None:
    boundaries = ENGINE.fact_boundaries()
    assert boundaries("obs.paco2") == (45.0,)
    assert boundaries("obs.systolic-bp") == (90.0,)
    assert ENGINE.fact_boundaries({"low_systolic_mmHg": 100})("obs.systolic-bp") == (100.0,)
    egfr = boundaries("obs.egfr")
    assert egfr is not None and {25.0, 30.0, 50.0, 80.0} <= set(egfr)  # the rules' and the renal bands' edges
    assert boundaries("med.baclofen.daily_dose") is None  # compared with the patient's own ceiling
    assert boundaries("obs.fvc-volume") is None


def _paco2_kpa(value: float) -> dict[str, Any]:
    return obs(LOINC, "2019-8", value, unit="kPa")


def _summary(result: dict[str, Any], rule_id: str) -> str:
    return str(next(f["summary"] for f in result["findings"] if f["id"] == rule_id))


def test_a_converted_value_reads_to_sensible_figures_in_a_summary_and_stays_raw_in_the_result() -> None:
    result = ENGINE.evaluate(record(fvc(90), _paco2_kpa(6.8)), NOW)
    assert "Arterial PaCO2 51 mmHg" in _summary(result, "RESP-STATUS")
    fact = next(f for f in result["findings"] if f["id"] == "RESP-STATUS")["facts"]
    assert next(f["value"] for f in fact if f["name"] == "obs.paco2") == pytest.approx(51.004216)


def test_a_value_just_above_a_threshold_never_reads_as_the_threshold() -> None:
    result = ENGINE.evaluate(record(fvc(90), _paco2_kpa(6.0)), NOW)  # 45.0037 mmHg: compromise (>= 45)
    summary = _summary(result, "RESP-STATUS")
    assert "Arterial PaCO2 45.004 mmHg" in summary


def test_the_surfaces_show_a_fact_as_the_engine_does() -> None:
    result = ENGINE.evaluate(record(fvc(90), _paco2_kpa(6.8), systolic(89.996)), NOW)
    facts = [f for finding in result["findings"] for f in finding["facts"]]
    paco2 = next(f for f in facts if f["name"] == "obs.paco2")
    boundaries = ENGINE.fact_boundaries(result["settings"])
    assert fact_text(paco2, boundaries).startswith("51 mmHg")
    assert fact_text(paco2).startswith("51.0042 mmHg")  # a page without the engine's numbers: the guarded default
    out = io.StringIO()
    render_result(Console(file=out, width=200, color_system=None), result, boundaries)
    assert "obs.paco2 = 51 mmHg" in out.getvalue()
    sbp = next(f for f in facts if f["name"] == "obs.systolic-bp")  # below the setting low_systolic_mmHg (90)
    assert fact_text(sbp, boundaries).startswith("89.996 mmHg")
    assert "resting 89.996 mmHg" in _summary(result, "ALPHA2-HYPOTENSION")


def test_a_card_shows_a_fact_as_the_engine_does() -> None:
    result = ENGINE.evaluate(record(fvc(90), _paco2_kpa(6.8)), NOW)
    ctx = CardContext(
        service_id="als-spasticity-review",
        hook="patient-view",
        hook_instance="h1",
        patient_id="pt",
        user_id=None,
        base_url="https://cds.example.org",
        smart_launch_url=None,
        now=NOW,
    )
    cards, _ = CardBuilder(ENGINE).build(result, ctx)
    details = "\n".join(card["detail"] for card in cards)
    assert "51 mmHg" in details and "51.0042" not in details
