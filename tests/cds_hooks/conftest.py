"""Fixtures for the CDS Hooks tests: the app with a frozen clock, a SQLite store and a trusted signing client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import WebSettings
from spasticity_cds.store import SqlFeedbackStore, open_store

from .helpers import BASE, Client, FrozenClock, new_client


@pytest.fixture
def hook_clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture(scope="session")
def signing_keys() -> Client:
    return new_client(FrozenClock())


@pytest.fixture
def client(signing_keys: Client, hook_clock: FrozenClock) -> Client:
    return Client(signing_keys.ec_key, signing_keys.rsa_key, hook_clock)


@pytest.fixture
def hook_store(tmp_path: Path, hook_clock: FrozenClock) -> Iterator[SqlFeedbackStore]:
    with open_store(f"sqlite:///{tmp_path / 'feedback.sqlite3'}", clock=hook_clock) as store:
        yield store


@pytest.fixture
def settings(tmp_path: Path, client: Client) -> WebSettings:
    return WebSettings(public_base_url=BASE, trusted_issuers_file=client.write_trust(tmp_path), max_body_bytes=200_000)


@pytest.fixture
def app(settings: WebSettings, hook_store: SqlFeedbackStore, hook_clock: FrozenClock) -> FastAPI:
    return create_app(settings, store=hook_store, clock=hook_clock)
