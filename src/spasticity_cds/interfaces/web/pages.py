"""The clinician pages and the JSON API: answer page, patient plan, feedback, report, knowledge-base browser."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import quote

import msgspec
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from spasticity_cds import api
from spasticity_cds.errors import InputError, SpasticityCdsError
from spasticity_cds.fhir.record import PatientRecord
from spasticity_cds.interfaces.web import manual_form, smart
from spasticity_cds.interfaces.web.csrf import CSRF_FIELD, csrf_valid
from spasticity_cds.interfaces.web.deps import AppState, app_state
from spasticity_cds.interfaces.web.errors import JSON_HEADERS, outcome_response
from spasticity_cds.interfaces.web.plan_view import build_plan, patient_banner, storable_card_id
from spasticity_cds.interfaces.web.rendering import FEEDBACK_ANSWERS, OVERRIDE_REASONS, STATIC_DIR, render
from spasticity_cds.knowledge.schema import ConceptKind, Node
from spasticity_cds.store import FeedbackOutcome, HookFeedback, PageContext, PageFeedback

logger = logging.getLogger(__name__)
router = APIRouter()
StateDep = Annotated[AppState, Depends(app_state)]
router.include_router(smart.router)

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
STATIC_FILES = {"app.css": "text/css", "app.js": "text/javascript", "print.css": "text/css"}
FHIR_JSON_TYPES = (
    "application/json",
    "application/fhir+json",
    "application/x-ndjson",
    "application/fhir+ndjson",
    "application/ndjson",
)
MULTIPART_OVERHEAD = 64 * 1024
MAX_COMMENT = 2000
#: The newest comments the feedback report shows.
REPORT_COMMENTS = 50
#: The sections of the code page, in the schema's order.
CONCEPT_KINDS: tuple[str, ...] = get_args(ConceptKind)
#: The id of a feedback form on a page: the page-level one, or a finding's rating form (``rate-{finding id}``).
FORM_ANCHOR = re.compile(r"feedback|rate-[A-Za-z0-9:._-]{1,200}")
RETURN_PATHS = re.compile(r"/(?:|patients/demo/[A-Za-z0-9_.-]+|smart/plan/[A-Za-z0-9_-]+)")


class BodyTooLargeError(Exception):
    """The request body is larger than the configured limit."""


# -- helpers -------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing to buffer more than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, limit: int) -> FormData:
    """The form (urlencoded or multipart) from a body read under ``limit``."""
    body = await read_body(request, limit)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await Request(request.scope, replay).form(max_files=1, max_fields=200)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def demo_dir_default() -> Path:
    """The demo bundles shipped in the package."""
    return Path(str(resources.files("spasticity_cds.demo") / "data"))


def demo_dir(request: Request) -> Path:
    """Where demo bundles live: ``app.state.demo_data_dir`` when a test sets it, else the packaged folder."""
    override = getattr(request.app.state, "demo_data_dir", None)
    if override is not None:
        return Path(override)
    return demo_dir_default()


def demo_patients(request: Request, state: AppState) -> list[dict[str, str]]:
    """The demo bundles, in ``index.json`` order with its titles when present, with each patient's banner."""
    folder = demo_dir(request)
    if not folder.is_dir():
        return []
    titles: dict[str, dict[str, str]] = {}
    index = folder / "index.json"
    if index.is_file():
        try:
            listed = orjson.loads(index.read_bytes())
        except orjson.JSONDecodeError:
            listed = []
        for item in listed if isinstance(listed, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                titles[item["id"]] = {k: str(item.get(k) or "") for k in ("title", "summary")}
    paths = {
        path.stem: path for path in folder.glob("*.json") if path.name != "index.json" and SAFE_ID.match(path.stem)
    }
    order = [name for name in titles if name in paths] + sorted(name for name in paths if name not in titles)
    out = []
    for name in order:
        try:
            record = api.read_patient(paths[name].read_bytes(), source=paths[name].name)
        except SpasticityCdsError:
            logger.warning("demo bundle %s could not be read", paths[name].name)
            continue
        banner = patient_banner(record, state.clock())
        out.append({"id": name, **titles.get(name, {"title": "", "summary": ""}), **banner})
    return out


def _settings(state: AppState) -> dict[str, Any] | None:
    return dict(state.settings.kb_settings) or None


def _plan_page(
    request: Request, state: AppState, record: PatientRecord, source_label: str, return_to: str, status_code: int = 200
) -> HTMLResponse:
    try:
        plan = build_plan(record, state.engine, state.clock(), _settings(state), source_label=source_label)
    except SpasticityCdsError as error:
        logger.error("plan page: %s at %s", type(error).__name__, error.where or "-")
        message = "The plan could not be computed for this record. The error has been logged for the maintainers."
        return _error_page(request, state, "Evaluation failed", message, 500)
    # The patient's name in the title: tabs and history tell two patients' plans apart.
    context = {
        "title": f"Plan for {plan.patient['name']}",
        "plan": plan,
        "return_to": return_to,
        "fact_boundaries": plan.fact_boundaries,
    }
    return render(request, state, "plan.html", context, status_code=status_code)


def _start_page(
    request: Request,
    state: AppState,
    *,
    upload_error: str | None = None,
    entry: manual_form.ManualEntry | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = {
        "title": "Open a patient",
        "demos": demo_patients(request, state),
        "upload_error": upload_error,
        "entry": entry or manual_form.ManualEntry(values={"als": "yes"}),
        "number_fields": manual_form.NUMBER_FIELDS,
        "medications": manual_form.medication_choices(state.engine.kb),
        "dose_units": manual_form.dose_units(state.engine.kb),
        "mas_grades": manual_form.MAS_GRADES,
        "med_rows": range(manual_form.MED_ROWS),
        "mas_rows": range(manual_form.MAS_ROWS),
        "sexes": manual_form.SEXES,
        "max_upload_bytes": upload_limit(state),
        "max_upload_text": megabytes(upload_limit(state)),
        "today": state.clock().date().isoformat(),
    }
    return render(request, state, "patient_start.html", context, status_code=status_code)


def _error_page(request: Request, state: AppState, title: str, message: str, status_code: int) -> HTMLResponse:
    return render(request, state, "error.html", {"title": title, "message": message}, status_code=status_code)


# -- answer page and feedback ----------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def answer_page(request: Request, state: StateDep) -> HTMLResponse:
    """How spasticity in ALS is treated: the ladder, each statement with its sources, and what is not known."""
    kb = state.engine.kb
    steps = []
    for step in sorted(kb.ladder.steps, key=lambda s: s.position):
        monograph = kb.monographs.get(step.agent)
        statements = []
        if monograph is not None:
            for label, statement in (
                ("How it works", monograph.mechanism),
                ("Starting dose", monograph.start),
                ("Titration", monograph.titration),
                ("Maximum", monograph.max_basis),
                ("Liver", monograph.hepatic),
                ("Stopping", monograph.taper),
                ("Off-label use in ALS", monograph.off_label_in_als),
            ):
                if statement is not None:
                    statements.append((label, statement.text, state.engine.cite(statement.citations)))
            for statement in monograph.cautions:
                statements.append(("Caution", statement.text, state.engine.cite(statement.citations)))
            for statement in monograph.contraindications:
                statements.append(("Do not use", statement.text, state.engine.cite(statement.citations)))
            for item in monograph.monitoring:
                statements.append(("Monitor", item.what, state.engine.cite(item.citations)))
        steps.append({"step": step, "citations": state.engine.cite(step.citations), "statements": statements})
    gaps = [(gap.text, state.engine.cite(gap.citations)) for gap in kb.manifest.evidence_gaps]
    context = {
        "title": "How is spasticity treated in ALS?",
        "steps": steps,
        "evidence_gaps": gaps,
        "return_to": "/",
    }
    return render(request, state, "answer.html", context)


@router.post("/feedback", response_model=None)
async def post_feedback(request: Request, state: StateDep) -> Response:
    """Store one "Did this answer your question?" answer or one finding rating, once per idempotency key."""
    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        form = await read_form(request, 64 * 1024)
    except BodyTooLargeError:
        return _feedback_error(request, state, wants_json, "The feedback is too long.", 413)
    if not csrf_valid(request, state, _text(form, CSRF_FIELD)):
        return _feedback_error(request, state, wants_json, "The form has expired. Reload the page and try again.", 403)
    try:
        item = _feedback_from_form(form, state)
    except ValueError as error:
        return _feedback_error(request, state, wants_json, str(error), 400)
    new = await run_in_threadpool(state.store.record_page_feedback, item)
    logger.info("page feedback stored: context=%s rule=%s new=%s", item.context.value, item.rule_id or "-", new)
    # Sent before (a double click, a retry, the back button): the store keeps the first answer, and says so.
    said = "thanks" if new else "already"
    if wants_json:
        return JSONResponse({"stored": True, "new": bool(new), "message": FEEDBACK_ANSWERS[said]}, headers=JSON_HEADERS)
    return_to = _text(form, "return_to")
    anchor = _text(form, "anchor")
    anchor = anchor if FORM_ANCHOR.fullmatch(anchor) else "feedback"
    if RETURN_PATHS.fullmatch(return_to):  # fullmatch: "$" would let a trailing newline through
        # Back to the form that was sent, what became of it shown in it (in view, as the script would show it).
        return RedirectResponse(f"{return_to}?feedback={said}&at={quote(anchor)}#{quote(anchor)}", status_code=303)
    # No page to return to: a plan that cannot be shown again (an upload, values typed in; nothing of them is kept)
    # sends its forms without return_to into a new tab, the plan staying open in its own, which this page says.
    context = {
        "title": "Feedback",
        "said": FEEDBACK_ANSWERS[said],
        "stored_with": stored_with(item) if new else "",  # sent before: nothing was stored now
        "plan_left_open": return_to == "",
    }
    return render(request, state, "thanks.html", context)


#: What a page-level answer ("Did this answer your question?") was given on, as the thank-you page names it.
ANSWERED_ON = {PageContext.ANSWER_PAGE: "the treatment overview", PageContext.PATIENT_PLAN: "a patient's plan"}


def stored_with(item: PageFeedback) -> str:
    """What the thank-you page says was stored with the feedback: a finding's rating with the rule (id and version)
    it rates, a page-level answer with the page it answers (no rule: it is about the whole page); both with the
    knowledge-base version, and the CDS Hooks card when the plan was opened from one."""
    if item.rule_id is not None:
        parts = [f"the rule it rates ({item.rule_id} version {item.rule_version})"]
    else:
        parts = [f"the page it answers ({ANSWERED_ON.get(item.context, 'this page')})"]
    if item.card_uuid:
        parts.append("the CDS Hooks card the plan was opened from")
    return f"It is stored with {', '.join(parts)} and knowledge base version {item.kb_version}."


def _feedback_from_form(form: FormData, state: AppState) -> PageFeedback:
    try:
        key = uuid.UUID(_text(form, "feedback_id"))
    except ValueError:
        raise ValueError("The form is missing its answer id; reload the page.") from None
    try:
        context = PageContext(_text(form, "context"))
    except ValueError:
        raise ValueError("Unknown feedback context.") from None

    def yes_no(name: str) -> bool | None:
        value = _text(form, name)
        return True if value == "yes" else False if value == "no" else None

    rule_id = _text(form, "rule_id") or None
    rule_version: int | None = None
    if rule_id is not None:
        rule = state.engine.kb.rules.get(rule_id)
        if rule is None:
            raise ValueError("Unknown rule.")
        version_text = _text(form, "rule_version")
        known = {change.version for change in rule.changes} | {rule.version}
        asked = int(version_text) if _is_small_number(version_text) else rule.version
        rule_version = asked if asked in known else rule.version  # never a version the rule never had
    reason = _text(form, "override_reason") or None
    if reason is not None and reason not in {code for code, _ in OVERRIDE_REASONS}:
        raise ValueError("Unknown override reason.")
    # A browser sends a typed line break as CRLF but counts it as one character against the textarea's maxlength.
    comment = _text(form, "comment").replace("\r\n", "\n").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT:
        raise ValueError(f"The comment is longer than {MAX_COMMENT} characters; shorten it and send it again.")
    card = _text(form, "card_uuid") or None
    if card is not None and not storable_card_id(card):
        raise ValueError("Unknown card.")
    if comment is not None and "\x00" in comment:
        raise ValueError("The comment holds a character that cannot be stored (NUL).")
    answered, useful = yes_no("answered"), yes_no("useful")
    if answered is None and useful is None and comment is None and reason is None:
        raise ValueError("Choose yes or no, or write a comment.")
    return PageFeedback(
        id=key,
        context=context,
        created_at=state.clock(),
        answered=answered,
        useful=useful,
        rule_id=rule_id,
        rule_version=rule_version,
        kb_version=state.engine.kb.version,
        card_uuid=card,
        override_reason_code=reason,
        comment=comment,
    )


def _feedback_error(request: Request, state: AppState, wants_json: bool, message: str, status: int) -> Response:
    if wants_json:
        return JSONResponse({"stored": False, "error": message}, status_code=status, headers=JSON_HEADERS)
    return _error_page(request, state, "Feedback not saved", message, status)


# -- patients ----------------------------------------------------------------------------------------------


@router.get("/patients", response_class=HTMLResponse)
def patients(request: Request, state: StateDep) -> HTMLResponse:
    """Open a demo patient, upload a FHIR bundle or enter values by hand."""
    return _start_page(request, state)


@router.get("/patients/demo/{demo_id}", response_class=HTMLResponse)
def demo_patient(demo_id: str, request: Request, state: StateDep) -> HTMLResponse:
    """The plan for one bundled demo patient."""
    path = demo_dir(request) / f"{demo_id}.json"
    if not SAFE_ID.match(demo_id) or demo_id == "index" or not path.is_file():
        return _error_page(request, state, "No such demo patient", "There is no demo patient with that name.", 404)
    try:
        record = api.read_patient(path.read_bytes(), source=path.name)
    except SpasticityCdsError as error:
        return _error_page(request, state, "Demo patient unreadable", error.message, 500)
    return _plan_page(request, state, record, f"Demo patient {demo_id}", f"/patients/demo/{demo_id}")


@router.get("/patients/{patient_id}", response_class=HTMLResponse)
def worklist_patient(patient_id: str, request: Request, state: StateDep) -> HTMLResponse:
    """Where a batch worklist links a patient (one path segment, as a FHIR id is): how to open that patient's plan
    (the app keeps no records), with a standalone SMART launch when EHRs are registered."""
    clients = smart.registrations(request, state).clients or []  # a broken file: the launch page says so
    context = {"title": f"Patient {patient_id} from a worklist", "patient_id": patient_id, "clients": clients}
    # The launch form's GET is answered with a redirect to the EHR's authorization server, wherever that is.
    return render(request, state, "worklist_patient.html", context, form_targets="https: http:" if clients else "")


def upload_limit(state: AppState) -> int:
    """The largest file an upload takes: below the app-wide body limit, so that a file too large gets the page."""
    return max(state.settings.max_body_bytes - MULTIPART_OVERHEAD, state.settings.max_body_bytes // 2)


def megabytes(size: int) -> str:
    """A size as people read it, rounded down to a tenth of a megabyte (never more than the limit really is)."""
    return f"{math.floor(size / (1024 * 1024) * 10) / 10:g} MB"


#: The upload form's path: its route enforces the body limit itself, so that a file too large gets the page.
UPLOAD_PATH = "/patients/upload"


@router.post(UPLOAD_PATH, response_class=HTMLResponse)
async def upload_patient(request: Request, state: StateDep) -> HTMLResponse:
    """Evaluate an uploaded FHIR Bundle (JSON) or NDJSON file; problems are shown on the page."""
    limit = upload_limit(state)
    too_big = f"The file is larger than the limit of {megabytes(limit)}."
    try:
        form = await read_form(request, limit + MULTIPART_OVERHEAD)
    except BodyTooLargeError:
        logger.info("upload rejected: too large")
        return _start_page(request, state, upload_error=too_big, status_code=413)
    except Exception:
        logger.info("upload rejected: unreadable form")
        return _start_page(
            request, state, upload_error="The upload could not be read. Choose a file and try again.", status_code=400
        )
    try:
        if not csrf_valid(request, state, _text(form, CSRF_FIELD)):
            return _start_page(
                request, state, upload_error="The form has expired. Please choose the file again.", status_code=403
            )
        upload = form.get("bundle")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return _start_page(
                request, state, upload_error="Choose a FHIR JSON or NDJSON file to upload.", status_code=400
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return _start_page(request, state, upload_error=too_big, status_code=413)
    finally:
        await form.close()
    if not data.strip():
        return _start_page(request, state, upload_error="The file is empty.", status_code=400)
    try:
        record = api.read_patient(data, source="the uploaded file")
    except SpasticityCdsError as error:
        logger.info("upload rejected: %s", type(error).__name__)
        message = f"The file could not be used: {error.message}"
        return _start_page(request, state, upload_error=message, status_code=400)
    return await run_in_threadpool(_plan_page, request, state, record, "Uploaded file", "")


@router.post("/patients/manual", response_class=HTMLResponse)
async def manual_patient(request: Request, state: StateDep) -> HTMLResponse:
    """Build a FHIR Bundle from the hand-entry form and evaluate it with the same evaluator."""
    try:
        form = await read_form(request, 64 * 1024)
    except BodyTooLargeError:
        return _start_page(request, state, status_code=413)
    values = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    today = state.clock().date()
    entry = manual_form.read_form(values, state.engine.kb, today)
    if not csrf_valid(request, state, values.get(CSRF_FIELD, "")):
        entry.errors["form"] = "The form has expired. Please submit it again."
    if not entry.ok:
        return _start_page(request, state, entry=entry, status_code=400)
    bundle = manual_form.build_bundle(entry, state.engine.kb, today)
    record = api.read_patient(bundle, source="the form")
    return await run_in_threadpool(_plan_page, request, state, record, "Values entered by hand", "")


# -- report ------------------------------------------------------------------------------------------------


@router.get("/reports/feedback", response_class=HTMLResponse)
def feedback_report(request: Request, state: StateDep) -> HTMLResponse:
    """Acceptance and override rates per rule from CDS Hooks feedback, with the page's own ratings and comments;
    only with the configured ``report_token`` as the HTTP Basic password."""
    refusal = _report_refusal(request, state)
    if refusal is not None:
        return refusal
    stats = state.store.feedback_report()
    page = state.store.list_page_feedback(limit=100_000)
    page_overrides: dict[tuple[str, int], int] = {}
    answers = {"yes": 0, "no": 0}
    for item in page:
        if item.rule_id is not None and item.override_reason_code:
            key = (item.rule_id, item.rule_version or 0)
            page_overrides[key] = page_overrides.get(key, 0) + 1
        if item.context in (PageContext.ANSWER_PAGE, PageContext.PATIENT_PLAN) and item.answered is not None:
            answers["yes" if item.answered else "no"] += 1
    hooks = state.store.list_hook_feedback(limit=100_000)
    reasons = _override_reasons(hooks)
    rows = []
    for stat in stats:
        rated = stat.page_useful_yes + stat.page_useful_no
        rows.append(
            {
                "stat": stat,
                "page_overrides": page_overrides.get((stat.rule_id, stat.rule_version), 0),
                "useful_rate": stat.page_useful_yes / rated if rated else None,
                "known": stat.rule_id in state.engine.kb.rules,
                "reasons": reasons.get((stat.rule_id, stat.rule_version), {}),
            }
        )
    context = {
        "title": "Feedback per rule",
        "rows": rows,
        "answers": answers,
        "page_count": len(page),
        "comments": _recent_comments(page, hooks),
    }
    return render(request, state, "report.html", context)


def _report_refusal(request: Request, state: AppState) -> HTMLResponse | None:
    """The page refusing the report: off without a ``report_token``, 401 without it as the Basic password."""
    token = state.settings.report_token
    if token is None:
        message = (
            "The feedback report shows clinicians' comments, so it is served only when report_token is set "
            "in the server's configuration."
        )
        return _error_page(request, state, "Feedback report off", message, 403)
    password = _basic_password(request.headers.get("authorization", ""))
    if password is not None and hmac.compare_digest(password, token.encode()):
        return None
    message = "The feedback report needs its password (the report token); any user name will do."
    response = _error_page(request, state, "Feedback report: sign in", message, 401)
    response.headers["WWW-Authenticate"] = 'Basic realm="feedback report", charset="UTF-8"'
    return response


def _basic_password(header: str) -> bytes | None:
    """The password of an HTTP Basic ``Authorization`` header, or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except binascii.Error:
        return None
    return password if colon else None


def _override_reasons(hooks: list[HookFeedback]) -> dict[tuple[str, int], dict[str, int]]:
    """Per rule and version, how often each override reason was given in the EHR (a card's latest report only)."""
    seen: set[str] = set()
    reasons: dict[tuple[str, int], dict[str, int]] = {}
    for item in hooks:  # newest first
        if item.card_uuid in seen:
            continue
        seen.add(item.card_uuid)
        reason = item.override_reason_display or item.override_reason_code
        if item.outcome is FeedbackOutcome.OVERRIDDEN and reason and item.rule_id is not None:
            counts = reasons.setdefault((item.rule_id, item.rule_version or 0), {})
            counts[reason] = counts.get(reason, 0) + 1
    return reasons


@dataclass(frozen=True)
class ReportComment:
    """A comment a clinician left, on the pages or with an override in the EHR, as the feedback report shows it."""

    when: datetime
    where: str
    rule: str | None
    version: int | None
    reason: str | None
    comment: str


def _recent_comments(page: list[PageFeedback], hooks: list[HookFeedback]) -> list[ReportComment]:
    """The newest comments, on the pages and with EHR overrides, with the rule and reason they were about."""
    said = [
        ReportComment(item.created_at, "page", item.rule_id, item.rule_version, item.override_reason_code, item.comment)
        for item in page
        if item.comment
    ] + [
        ReportComment(
            item.received_at,
            "EHR",
            item.rule_id,
            item.rule_version,
            item.override_reason_display or item.override_reason_code,
            item.user_comment,
        )
        for item in hooks
        if item.user_comment
    ]
    return sorted(said, key=lambda entry: entry.when, reverse=True)[:REPORT_COMMENTS]


# -- knowledge base ----------------------------------------------------------------------------------------


def node_view(node: Node) -> dict[str, Any]:
    """A rule's condition tree in words, for the browser."""
    if node.all is not None:
        return {"op": "all of", "children": [node_view(child) for child in node.all]}
    if node.any is not None:
        return {"op": "any of", "children": [node_view(child) for child in node.any]}
    if node.not_ is not None:
        return {"op": "not", "children": [node_view(node.not_)]}
    check = node.check
    if check is None:
        return {"label": "(empty)"}
    target = f"setting {check.setting}" if check.setting else repr(check.value)
    return {"label": f"{check.fact} {check.op} {target}", "fact": check.fact}


@router.get("/kb", response_class=HTMLResponse)
def kb_index(request: Request, state: StateDep) -> HTMLResponse:
    """The knowledge base: version, digest, rules, drugs, citations and releases."""
    kb = state.engine.kb
    rules = sorted(kb.rules.values(), key=lambda r: (kb.rule_files[r.id], r.id))
    context = {
        "title": "Knowledge base",
        "rules": rules,
        "monographs": sorted(kb.monographs.values(), key=lambda m: m.name),
    }
    return render(request, state, "kb_index.html", context)


@router.get("/kb/rules/{rule_id}", response_class=HTMLResponse)
def kb_rule(rule_id: str, request: Request, state: StateDep) -> HTMLResponse:
    """One rule: what it says, when it fires, its sources and its change log (CDS Hooks cards link here)."""
    kb = state.engine.kb
    rule = kb.rules.get(rule_id)
    if rule is None:
        return _error_page(request, state, "No such rule", "The knowledge base has no rule with that id.", 404)
    context = {
        "title": f"Rule {rule.id}",
        "rule": rule,
        "monographs": kb.monographs,
        "file": kb.rule_files[rule.id],
        "tree": node_view(rule.when),
        "citations": state.engine.cite(rule.citations),
        "definitions": kb.definitions,
    }
    return render(request, state, "kb_rule.html", context)


@router.get("/kb/drugs", response_model=None)
def kb_drugs() -> RedirectResponse:
    """The drug list lives on the knowledge-base index."""
    return RedirectResponse("/kb#drugs", status_code=302)


@router.get("/kb/drugs/{drug_id}", response_class=HTMLResponse)
def kb_drug(drug_id: str, request: Request, state: StateDep) -> HTMLResponse:
    """One drug monograph with every statement's sources."""
    monograph = state.engine.kb.monographs.get(drug_id)
    if monograph is None:
        return _error_page(request, state, "No such drug", "The knowledge base has no monograph with that id.", 404)
    cite = state.engine.cite
    rules = [r for r in state.engine.kb.rules.values() if drug_id in r.agents]
    context = {"title": monograph.name, "m": monograph, "cite": cite, "rules": sorted(rules, key=lambda r: r.id)}
    return render(request, state, "kb_drug.html", context)


@router.get("/kb/codes", response_class=HTMLResponse)
def kb_codes(request: Request, state: StateDep) -> HTMLResponse:
    """Every concept the engine reads and the codes, code prefixes and text it recognises it by, each code with its
    evidence status and where it was confirmed: what an EHR team maps its data to."""
    concepts = sorted(state.engine.kb.valuesets.concepts, key=lambda c: (CONCEPT_KINDS.index(c.kind), c.display))
    context = {"title": "Codes", "concepts": concepts, "kinds": CONCEPT_KINDS}
    return render(request, state, "kb_codes.html", context)


@router.get("/kb/citations", response_class=HTMLResponse)
def kb_citations(request: Request, state: StateDep) -> HTMLResponse:
    """Every source with its evidence status."""
    citations = sorted(state.engine.kb.citations.values(), key=lambda c: c.id)
    return render(request, state, "kb_citations.html", {"title": "Sources", "citations": citations})


@router.get("/kb/versions", response_class=HTMLResponse)
def kb_versions(request: Request, state: StateDep) -> HTMLResponse:
    """Knowledge-base releases and every rule's change log."""
    kb = state.engine.kb
    changes = sorted(
        (
            (rule.id, change.version, change.change, rule.version)
            for rule in kb.rules.values()
            for change in rule.changes
        ),
        key=lambda row: (-row[1], row[0]),
    )
    context = {"title": "Versions and changes", "releases": kb.manifest.releases, "changes": changes}
    return render(request, state, "kb_versions.html", context)


# -- JSON API --------------------------------------------------------------------------------------------


@router.post("/api/evaluate", response_model=None)
async def api_evaluate(request: Request, state: StateDep) -> Response:
    """FHIR Bundle (JSON) or NDJSON in, the result contract out; ``?now=`` (ISO 8601 with offset) optional."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in FHIR_JSON_TYPES:
        return outcome_response(415, "send the bundle as application/json, application/fhir+json or NDJSON")
    now = state.clock()
    now_text = request.query_params.get("now")
    if now_text:
        try:
            now = api.parse_instant(now_text)
        except InputError as error:
            return outcome_response(400, error.message)
    try:
        body = await read_body(request, state.settings.max_body_bytes)
    except BodyTooLargeError:
        return outcome_response(413, f"the body is larger than {state.settings.max_body_bytes} bytes")
    try:
        # The engine's own result: it is only serialised here, so api.evaluate's private copy would be wasted.
        result = state.engine.evaluate(api.read_patient(body), now, _settings(state))
    except SpasticityCdsError as error:
        if error.http_status < 500:
            return outcome_response(400, error.message)
        return outcome_response(500, "evaluation failed")
    return Response(api.to_json(result), media_type="application/json", headers=JSON_HEADERS)


@router.get("/api/kb")
def api_kb(state: StateDep) -> Response:
    """The knowledge base's identity, releases, rules, drugs, citations and evidence gaps as JSON."""
    kb = state.engine.kb
    base = state.settings.base_url  # never the Host header: a client could name any host
    body = {
        "name": kb.manifest.name,
        "version": kb.version,
        "digest": kb.digest,
        "releases": msgspec.to_builtins(kb.manifest.releases),
        "disclaimer": msgspec.to_builtins(kb.manifest.disclaimer),
        "evidence_gaps": msgspec.to_builtins(kb.manifest.evidence_gaps),
        "ladder": msgspec.to_builtins(sorted(kb.ladder.steps, key=lambda s: s.position)),
        "rules": [
            {
                "id": rule.id,
                "version": rule.version,
                "kind": rule.kind,
                "severity": rule.severity,
                "agents": rule.agents,
                "active": rule.active,
                "summary": rule.summary,
                "url": f"{base}/kb/rules/{rule.id}",
            }
            for rule in sorted(kb.rules.values(), key=lambda r: r.id)
        ],
        "drugs": [
            {"id": m.id, "name": m.name, "url": f"{base}/kb/drugs/{m.id}"}
            for m in sorted(kb.monographs.values(), key=lambda m: m.id)
        ],
        "citations": msgspec.to_builtins(sorted(kb.citations.values(), key=lambda c: c.id)),
    }
    return Response(
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS), media_type="application/json", headers=JSON_HEADERS
    )


# -- static files ----------------------------------------------------------------------------------------


@router.get("/static/{name}", response_model=None)
def static_file(name: str) -> Response:
    """The page's own CSS and JavaScript (no CDN)."""
    if name not in STATIC_FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    response = FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])
    response.headers["Cache-Control"] = "public, max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _is_small_number(text: str) -> bool:
    """ASCII digits that fit the store's integer column (``"²".isdigit()`` is true, and 20 digits overflow)."""
    return text.isascii() and text.isdigit() and len(text) <= 9
