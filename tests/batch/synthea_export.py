"""Third-party test data: the vendored Synthea Bulk export with ALS added, Synthea-style Bundles of it, and
helpers that add an ALS diagnosis and an antispastic order and group an export per patient."""

from __future__ import annotations

import gzip
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

DATA = Path(__file__).parent / "data"
EXPORT = DATA / "synthea-bulk-10"
ALS = {"system": "http://snomed.info/sct", "code": "86044005", "display": "Amyotrophic lateral sclerosis"}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
#: The added orders, by patient index modulo 3: baclofen 10 mg three times a day, tizanidine 4 mg three times a day.
ORDERS = {
    0: ({"coding": [{"system": RXNORM, "code": "197391"}], "text": "Baclofen 10 MG Oral Tablet"}, 10),
    1: ({"coding": [{"system": RXNORM, "code": "57258"}], "text": "tizanidine 4 MG Oral Tablet"}, 4),
}
CONTEXT_FILES = ("Location", "Organization", "Practitioner", "PractitionerRole")


def _patient_ids() -> list[str]:
    with gzip.open(EXPORT / "Patient.000.ndjson.gz") as handle:
        return [orjson.loads(line)["id"] for line in handle]


def als_with(patient_id: str, tag: str, order: int | None = None) -> list[dict[str, Any]]:
    """An ALS diagnosis for the patient and, for ``order`` 0 or 1, a baclofen or tizanidine order (``ORDERS``),
    three times a day; ``tag`` makes the resource ids unique."""
    subject = {"reference": f"Patient/{patient_id}"}
    added: list[dict[str, Any]] = [
        {
            "resourceType": "Condition",
            "id": f"als-{tag}",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [ALS], "text": "ALS"},
            "subject": subject,
            "onsetDateTime": "2025-03-01",
        }
    ]
    if order is not None:
        medication, milligrams = ORDERS[order]
        added.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"antispastic-{tag}",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": medication,
                "subject": subject,
                "authoredOn": "2026-06-01",
                "dosageInstruction": [
                    {
                        "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                        "doseAndRate": [{"doseQuantity": {"value": milligrams, "unit": "mg"}}],
                    }
                ],
            }
        )
    return added


def added_resources(patient_ids: list[str]) -> list[dict[str, Any]]:
    """An ALS diagnosis for every patient; a baclofen or tizanidine order for two in three of them."""
    return [
        resource
        for index, patient_id in enumerate(patient_ids)
        for resource in als_with(patient_id, str(index), index % 3 if index % 3 in ORDERS else None)
    ]


def vendored(name: str, folder: Path) -> Path:
    """A copy of the vendored data set ``data/{name}`` in ``folder``, without its licence file (not an input)."""
    shutil.copytree(DATA / name, folder, ignore=shutil.ignore_patterns("LICENSE"))
    return folder


def write_synthea_export(folder: Path) -> Path:
    """The vendored export plus one file of added ALS diagnoses and antispastic orders, in ``folder``."""
    shutil.copytree(EXPORT, folder)
    added = added_resources(_patient_ids())
    (folder / "Added.ndjson").write_bytes(b"".join(orjson.dumps(resource) + b"\n" for resource in added))
    return folder


def resources_of(folder: Path) -> list[dict[str, Any]]:
    """Every resource of an export folder, file by file."""
    resources: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.ndjson*")):
        if path.name != "log.ndjson":
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as handle:
                resources.extend(orjson.loads(line) for line in handle)
    return resources


def _as_urn(value: Any, ids: set[str]) -> Any:
    """``value`` with every ``Type/id`` reference to a resource of the Bundle turned into ``urn:uuid:id``."""
    if isinstance(value, dict):
        return {
            key: f"urn:uuid:{item.split('/', 1)[1]}"
            if key == "reference" and isinstance(item, str) and item.split("/", 1)[-1] in ids
            else _as_urn(item, ids)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_as_urn(item, ids) for item in value]
    return value


def _transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A Bundle as Synthea writes one: urn:uuid fullUrls and links, a Provenance targeting every entry."""
    ids = {resource["id"] for resource in resources}
    provenance = {
        "resourceType": "Provenance",
        "id": f"provenance-{resources[0]['id']}",
        "target": [{"reference": f"{resource['resourceType']}/{resource['id']}"} for resource in resources],
        "recorded": "2026-10-01T00:00:00Z",
    }
    ids.add(provenance["id"])
    entries = [
        {
            "fullUrl": f"urn:uuid:{resource['id']}",
            "resource": _as_urn(resource, ids),
            "request": {"method": "POST", "url": resource["resourceType"]},
        }
        for resource in [*resources, provenance]
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def by_patient(export: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The export's resources grouped per patient here, without any batch code, and those no patient owns."""
    per_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    unowned: list[dict[str, Any]] = []
    for resource in resources_of(export):
        link = resource.get("subject") or resource.get("patient") or resource.get("beneficiary")
        if resource["resourceType"] == "Patient":
            per_patient[f"Patient/{resource['id']}"].append(resource)
        elif link is None:
            unowned.append(resource)
        else:
            per_patient[link["reference"]].append(resource)
    return per_patient, unowned


def write_synthea_bundles(export: Path, folder: Path) -> Path:
    """The export re-bundled per patient in ``folder`` (urn:uuid links, a Provenance each), plus one batch Bundle
    of practitioners and places: the layout of Synthea's default exporter, rebuilt from the export."""
    folder.mkdir(parents=True)
    per_patient, unowned = by_patient(export)
    for key, resources in per_patient.items():
        resources.sort(key=lambda resource: resource["resourceType"] != "Patient")
        (folder / f"{key.removeprefix('Patient/')}.json").write_bytes(orjson.dumps(_transaction(resources)))
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": item} for item in unowned]}
    (folder / "hospitalInformation.json").write_bytes(orjson.dumps(batch))
    return folder
