"""The answer page: the ladder with sources and unknowns, and "Did this answer your question?" stored once."""

from __future__ import annotations

import html
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pages_support as support

from spasticity_cds import api
from spasticity_cds.errors import StoreError
from spasticity_cds.interfaces.web.csrf import Signer
from spasticity_cds.interfaces.web.plan_view import build_plan
from spasticity_cds.store import PageContext


@pytest.fixture
def client(tmp_path: Path) -> support.PageClient:
    return support.PageClient(support.make_app(tmp_path))


def test_answer_page_shows_the_ladder_with_citations_statuses_and_unknowns(client: support.PageClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    page = response.text
    kb = client.app.state.cds.engine.kb
    for step in kb.ladder.steps:
        assert f'id="step-{step.agent}"' in page
        for ref in step.citations:
            assert f'href="/kb/citations#{ref.id}"' in page
    assert "What the evidence does not know" in page
    for gap in kb.manifest.evidence_gaps:
        assert gap.text.split(" - ")[0][:40] in page.replace("&#39;", "'")
    assert page.count("<h1>") == 1
    assert 'class="ev ev-C-primary"' in page and 'class="ev ev-C-secondary"' in page
    assert "Decision support, not a decision." in page
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert "cds_csrf" in response.headers["set-cookie"]


def _answer(client: support.PageClient, key: str, answered: str = "yes", **extra: str) -> object:
    token = client.csrf("/")
    data = {"csrf_token": token, "feedback_id": key, "context": "answer-page", "return_to": "/", "answered": answered}
    data.update(extra)
    return client.post("/feedback", data=data)


def test_feedback_is_stored_once_per_idempotency_key_and_redirects_back(client: support.PageClient) -> None:
    key = str(uuid.uuid4())
    first = _answer(client, key, "no", comment="Needs dosing in renal failure")
    assert first.status_code == 303  # type: ignore[attr-defined]
    assert first.headers["location"] == "/?feedback=thanks&at=feedback#feedback"  # type: ignore[attr-defined]
    _answer(client, key, "no", comment="Needs dosing in renal failure")
    stored = client.app.state.cds.store.list_page_feedback()
    assert len(stored) == 1
    item = stored[0]
    assert item.id == uuid.UUID(key)
    assert item.context is PageContext.ANSWER_PAGE
    assert item.answered is False
    assert item.comment == "Needs dosing in renal failure"
    assert item.kb_version == client.app.state.cds.engine.kb.version
    assert item.created_at == support.FROZEN_NOW
    assert "Thank you for your feedback!" in client.get("/?feedback=thanks").text


def test_feedback_by_script_gets_json(client: support.PageClient) -> None:
    token = client.csrf("/")
    response = client.post(
        "/feedback",
        data={"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "answer-page", "answered": "yes"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {"stored": True, "new": True, "message": "Thank you for your feedback!"}


@pytest.mark.parametrize("token", ["", "forged.1.abc", None])
def test_feedback_without_a_valid_csrf_token_is_refused(client: support.PageClient, token: str | None) -> None:
    real = client.csrf("/")
    data = {
        "csrf_token": real if token is None else token,
        "feedback_id": str(uuid.uuid4()),
        "context": "answer-page",
        "answered": "yes",
    }
    if token is None:
        client.cookies = type(client.cookies)()  # the form's token without its cookie: not a double submit
    response = client.post("/feedback", data=data)
    assert response.status_code == 403
    assert "The form has expired" in response.text
    assert client.app.state.cds.store.list_page_feedback() == []


def test_feedback_token_from_another_secret_is_refused(tmp_path: Path) -> None:
    other = support.PageClient(support.make_app(tmp_path / "other", session_secret="another-secret"))
    foreign = other.csrf("/")
    client = support.PageClient(support.make_app(tmp_path))
    client.csrf("/")
    client.cookies.set("cds_csrf", foreign)
    data = {"csrf_token": foreign, "feedback_id": str(uuid.uuid4()), "context": "answer-page", "answered": "yes"}
    assert client.post("/feedback", data=data).status_code == 403


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("feedback_id", "not-a-uuid", "answer id"),
        ("context", "elsewhere", "Unknown feedback context"),
        ("rule_id", "NO-SUCH-RULE", "Unknown rule"),
        ("override_reason", "because", "Unknown override reason"),
        ("answered", "", "Choose yes or no"),
    ],
)
def test_bad_feedback_gets_a_clear_message(client: support.PageClient, field: str, value: str, message: str) -> None:
    token = client.csrf("/")
    data = {"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "answer-page", "answered": "yes"}
    data[field] = value
    response = client.post("/feedback", data=data)
    assert response.status_code == 400
    assert message in response.text
    assert "Traceback" not in response.text


def test_static_files_are_served_locally(client: support.PageClient) -> None:
    page = client.get("/").text
    assert 'src="/static/app.js"' in page and "http" not in page.split("<body>")[0].replace("http-equiv", "")
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/..%2Fpages.py").status_code == 404
    assert client.get("/static/other.css").status_code == 404


def test_a_comment_over_the_limit_is_refused_not_cut(client: support.PageClient) -> None:
    response = _answer(client, str(uuid.uuid4()), comment="x" * 10_000)
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "longer than 2000 characters" in response.text  # type: ignore[attr-defined]
    assert client.app.state.cds.store.list_page_feedback() == []


def test_line_breaks_count_once_against_the_comment_limit(client: support.PageClient) -> None:
    comment = "line\r\n" * 333 + "x"  # 1999 characters as the textarea counts them
    assert _answer(client, str(uuid.uuid4()), comment=comment).status_code == 303  # type: ignore[attr-defined]
    assert client.app.state.cds.store.list_page_feedback()[0].comment == comment.replace("\r\n", "\n")


def test_a_form_sent_again_with_another_answer_says_the_first_is_kept(client: support.PageClient) -> None:
    key = str(uuid.uuid4())
    _answer(client, key, "yes")
    again = _answer(client, key, "no")
    assert again.headers["location"] == "/?feedback=already&at=feedback#feedback"  # type: ignore[attr-defined]
    assert "This form was already sent, and its first answer is kept." in client.get(again.headers["location"]).text  # type: ignore[attr-defined]
    token = client.csrf("/")
    data = {"csrf_token": token, "feedback_id": key, "context": "answer-page", "answered": "no"}
    answer = client.post("/feedback", data=data, headers={"Accept": "application/json"}).json()
    assert answer["new"] is False and "first answer is kept" in answer["message"]
    assert [item.answered for item in client.app.state.cds.store.list_page_feedback()] == [True]


def test_a_card_id_is_stored_whole(client: support.PageClient) -> None:
    card = "c" * 128
    assert _answer(client, str(uuid.uuid4()), card_uuid=card).status_code == 303  # type: ignore[attr-defined]
    assert client.app.state.cds.store.list_page_feedback()[0].card_uuid == card
    assert _answer(client, str(uuid.uuid4()), card_uuid="c" * 129).status_code == 400  # type: ignore[attr-defined]


def test_a_card_id_the_store_cannot_keep_is_left_off_the_page(client: support.PageClient) -> None:
    record = api.read_patient(support.trend_bundle(), source="test")
    engine = client.app.state.cds.engine
    assert build_plan(record, engine, support.FROZEN_NOW, None, card_uuid="c" * 129).card_uuid is None
    assert build_plan(record, engine, support.FROZEN_NOW, None, card_uuid="c" * 128).card_uuid == "c" * 128


def _thanked(client: support.PageClient, **fields: str) -> str:
    """The thank-you page's status line after a form sent without the script and without a page to return to (an
    upload's or a hand entry's plan): what it says was stored."""
    data = {"csrf_token": client.csrf("/"), "feedback_id": str(uuid.uuid4()), "return_to": "", **fields}
    response = client.post("/feedback", data=data)
    assert response.status_code == 200
    return html.unescape(response.text.split('<p role="status">')[1].split("</p>")[0])


def test_the_thanks_says_what_was_stored_with_the_feedback(client: support.PageClient) -> None:
    """A page-level answer has no rule: the thanks names the page it answers, never a rule; a finding's rating is
    stored with its rule and version, and says so."""
    kb = client.app.state.cds.engine.kb
    on_overview = _thanked(client, context="answer-page", answered="yes")
    assert on_overview == (
        "Thank you for your feedback! It is stored with the page it answers (the treatment overview) and knowledge"
        f" base version {kb.version}."
    )
    on_plan = _thanked(client, context="patient-plan", answered="no", comment="Missing the pump dose")
    assert on_plan == (
        "Thank you for your feedback! It is stored with the page it answers (a patient's plan) and knowledge base"
        f" version {kb.version}."
    )
    for said in (on_overview, on_plan):
        assert "rule" not in said
    rule = kb.rules["BENZO-RESP-GATE"]
    rated = _thanked(client, context="finding", rule_id=rule.id, rule_version=str(rule.version), useful="yes")
    assert rated == (
        f"Thank you for your feedback! It is stored with the rule it rates (BENZO-RESP-GATE version {rule.version})"
        f" and knowledge base version {kb.version}."
    )
    from_card = _thanked(client, context="patient-plan", answered="yes", card_uuid="card-1")
    assert "(a patient's plan), the CDS Hooks card the plan was opened from and knowledge base" in from_card
    stored = client.app.state.cds.store.list_page_feedback()
    assert sorted((item.context.value, item.rule_id or "", item.card_uuid or "") for item in stored) == [
        ("answer-page", "", ""),
        ("finding", "BENZO-RESP-GATE", ""),
        ("patient-plan", "", ""),
        ("patient-plan", "", "card-1"),
    ]
    assert all(item.kb_version == kb.version for item in stored)


def test_a_form_sent_again_is_not_thanked_as_stored(client: support.PageClient) -> None:
    key = str(uuid.uuid4())
    first = _thanked(client, context="answer-page", answered="yes", feedback_id=key)
    assert first.startswith("Thank you for your feedback! It is stored with")
    again = _thanked(client, context="answer-page", answered="no", feedback_id=key)
    assert again == (
        "This form was already sent, and its first answer is kept. Reload the page to give another answer."
    )


def _framed_client(tmp_path: Path, **settings: object) -> support.PageClient:
    return support.PageClient(support.make_app(tmp_path, frame_ancestors=("https://ehr.example.org",), **settings))


def _without_the_cookie(client: support.PageClient, fetch_site: str | None, token: str | None = None) -> object:
    """A plan's answer posted as a new tab opened from the app in an EHR's frame sends it: the form's token, but not
    the cookie, which was set in the frame and is partitioned to the EHR's site."""
    token = client.csrf("/patients") if token is None else token
    client.cookies = type(client.cookies)()
    data = {"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "patient-plan", "answered": "yes"}
    headers = {"Origin": "null"} | ({"Sec-Fetch-Site": fetch_site} if fetch_site else {})
    return client.post("/feedback", data=data | {"return_to": ""}, headers=headers)


def test_in_an_ehr_frame_a_form_sent_from_our_own_page_needs_no_cookie(tmp_path: Path) -> None:
    """With frame_ancestors, the browser's word that the form came from one of our pages (Sec-Fetch-Site:
    same-origin, which no page can forge) stands in for the partitioned cookie; the token must still be ours."""
    client = _framed_client(tmp_path)
    answer = _without_the_cookie(client, "same-origin")
    assert answer.status_code == 200  # type: ignore[attr-defined]
    assert '<p role="status">Thank you for your feedback!' in answer.text  # type: ignore[attr-defined]
    assert [item.answered for item in client.app.state.cds.store.list_page_feedback()] == [True]


@pytest.mark.parametrize("fetch_site", ["cross-site", "same-site", "none", None])
def test_in_an_ehr_frame_a_form_from_elsewhere_still_needs_the_cookie(tmp_path: Path, fetch_site: str | None) -> None:
    """Another site's form (the EHR's own pages included: same-site or cross-site), a typed-in address, a browser
    without fetch metadata: without the cookie, refused as before."""
    client = _framed_client(tmp_path)
    answer = _without_the_cookie(client, fetch_site)
    assert answer.status_code == 403  # type: ignore[attr-defined]
    assert "The form has expired" in answer.text  # type: ignore[attr-defined]
    assert client.app.state.cds.store.list_page_feedback() == []


@pytest.mark.parametrize("token", ["", "forged.1.abc", "other-secret"])
def test_in_an_ehr_frame_the_token_must_still_be_ours(tmp_path: Path, token: str) -> None:
    client = _framed_client(tmp_path / "app")
    if token == "other-secret":
        token = _framed_client(tmp_path / "other", session_secret="another-secret").csrf("/")
    assert _without_the_cookie(client, "same-origin", token).status_code == 403  # type: ignore[attr-defined]


def test_in_an_ehr_frame_an_expired_token_is_refused(tmp_path: Path) -> None:
    client = _framed_client(tmp_path, session_max_age_s=60)
    young = Signer(b"test-secret", purpose="csrf").sign("youngtoken")
    old = Signer(b"test-secret", purpose="csrf", clock=lambda: time.time() - 61).sign("oldtoken")
    assert _without_the_cookie(client, "same-origin", young).status_code == 200  # type: ignore[attr-defined]
    assert _without_the_cookie(client, "same-origin", old).status_code == 403  # type: ignore[attr-defined]


def test_outside_a_frame_the_cookie_is_always_needed(client: support.PageClient) -> None:
    """Without frame_ancestors the cookie is SameSite=Lax and reaches a new tab: the double submit stays the rule."""
    assert _without_the_cookie(client, "same-origin").status_code == 403  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("accept", "kind"), [("text/html,application/xhtml+xml", "page"), ("application/json", "outcome")]
)
def test_feedback_while_the_store_is_down_says_nothing_was_saved(
    client: support.PageClient, monkeypatch: pytest.MonkeyPatch, accept: str, kind: str
) -> None:
    def down(item: object) -> bool:
        raise StoreError("could not record page feedback: connection refused", where="postgresql://cds:***@db/cds")

    monkeypatch.setattr(client.app.state.cds.store, "record_page_feedback", down)
    token = client.csrf("/")
    data = {"csrf_token": token, "feedback_id": str(uuid.uuid4()), "context": "answer-page", "answered": "yes"}
    response = client.post("/feedback", data=data, headers={"Accept": accept})
    assert response.status_code == 503
    assert "postgresql" not in response.text and "Traceback" not in response.text
    if kind == "page":
        assert response.headers["content-type"].startswith("text/html")
        assert "nothing was saved" in response.text and "try again" in response.text
    else:
        assert response.json()["resourceType"] == "OperationOutcome"
