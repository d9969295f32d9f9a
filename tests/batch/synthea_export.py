"""The vendored Synthea Bulk export (``data/synthea-bulk-10``, see its PROVENANCE.md) with ALS added to it."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import orjson

EXPORT = Path(__file__).parent / "data" / "synthea-bulk-10"
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


def _added_resources(patient_ids: list[str]) -> list[dict[str, Any]]:
    """An ALS diagnosis for every patient; a baclofen or tizanidine order for two in three of them."""
    added: list[dict[str, Any]] = []
    for index, patient_id in enumerate(patient_ids):
        subject = {"reference": f"Patient/{patient_id}"}
        added.append(
            {
                "resourceType": "Condition",
                "id": f"als-{index}",
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [ALS], "text": "ALS"},
                "subject": subject,
                "onsetDateTime": "2025-03-01",
            }
        )
        if index % 3 in ORDERS:
            medication, milligrams = ORDERS[index % 3]
            added.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"antispastic-{index}",
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


def write_synthea_export(folder: Path) -> Path:
    """The vendored export plus one file of added ALS diagnoses and antispastic orders, in ``folder``."""
    shutil.copytree(EXPORT, folder)
    added = _added_resources(_patient_ids())
    (folder / "Added.ndjson").write_bytes(b"".join(orjson.dumps(resource) + b"\n" for resource in added))
    return folder
