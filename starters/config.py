"""``keel config show``: the effective settings, secrets masked."""

from __future__ import annotations

import json

import typer
from pydantic import SecretStr

from infra.settings import get_settings
from starters.output import console

config_app = typer.Typer(help="Inspect keel's settings.", no_args_is_help=True)


@config_app.command("show")
def show(as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective settings (env, .env and defaults), with every secret masked."""
    settings = get_settings()
    values = settings.model_dump(mode="json")
    for name, value in settings:
        if isinstance(value, SecretStr):
            values[name] = "***" if value.get_secret_value() else ""
    values["home_origin"] = settings.home_origin  # why `home` is this directory
    values["effective_encryption_keys_file"] = str(settings.effective_encryption_keys_file)
    values["effective_temporal_address"] = settings.effective_temporal_address
    values["effective_database_url"] = _mask_url(settings.effective_database_url)
    values["llm_backend"] = "simulator" if settings.uses_simulator else "providers"
    if as_json:
        print(json.dumps(values, indent=2, default=str))
        return
    for name, value in values.items():
        console.print(f"[bold]{name}[/] = {json.dumps(value, default=str)}", highlight=False)


def _mask_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
