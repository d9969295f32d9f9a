"""Web settings from TOML, trusted CDS clients from TOML or JSON, and the `serve` command's wiring."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from spasticity_cds.interfaces.cli import serve_command
from spasticity_cds.interfaces.web.app import create_app
from spasticity_cds.interfaces.web.config import (
    CONFIG_ENV,
    ConfigError,
    WebSettings,
    load_settings,
    load_trusted_issuers,
    settings_from_environment,
)

from .helpers import Client


def test_settings_load_from_toml_with_relative_paths(tmp_path: Path) -> None:
    config = tmp_path / "cds.toml"
    config.write_text(
        'public_base_url = "https://cds.example.org/"\nauth_required = true\n'
        'trusted_issuers_file = "issuers.toml"\nfhir_timeout_s = 0.8\n'
        'cors_origins = ["https://ehr.example.org"]\nworkers = 2\n[kb_settings]\njurisdiction = "uk"\n',
        encoding="utf-8",
    )
    settings = load_settings(config)
    assert settings.base_url == "https://cds.example.org"
    assert settings.trusted_issuers_file == tmp_path / "issuers.toml"
    assert settings.cors_origins == ("https://ehr.example.org",) and settings.workers == 2
    assert settings.kb_settings == {"jurisdiction": "uk"} and settings.fhir_timeout_s == 0.8
    assert settings.launch_url == "https://cds.example.org/smart/launch"
    assert not settings.smart_launch_on and settings.card_launch_url is None  # no EHR registered: no smart link


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("publik_base_url = 'x'", "unknown setting 'publik_base_url'"),
        ("auth_required = 'no'", "auth_required has the wrong type"),
        ("workers = 0", "workers must be >= 1"),
        ("public_base_url = 'cds.example.org'", "absolute http(s) URL"),
        ("cors_origins = '*'", "array of strings"),
        ("this is not toml", "cannot read"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "cds.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_settings(config)


def test_settings_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert settings_from_environment() == WebSettings()
    config = tmp_path / "cds.toml"
    config.write_text('public_base_url = "https://x.example.org"', encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    assert settings_from_environment().public_base_url == "https://x.example.org"


def test_trusted_issuers_from_toml_and_json(tmp_path: Path, client: Client) -> None:
    (issuer,) = load_trusted_issuers(client.write_trust(tmp_path))
    assert issuer.iss == client.iss and set(issuer.static_keys) == {"ec-1", "rsa-1"}
    as_json = tmp_path / "issuers.json"
    as_json.write_text(
        json.dumps(
            {
                "issuer": [
                    {
                        "iss": "https://sandbox.cds-hooks.org",
                        "jku_allowlist": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],
                        "algorithms": ["ES384"],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    (sandbox,) = load_trusted_issuers(as_json)
    assert sandbox.algorithms == ("ES384",) and sandbox.jwks is None


@pytest.mark.parametrize(
    "content",
    [
        '[[issuer]]\njku_allowlist = ["x"]',
        '[[issuer]]\niss = "a"',
        '[[issuer]]\niss = "a"\njku_allowlist = ["x"]\nalgorithms = ["HS256"]',
        "issuer = 3",
    ],
)
def test_bad_trusted_issuers_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "issuers.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_trusted_issuers(path)


def test_serve_command_checks_config_then_starts_uvicorn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    config = tmp_path / "cds.toml"
    config.write_text(
        f'store_url = "sqlite:///{tmp_path / "s.sqlite3"}"\nauth_required = false\nport = 8123\n'
        "smart_allow_any_iss = true\n",
        encoding="utf-8",
    )
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    output = io.StringIO()
    code = serve_command.run(
        parser.parse_args(["--config", str(config), "--workers", "3"]), Console(file=output, width=200)
    )
    assert code == 0
    ((app, kwargs),) = calls
    assert app == serve_command.APP_FACTORY and kwargs["factory"] is True
    assert (kwargs["workers"], kwargs["port"], kwargs["host"]) == (3, 8123, "127.0.0.1")
    assert "authentication is OFF" in output.getvalue() and "PostgreSQL" in output.getvalue()
    assert "SMART launch is open to any FHIR server" in " ".join(output.getvalue().split())
    assert "feedback report (/reports/feedback) is off" in output.getvalue()
    assert kwargs["log_config"]["handlers"]["access"]["filters"] == ["smart"]  # no SMART secrets in the access log
    import os

    assert os.environ[CONFIG_ENV] == str(config.resolve())


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('severe_mas_grade = "three"', "severe_mas_grade must be a number from 0 up"),
        ('jurisdiction = "fr"', "jurisdiction must be one of us, uk"),
        ("jurisdictoin = 'uk'", "unknown setting 'jurisdictoin'"),
    ],
)
def test_a_bad_kb_setting_stops_the_server_at_start(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(f"[kb_settings]\n{table}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        create_app(load_settings(path))
