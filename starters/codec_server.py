"""``keel codec-server``: decode keel's encrypted payloads for the Temporal Web UI and CLI."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.codec_server import create_codec_app, serve
from infra.listening_socket import bind_tcp
from infra.payload_codec import EncryptionKeysError, codec_from_settings
from infra.settings import get_settings
from infra.structured_logging import configure_logging
from starters.output import console, error_console, fail

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def codec_server(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default KEEL_CODEC_SERVER_HOST, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port (default KEEL_CODEC_SERVER_PORT, 8234; 0: any free port)."),
    ] = None,
) -> None:
    """Serve POST /encode and /decode (Temporal's remote codec protocol) with keel's keys, so
    the Web UI and `temporal workflow show --codec-endpoint URL` show prompts and answers."""
    changes: dict[str, object] = {}
    if host is not None:
        changes["codec_server_host"] = host
    if port is not None:
        changes["codec_server_port"] = port
    settings = get_settings().model_copy(update=changes)
    configure_logging(settings)
    try:
        codec = codec_from_settings(settings)
    except EncryptionKeysError as error:
        fail(str(error))
    if not codec.key_ids:
        fail(
            "no encryption key is configured, so there is nothing to decode with",
            "set KEEL_ENCRYPTION_KEYS (or create the key file with `keel encryption-keys "
            "rotate`) to the keys your workers use",
        )
    token = settings.codec_server_token.get_secret_value() if settings.codec_server_token else None
    origins = settings.effective_codec_server_cors_origins
    try:
        sock = bind_tcp(settings.codec_server_host, settings.codec_server_port)
    except OSError as error:
        fail(
            f"cannot listen on {settings.codec_server_host}:{settings.codec_server_port}: "
            f"{error.strerror}",
            "choose another --port (KEEL_CODEC_SERVER_PORT), or stop what uses this one",
        )
    bound_port = sock.getsockname()[1]
    shown_host = (
        "127.0.0.1" if settings.codec_server_host == "0.0.0.0" else settings.codec_server_host
    )
    url = f"http://{shown_host}:{bound_port}"
    console.print(
        f"[bold]keel codec-server[/] on {url}  (keys: {', '.join(codec.key_ids)}; new payloads "
        f"use {codec.encrypting_key_id or 'no key: KEEL_ENCRYPTION=off'})"
    )
    console.print(f"Web UI origins allowed: {', '.join(origins) or 'none'}")
    auth = ' --codec-auth "Bearer $KEEL_CODEC_SERVER_TOKEN"' if token else ""
    console.print(
        f"[dim]CLI: temporal workflow show -w WORKFLOW_ID --codec-endpoint {url}{auth}[/]"
    )
    console.print(
        f"[dim]Web UI: temporal server start-dev --ui-codec-endpoint {url} (keel dev up does "
        "this), or TEMPORAL_CODEC_ENDPOINT for the temporalio/ui image[/]"
    )
    if token is None and settings.codec_server_host not in LOOPBACK_HOSTS:
        error_console.print(
            f"[bold yellow]warning:[/] listening on {settings.codec_server_host} without "
            "KEEL_CODEC_SERVER_TOKEN: whoever reaches this port can decrypt every prompt and "
            "answer; keep it on a private network or behind an authenticating proxy"
        )
    serve(create_codec_app(codec, allowed_origins=origins, token=token), sock)


if __name__ == "__main__":  # `python -m starters.codec_server` (what `keel dev up` runs)
    typer.run(codec_server)
