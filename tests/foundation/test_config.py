"""One settings class: env variables (KEEL_* and the ecosystem's own names), shown with secrets
masked by `keel config show`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infra.settings import KeelSettings, get_settings, to_asyncpg_url
from starters.cli import app

SECRET_KEY = "sk-proj-ConfigShowMustMaskThisKey42"


def test_config_show_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.setenv("DATABASE_URL", "postgresql://keel:db-password-123@db.internal:5432/keel")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["config", "show", "--json"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert SECRET_KEY not in result.output
    assert "db-password-123" not in result.output
    assert shown["openai_api_key"] == "***"
    assert shown["effective_database_url"] == "postgresql+asyncpg://keel:***@db.internal:5432/keel"
    assert shown["effective_temporal_address"] == "temporal.internal:7233"
    assert shown["llm_backend"] == "providers"


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert KeelSettings().uses_simulator


def test_database_url_spellings_are_normalised() -> None:
    assert to_asyncpg_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert to_asyncpg_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    with pytest.raises(ValueError, match="must start with postgresql://"):
        to_asyncpg_url("mysql://u@h/db")
