"""Template rendering for the pages: one autoescaping Jinja environment, common context, headers and cookies."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

from spasticity_cds.engine.evaluator import PLACEHOLDER
from spasticity_cds.interfaces.option_groups import taking_words
from spasticity_cds.interfaces.web.csrf import CSRF_COOKIE, CSRF_FIELD, csrf_token_for
from spasticity_cds.interfaces.web.deps import AppState
from spasticity_cds.interfaces.web.plan_view import STATUS_WORDS, check_text, fact_text, instant_text

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
OVERRIDE_REASONS = (
    ("patient-ineligible", "Patient does not meet eligibility for recommended action"),
    ("action-completed", "Recommended action was already completed"),
    ("action-unsuccessful", "Recommended action was previously unsuccessful"),
    ("need-more-info", "Need more information, pending results or consult"),
    ("wrong-time-workflow", "Shown at the wrong time in the workflow"),
    ("does-not-align-latest-evidence", "Does not align with the latest evidence"),
    ("risk-benefit-ratio", "My assessment of risk and benefit differs"),
    ("patient-contraindication", "Patient has a contraindication to the recommended action"),
    ("prefers-alternative", "Patient prefers an alternative approach or treatment"),
    ("patient-refuses", "Patient refuses or declines"),
    ("service-not-available", "Treatment or service is not practically available"),
)
#: What a feedback form says once sent: stored, or sent before (the same form id), the first answer kept.
FEEDBACK_ANSWERS = {
    "thanks": "Thank you for your feedback!",
    "already": "This form was already sent, and its first answer is kept. Reload the page to give another answer.",
}
OVERRIDE_SYSTEM = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"


@pass_context
def _fact_text(context: Context, fact: Mapping[str, Any]) -> str:
    """``fact_text`` with the page's ``fact_boundaries`` (a plan's, for its settings), when it has them."""
    return fact_text(fact, context.get("fact_boundaries"))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html", "svg"), default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fact_text"] = _fact_text
    env.filters["instant_text"] = instant_text
    env.filters["status_word"] = lambda status: STATUS_WORDS.get(str(status), str(status))
    env.filters["number"] = lambda value: f"{value:g}" if isinstance(value, int | float) else str(value)
    env.globals["new_id"] = lambda: str(uuid.uuid4())
    env.globals["override_reasons"] = OVERRIDE_REASONS
    env.globals["csrf_field"] = CSRF_FIELD
    return env


TEMPLATES = Jinja2Templates(env=_environment())


def secure_cookies(state: AppState) -> bool:
    """Cookies carry the Secure flag when the app is served over HTTPS."""
    return state.settings.public_base_url.startswith("https://")


def set_app_cookie(response: Response, state: AppState, name: str, value: str) -> None:
    """Set the session or CSRF cookie: HttpOnly, for ``session_max_age_s``, SameSite by how the app is shown.

    Lax, unless EHRs may frame the app (``frame_ancestors``): a browser drops Lax cookies set or sent in a cross-site
    frame, and the SMART launch inside an EHR's iframe never completed. Framed, they are ``SameSite=None; Secure``
    (browsers require Secure with None) and ``Partitioned`` (CHIPS: kept per embedding site, so they still work where
    third-party cookies are blocked, and no other site that embeds the app shares them).
    """
    framed = bool(state.settings.frame_ancestors)
    response.set_cookie(
        name,
        value,
        max_age=state.settings.session_max_age_s,
        httponly=True,
        path="/",
        samesite="none" if framed else "lax",
        secure=framed or secure_cookies(state),
    )
    if framed:  # Starlette writes Partitioned only on Python 3.14+ (http.cookies); the header takes it as is
        header_name, header = response.raw_headers[-1]
        response.raw_headers[-1] = (header_name, header + b"; Partitioned")


def render(
    request: Request,
    state: AppState,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    form_targets: str = "",
) -> HTMLResponse:
    """Render a page with the shared context (knowledge base, disclaimer, CSRF token) and safe headers.

    ``form_targets`` widens the CSP ``form-action`` for a page whose form is redirected elsewhere (SMART launch).
    """
    token, fresh = csrf_token_for(request, state)
    manifest = state.engine.kb.manifest
    full = {
        "kb": state.engine.kb,
        "manifest": manifest,
        "disclaimer": {"text": manifest.disclaimer.text, "citations": state.engine.cite(manifest.disclaimer.citations)},
        "csrf_token": token,
        "definitions": state.engine.kb.definitions,
        "fact_label": lambda fact_name: state.engine.fact_label(str(fact_name)),
        "taking_words": taking_words,
        "check_text": lambda label: check_text(str(label), state.engine),
        "thanks_for": lambda anchor: _thanks_for(request, str(anchor)),
        "template_text": lambda text: PLACEHOLDER.sub(lambda m: f"[{state.engine.fact_label(m.group(1))}]", str(text)),
        "path": request.url.path,
        **context,
    }
    response = TEMPLATES.TemplateResponse(request, name, full, status_code=status_code)
    for header, value in SECURITY_HEADERS.items():
        response.headers[header] = value
    # Only this app, and the EHRs configured to embed it, may frame a page (no clickjacking of its forms).
    policy = f"{SECURITY_HEADERS['Content-Security-Policy']}; frame-ancestors 'self'"
    policy += "".join(f" {origin}" for origin in state.settings.frame_ancestors)
    if form_targets:
        policy = policy.replace("form-action 'self'", f"form-action 'self' {form_targets}")
    response.headers["Content-Security-Policy"] = policy
    if fresh:
        set_app_cookie(response, state, CSRF_COOKIE, token)
    return response


def _thanks_for(request: Request, anchor: str) -> str:
    """What a feedback form says after a post without JavaScript came back to it (``?feedback=thanks&at=``)."""
    params = request.query_params
    said = FEEDBACK_ANSWERS.get(params.get("feedback", ""), "")
    return said if params.get("at", "feedback") == anchor else ""
