"""What every command prints: one console, the Web UI link, clean errors with non-zero exits."""

from __future__ import annotations

import os
import sys
from typing import NoReturn, TextIO

import typer
from rich.console import Console

from infra.settings import KeelSettings

# Piped or captured output gets room for whole model names and ids instead of rich's 80 columns,
# unless COLUMNS says how wide (rich reads it when the width is left to it).
_PIPED_WIDTH = 160


def _width(stream: TextIO) -> int | None:
    return None if stream.isatty() or os.environ.get("COLUMNS") else _PIPED_WIDTH


console = Console(width=_width(sys.stdout))
error_console = Console(stderr=True, width=_width(sys.stderr))


def print_error(message: str, hint: str | None = None) -> None:
    # soft_wrap: an error stays one line however long, so it can be read and grepped whole.
    error_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if hint:
        error_console.print(f"[dim]→ {hint}[/]", soft_wrap=True)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    print_error(message, hint)
    raise typer.Exit(code)


def workflow_link(settings: KeelSettings, workflow_id: str) -> str:
    if not settings.uses_dev_temporal:
        return f"workflow {workflow_id} (namespace {settings.temporal_namespace})"
    return f"{settings.web_ui_url}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"
