"""Deterministic synthetic ALS/MND patients as FHIR R4 resources, written as NDJSON bundles or Bulk Data."""

from __future__ import annotations

from spasticity_cds.synth.patient import AS_OF, generate_patient
from spasticity_cds.synth.profiles import PROFILES, Profile
from spasticity_cds.synth.writer import CohortSummary, write_cohort

__all__ = ["AS_OF", "PROFILES", "CohortSummary", "Profile", "generate_patient", "write_cohort"]
