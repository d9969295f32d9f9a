"""One hook call from request to cards: prefetch (or fetch), the one evaluator, then cards for the decision."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from spasticity_cds.api import read_patient
from spasticity_cds.cds_hooks.cards import CardBuilder, CardContext, IssuedCardInfo
from spasticity_cds.cds_hooks.fhir_client import FetchOutcome, url_within
from spasticity_cds.cds_hooks.models import HookRequest
from spasticity_cds.cds_hooks.orders import checked_orders, draft_resources
from spasticity_cds.cds_hooks.prefetch import PrefetchPlan, Template, plan_prefetch
from spasticity_cds.cds_hooks.services import ServiceCatalogue, ServiceSpec
from spasticity_cds.cds_hooks.urls import private_channel
from spasticity_cds.engine.facts import Value
from spasticity_cds.errors import HookRequestError, InputError, PrefetchUnavailableError
from spasticity_cds.fhir.model import Resource

PLAIN_HTTP_REFUSED = (
    "the request's fhirServer is plain http, which this service uses only on this machine or when "
    "fhir_server_allowlist names it (patient data and the access token would cross the network unencrypted)"
)


class Fetcher(Protocol):
    """The outbound FHIR seam (``fhir_client.FhirFetcher`` in production)."""

    async def fetch(
        self,
        server: str,
        token: str | None,
        queries: Mapping[str, str],
        next_pages: Mapping[str, str],
        single_page: frozenset[str] = frozenset(),
    ) -> FetchOutcome: ...


@dataclass(frozen=True)
class RunnerConfig:
    """Deployment facts the runner needs: public URLs, KB settings and which FHIR servers may be queried."""

    base_url: str
    #: None when SMART launch is off: cards then carry no smart link.
    smart_launch_url: str | None
    kb_settings: Mapping[str, Value] = field(default_factory=dict)
    fhir_server_allowlist: tuple[str, ...] = ()


@dataclass
class HookResult:
    """The cards of one call, what to store about them, and timings for the log."""

    cards: list[dict[str, Any]]
    issued: list[IssuedCardInfo]
    patient_reference: str | None = None
    kb_version: str | None = None
    fetched: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


class HookRunner:
    """Serves the service calls of one app; safe to share between concurrent requests."""

    def __init__(self, catalogue: ServiceCatalogue, fetcher: Fetcher, config: RunnerConfig) -> None:
        self.catalogue = catalogue
        self.engine = catalogue.engine
        self.fetcher = fetcher
        self.config = config
        self.cards = CardBuilder(self.engine)

    async def run(self, service: ServiceSpec, request: HookRequest, now: datetime) -> HookResult:
        """Cards for this call; HookRequestError (400) or PrefetchUnavailableError (412) when it cannot run."""
        started = time.perf_counter()
        if request.hook != service.hook:
            raise HookRequestError(f"service {service.id} answers the {service.hook} hook, not {request.hook!r}")
        drafts = draft_resources(request.context) if service.order_checks else []
        orders = checked_orders(self.engine, request.context, drafts, service.hook) if drafts else []
        if service.order_checks and not any(order.agent for order in orders):
            return HookResult([], [], timings_ms={"total": _ms(started)})
        templates = self.catalogue.templates[service.id]
        plan = plan_prefetch(templates, request.prefetch, request.context)
        fetched = await self._fetch_missing(plan, request, templates)
        resources, unavailable = _gather(templates, plan, fetched)
        gathered = time.perf_counter()
        result = self._evaluate(request, [*resources, *(checked for checked, _ in drafts)], now)
        ctx = CardContext(
            service_id=service.id,
            hook=service.hook,
            hook_instance=request.hookInstance,
            patient_id=request.patient_id,
            user_id=request.context.get("userId"),
            base_url=self.config.base_url,
            smart_launch_url=self.config.smart_launch_url,
            now=now,
            unavailable=unavailable,
            orders=tuple(order for order in orders if order.agent),
        )
        cards, issued = self.cards.build(result, ctx)
        return HookResult(
            cards,
            issued,
            patient_reference=result["patient"],
            kb_version=result["knowledge_base"]["version"],
            fetched=len(plan.to_fetch) + len(plan.next_pages),
            timings_ms={"data": _ms(started, gathered), "evaluate": _ms(gathered), "total": _ms(started)},
        )

    async def _fetch_missing(
        self, plan: PrefetchPlan, request: HookRequest, templates: Sequence[Template]
    ) -> FetchOutcome:
        if not plan.to_fetch and not plan.next_pages:
            return FetchOutcome()
        server = request.fhirServer
        if server is None:
            return _unfetched(plan, "the request names no fhirServer to fetch it from")
        allowed = self.config.fhir_server_allowlist
        if allowed and not any(url_within(server, prefix) for prefix in allowed):
            return _unfetched(plan, "the request's fhirServer is not on this service's allow-list")
        if not allowed and not private_channel(server):
            # An operator who lists a plain-http server has chosen it; a client alone cannot choose it.
            return _unfetched(plan, PLAIN_HTTP_REFUSED)
        token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
        single_page = frozenset(template.key for template in templates if not template.follow_next)
        return await self.fetcher.fetch(server, token, plan.to_fetch, plan.next_pages, single_page)

    def _evaluate(
        self, request: HookRequest, resources: Sequence[dict[str, Any] | Resource], now: datetime
    ) -> dict[str, Any]:
        try:
            record = read_patient(list(resources), source=f"hook {request.hookInstance}", patient_id=request.patient_id)
        except InputError as exc:
            raise PrefetchUnavailableError(f"the patient's record cannot be read: {exc.message}") from None
        return self.engine.evaluate(record, now, self.config.kb_settings)


def _gather(
    templates: Sequence[Template], plan: PrefetchPlan, fetched: FetchOutcome
) -> tuple[list[dict[str, Any] | Resource], dict[str, str]]:
    """All resources in hand; 412 when a required key is unobtainable, else optional gaps by description."""
    resources = list(plan.resources)
    for found in fetched.resources.values():
        resources.extend(found)
    failed = {key: reason for key, reason in plan.failed.items() if key not in fetched.resources}
    for key, fetch_error in fetched.failed.items():  # why it was to be fetched, then why that failed
        failed[key] = f"{_why_fetched(plan, key)}, and {fetch_error}"
    unavailable: dict[str, str] = {}
    for template in templates:
        reason = failed.get(template.key)
        if reason is None:
            continue
        if template.required:
            raise PrefetchUnavailableError(f"prefetch key {template.key!r} ({template.what}) is unobtainable: {reason}")
        unavailable[template.what] = f"not obtained ({reason})"
    return resources, unavailable


def _why_fetched(plan: PrefetchPlan, key: str) -> str:
    if key in plan.failed:
        return plan.failed[key]
    return "its next page was not prefetched" if key in plan.next_pages else "not prefetched"


def _unfetched(plan: PrefetchPlan, reason: str) -> FetchOutcome:
    """Every key the plan would fetch, failed for one reason."""
    return FetchOutcome(failed=dict.fromkeys([*plan.to_fetch, *plan.next_pages], reason))


def _ms(start: float, end: float | None = None) -> float:
    return round(((end or time.perf_counter()) - start) * 1000.0, 2)
