"""Run Alembic from Python: the dev stack, the tests and `keel db upgrade` all come through here."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["configure_logging"] = False
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")


def downgrade_to_base(database_url: str | None = None) -> None:
    command.downgrade(alembic_config(database_url), "base")


def check_models_match(database_url: str | None = None) -> None:
    """Raise ``alembic.util.CommandError`` when the models and the migrations disagree."""
    command.check(alembic_config(database_url))
