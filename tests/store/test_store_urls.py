"""Store URLs: the default SQLite file, supported databases, and errors that never show a password."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spasticity_cds.errors import StoreError
from spasticity_cds.store import default_store_url, open_store
from spasticity_cds.store.connection import resolve_store_url

SECRET = "s3cr3t-pa55word"


def _unused_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_default_store_is_a_sqlite_file_in_the_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected_file = tmp_path / "data" / "spasticity-cds" / "feedback.sqlite3"

    assert default_store_url() == f"sqlite+pysqlite:///{expected_file}"
    with open_store(None) as store:
        assert store.counts().hook_feedback == 0
    assert expected_file.is_file()


def test_plain_postgresql_url_uses_psycopg_3() -> None:
    assert resolve_store_url("postgresql://u:p@db/x").drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a database URL"),
        (f"mysql://user:{SECRET}@db/feedback", "unsupported feedback store database 'mysql'"),
        (f"postgresql+psycopg2://user:{SECRET}@db/feedback", "unsupported PostgreSQL driver"),
        ("sqlite://", "needs a SQLite file path"),
        ("sqlite:///:memory:", "needs a SQLite file path"),
    ],
)
def test_unusable_urls_are_store_errors_without_the_password(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as raised:
        open_store(url)
    assert SECRET not in str(raised.value)


def test_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    url = f"postgresql+psycopg://user:{SECRET}@127.0.0.1:{_unused_local_port()}/feedback"

    with pytest.raises(StoreError, match="could not open and migrate the feedback store") as raised:
        open_store(url)
    assert SECRET not in str(raised.value)
    assert "user:***@127.0.0.1" in str(raised.value)


def test_sqlite_file_in_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unable to open database file"):
        open_store(f"sqlite:///{tmp_path / 'missing' / 'feedback.sqlite3'}")
