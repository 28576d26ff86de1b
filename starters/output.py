"""What every command prints: one console, the Web UI link, clean errors with non-zero exits."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from infra.settings import KeelSettings

console = Console()
error_console = Console(stderr=True)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    error_console.print(f"[bold red]error:[/] {message}")
    if hint:
        error_console.print(f"[dim]→ {hint}[/]")
    raise typer.Exit(code)


def workflow_link(settings: KeelSettings, workflow_id: str) -> str:
    if not settings.uses_dev_temporal:
        return f"workflow {workflow_id} (namespace {settings.temporal_namespace})"
    return f"{settings.web_ui_url}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"
