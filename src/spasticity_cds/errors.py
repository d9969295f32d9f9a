"""The one exception tree of spasticity-cds; every error a user can see is one of these.

    SpasticityCdsError                 base; carries a one-line message and where it happened
    ├── KnowledgeBaseError             a knowledge-base file is missing, malformed or inconsistent
    ├── InputError                     a FHIR input cannot be read (missing file, bad JSON, not FHIR, no Patient)
    ├── EvaluationError                the evaluator hit a state it cannot explain (a bug, reported, never hidden)
    ├── HookRequestError               a CDS Hooks request body breaks the specification (HTTP 400)
    ├── PrefetchUnavailableError       data a hook needs can be had neither from prefetch nor the FHIR server (412)
    ├── AuthenticationError            a CDS Hooks client JWT failed verification (HTTP 401, no detail)
    ├── StoreError                     the feedback store cannot read or write
    └── BatchError                     a population run cannot start (bad input folder, bad manifest)

Interfaces map these to exit codes (CLI) and HTTP statuses (web); nothing below the interfaces prints them.
"""

from __future__ import annotations


class SpasticityCdsError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class KnowledgeBaseError(SpasticityCdsError):
    """A knowledge-base file is missing, malformed, or refers to something that does not exist."""

    exit_code = 3


class InputError(SpasticityCdsError):
    """A FHIR input cannot be used: missing file, invalid JSON, not FHIR, or no Patient."""

    exit_code = 2
    http_status = 400


class EvaluationError(SpasticityCdsError):
    """The evaluator could not finish; names the rule and the node where it stopped."""

    exit_code = 4


class HookRequestError(SpasticityCdsError):
    """A CDS Hooks request or feedback body does not follow the specification."""

    exit_code = 2
    http_status = 400


class PrefetchUnavailableError(SpasticityCdsError):
    """Data required by a hook is neither prefetched nor obtainable from the FHIR server."""

    http_status = 412


class AuthenticationError(SpasticityCdsError):
    """A client JWT failed verification. The message is for logs only; clients see a bare 401."""

    http_status = 401


class StoreError(SpasticityCdsError):
    """The feedback store cannot be opened, migrated, read or written."""

    exit_code = 5
    http_status = 503


class BatchError(SpasticityCdsError):
    """A population run cannot start (unreadable input folder or manifest, unusable output folder) or lost a worker."""

    exit_code = 2
