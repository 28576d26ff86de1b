"""``keel sim``: run keel's LLM simulator in the foreground."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from infra.settings import get_settings
from llmsim import PROFILES, load_profile_file, serve
from starters.output import fail


def sim(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(help="Port (0: any free port). Default: KEEL_SIMULATOR_PORT / 8299."),
    ] = None,
    profile: Annotated[
        str, typer.Option(help=f"Fault profile: {', '.join(sorted(PROFILES))}.")
    ] = "none",
    profile_file: Annotated[
        Path | None,
        typer.Option(
            help="Fault profile file (JSON or YAML), applied on top of --profile.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds reply text and fault draws.")] = 0,
    latency_scale: Annotated[
        float, typer.Option(min=0, help="Multiplies model latencies; 0 answers at once.")
    ] = 1.0,
) -> None:
    """Run the LLM simulator: an OpenAI- and Anthropic-compatible API with seeded faults."""
    if profile not in PROFILES:
        raise typer.BadParameter(
            f"unknown profile {profile!r}; choose from {', '.join(sorted(PROFILES))}",
            param_hint="--profile",
        )
    if profile_file is not None:
        try:
            load_profile_file(profile_file)  # serve() loads it again; this says what is wrong
        except ValidationError as error:
            first = error.errors()[0]
            fail(
                f"--profile-file {profile_file}: {'.'.join(map(str, first['loc']))}: "
                f"{first['msg']}",
                "the fields are FaultProfile's (llmsim/config.py)",
            )
        except Exception as error:  # not UTF-8, not JSON or YAML
            problem = (str(error).strip().splitlines() or [type(error).__name__])[0]
            fail(
                f"--profile-file {profile_file} is not a fault profile: {problem}",
                "a JSON object (or YAML, for a .yaml / .yml file) of FaultProfile's fields "
                "(llmsim/config.py)",
            )
    chosen_port = get_settings().simulator_port if port is None else port

    listening = False

    def ready(url: str) -> None:
        nonlocal listening
        listening = True
        typer.echo(f"keel LLM simulator listening on {url} (profile: {profile}, seed: {seed})")
        typer.echo("Point the SDKs at it (any API key is accepted):")
        typer.echo(f"  export OPENAI_BASE_URL={url}/v1")
        typer.echo(f"  export ANTHROPIC_BASE_URL={url}")
        typer.echo(f"Admin: {url}/admin/stats, {url}/admin/faults. Ctrl-C to stop.")

    try:
        serve(
            host=host,
            port=chosen_port,
            profile=profile,
            seed=seed,
            latency_scale=latency_scale,
            profile_file=profile_file,
            on_ready=ready,
        )
    except OSError as error:
        if listening:  # not a startup problem: a bug, with its traceback
            raise
        fail(
            f"cannot listen on {host}:{chosen_port}: {error.strerror or error}",
            "choose another --port (KEEL_SIMULATOR_PORT), or stop what uses this one "
            "(keel dev status: is the dev stack's simulator running?)"
            if error.errno == errno.EADDRINUSE
            else "check --host: it must be an address of this machine",
        )
