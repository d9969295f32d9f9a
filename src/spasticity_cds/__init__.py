"""spasticity-cds: cited clinical decision support for treating spasticity in ALS / motor neuron disease."""

from spasticity_cds.api import evaluate, explain, load_knowledge_base, read_patient, to_json
from spasticity_cds.engine.evaluator import Engine
from spasticity_cds.errors import (
    AuthenticationError,
    BatchError,
    EvaluationError,
    HookRequestError,
    InputError,
    KnowledgeBaseError,
    PrefetchUnavailableError,
    SpasticityCdsError,
    StoreError,
)
from spasticity_cds.fhir.record import PatientRecord

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BatchError",
    "Engine",
    "EvaluationError",
    "HookRequestError",
    "InputError",
    "KnowledgeBaseError",
    "PatientRecord",
    "PrefetchUnavailableError",
    "SpasticityCdsError",
    "StoreError",
    "__version__",
    "evaluate",
    "explain",
    "load_knowledge_base",
    "read_patient",
    "to_json",
]
