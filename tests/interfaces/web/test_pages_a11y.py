"""Basic accessibility of every page: one h1, headings in order, a label for every field, palette contrast."""

from __future__ import annotations

import re
import sys
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds.interfaces.web.rendering import STATIC_DIR

PAGES = [
    "/",
    "/patients",
    "/patients/demo/ada",
    "/kb",
    "/kb/rules/TIZ-LIVER-3X",
    "/kb/drugs/baclofen",
    "/kb/citations",
    "/kb/versions",
    "/kb/codes",
    "/reports/feedback",
    "/smart/launch",
    "/patients/demo/nobody",
    "/patients/p-17",
]


class Outline(HTMLParser):
    """Headings, form fields and labels of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[int] = []
        self.fields: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.ids: list[str] = []
        self.lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "html":
            self.lang = found.get("lang")
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if tag == "label" and found.get("for"):
            self.label_for.add(str(found["for"]))
        if tag in ("input", "select", "textarea") and found.get("type") not in ("hidden", "submit"):
            self.fields.append(found)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    client = support.PageClient(support.make_app(tmp_path_factory.mktemp("a11y")))
    out = {path: client.get(path, auth=support.REPORT_AUTH).text for path in PAGES}
    token = client.csrf("/patients")
    out["manual-errors"] = client.post("/patients/manual", data={"age": "x", "csrf_token": token}).text
    out["upload-error"] = client.post(
        "/patients/upload", data={"csrf_token": token}, files={"bundle": ("b.json", b"{", "application/json")}
    ).text
    out["thanks"] = client.post(
        "/feedback",
        data={"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "answer-page", "answered": "yes"},
    ).text
    return out


@pytest.mark.parametrize("name", [*PAGES, "manual-errors", "upload-error", "thanks"])
def test_headings_labels_and_ids(pages: dict[str, str], name: str) -> None:
    outline = Outline()
    outline.feed(pages[name])
    assert outline.lang == "en"
    assert outline.headings.count(1) == 1 and outline.headings[0] == 1
    for before, after in zip(outline.headings, outline.headings[1:], strict=False):
        assert after <= before + 1, f"heading jumps from h{before} to h{after} on {name}"
    for field in outline.fields:
        assert field.get("id") in outline.label_for, f"field {field.get('name')} has no label on {name}"
    duplicates = {i for i in outline.ids if outline.ids.count(i) > 1}
    assert not duplicates, f"duplicate ids on {name}: {sorted(duplicates)[:5]}"


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, two: str) -> float:
    high, low = sorted((_luminance(one), _luminance(two)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_palette_meets_wcag_aa_contrast() -> None:
    css = (STATIC_DIR / "app.css").read_text("utf-8")
    palette = dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-fA-F]{6});", css))
    white = "#ffffff"
    on_white = ["text", "muted", "link", "alert-text", "ok-text", "threshold", "focus"]
    badges = [name for name in palette if name.startswith(("s-", "ev-"))] + ["accent"]
    for name in on_white:
        assert contrast(palette[name], white) >= 4.5, name
    for name in badges:
        assert contrast(white, palette[name]) >= 4.5, name
    assert contrast(palette["text"], palette["panel"]) >= 4.5
    assert contrast(palette["link"], palette["panel"]) >= 4.5
    assert contrast(palette["alert-text"], palette["alert-bg"]) >= 4.5
    assert contrast(palette["ok-text"], palette["ok-bg"]) >= 4.5
