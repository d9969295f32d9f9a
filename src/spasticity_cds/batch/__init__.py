"""Population worklists over FHIR Bulk Data NDJSON: the one evaluator per patient, on DuckDB or PySpark."""

from __future__ import annotations

from spasticity_cds.batch.policy import is_actionable
from spasticity_cds.batch.runner import BatchOptions, BatchSummary, run_batch

__all__ = ["BatchOptions", "BatchSummary", "is_actionable", "run_batch"]
