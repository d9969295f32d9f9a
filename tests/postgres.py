"""The test PostgreSQL server: a new, empty schema per test, dropped afterwards; skipped when none is configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "SPASTICITY_CDS_TEST_POSTGRES_URL"


def postgres_base_url() -> str:
    """The configured server's URL; the test is skipped without one."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set (start a server with scripts/start-postgres)")
    return url


@contextmanager
def fresh_schema(prefix: str) -> Iterator[str]:
    """A store URL whose search_path is a new, empty schema named ``{prefix}_...`` (dropped afterwards)."""
    base = postgres_base_url()
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
