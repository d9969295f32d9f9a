"""The services this CDS offers and the discovery document (CDS Hooks 2.0, plus 3.0's version fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spasticity_cds.cds_hooks.prefetch import Template, templates_for
from spasticity_cds.engine.evaluator import Engine

SPEC_VERSION = "2.0.1"
HOOK_VERSION = "1.0"
EXTENSION_PREFIX = "org.spasticity-cds"
USAGE = (
    "For clinicians caring for adults with ALS / motor neuron disease. Needs read access to the patient, "
    "conditions, medication orders and statements, observations (labs, vital signs, scores), procedures and "
    "devices; missing data is named in each card. Decision support only: the clinician reviews the basis."
)


@dataclass(frozen=True)
class ServiceSpec:
    """One CDS service: its id, hook, texts, and whether it checks draft orders."""

    id: str
    hook: str
    title: str
    description: str
    order_checks: bool


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        id="als-spasticity-review",
        hook="patient-view",
        title="ALS spasticity: regimen review",
        description=(
            "Passive review of the current antispasticity regimen of a patient with ALS against the treatment "
            "ladder: safety problems, doses above kidney-adjusted ceilings, monitoring due and data gaps."
        ),
        order_checks=False,
    ),
    ServiceSpec(
        id="als-spasticity-order-select",
        hook="order-select",
        title="ALS spasticity: order check (select)",
        description=(
            "Checks the antispastic being selected (baclofen, tizanidine, dantrolene, gabapentin, clonidine, "
            "benzodiazepines, nabiximols): contraindications, interactions, dose against kidney and liver "
            "function, and the respiratory gate. Silent when the order already fits."
        ),
        order_checks=True,
    ),
    ServiceSpec(
        id="als-spasticity-order-sign",
        hook="order-sign",
        title="ALS spasticity: order check (sign)",
        description=(
            "Final check of antispastic orders before signing: contraindications, interactions, dose against "
            "kidney and liver function, and the respiratory gate; suggests a kidney-adjusted dose or liver tests."
        ),
        order_checks=True,
    ),
)
SERVICES_BY_ID = {service.id: service for service in SERVICES}


class ServiceCatalogue:
    """The services with their prefetch templates, derived once from the knowledge base."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.templates: dict[str, list[Template]] = {
            service.id: templates_for(engine, order_checks=service.order_checks) for service in SERVICES
        }

    def get(self, service_id: str) -> ServiceSpec | None:
        """The service with this id, if offered."""
        return SERVICES_BY_ID.get(service_id)

    def discovery(self) -> dict[str, Any]:
        """The body of ``GET /cds-services``."""
        manifest = self.engine.kb.manifest
        return {"services": [self._entry(service, manifest.version) for service in SERVICES]}

    def _entry(self, service: ServiceSpec, kb_version: str) -> dict[str, Any]:
        return {
            "hook": service.hook,
            "id": service.id,
            "title": service.title,
            "description": service.description,
            "prefetch": {template.key: template.query for template in self.templates[service.id]},
            "usageRequirements": USAGE,
            "version": SPEC_VERSION,
            "hookVersion": HOOK_VERSION,
            "extension": {
                f"{EXTENSION_PREFIX}.kbVersion": kb_version,
                f"{EXTENSION_PREFIX}.kbDigest": self.engine.kb.digest,
            },
        }
