"""``keel encryption-keys list | generate | rotate | retire``: the keys that encrypt payloads.

Keys are newest first: the first encrypts new payloads, every one decrypts. ``rotate`` and
``retire`` edit the key file (``KEEL_ENCRYPTION_KEYS_FILE``, default ``<home>/encryption-keys``);
keys given in ``KEEL_ENCRYPTION_KEYS`` live in your secret store, so there you edit the variable
(``generate`` prints a new entry for it). Processes read their keys at start: restart the workers,
the API and the codec server after a change.
"""

from __future__ import annotations

import stat
from typing import Annotated

import typer
from rich.markup import escape

from infra.payload_codec import (
    KEYS_VARIABLE,
    EncryptionKeysError,
    KeyRing,
    configured_keys,
    new_key,
    write_key_file,
)
from infra.settings import KeelSettings, get_settings
from starters.output import console, error_console, fail

encryption_keys_app = typer.Typer(
    help="Payload encryption keys: list them, generate one, rotate (a new key encrypts, old keys "
    "still decrypt), retire an old one.",
    no_args_is_help=True,
)

RESTART_HINT = (
    "restart the workers, the API and the codec server to use it (dev stack: `keel dev down` "
    "then `keel dev up`)"
)


def _ring(settings: KeelSettings) -> KeyRing:
    try:
        return configured_keys(settings)
    except EncryptionKeysError as error:
        fail(str(error))


def _file_ring(settings: KeelSettings, command: str) -> KeyRing:
    """The key file's keys; refuses when the keys come from KEEL_ENCRYPTION_KEYS."""
    if settings.encryption_keys is not None:
        fail(
            f"the keys come from {KEYS_VARIABLE}, which `keel encryption-keys {command}` cannot "
            "edit",
            f"edit {KEYS_VARIABLE} where it is stored: "
            + (
                "put the entry from `keel encryption-keys generate` first (to be safe with many "
                "processes: first add it last everywhere, then move it first)"
                if command == "rotate"
                else "remove the key's `id:…` entry"
            ),
        )
    return _ring(settings)


@encryption_keys_app.command("list")
def list_keys() -> None:
    """Show the key ids (never the keys), which one encrypts, and where they come from."""
    settings = get_settings()
    ring = _ring(settings)
    console.print(f"keys from {escape(ring.source)}")
    if not settings.encryption:
        console.print("[yellow]KEEL_ENCRYPTION=off: new payloads are stored unencrypted[/]")
    if not ring.keys:
        console.print("no keys yet: `keel encryption-keys rotate` creates the key file")
        return
    for position, key_id in enumerate(ring.key_ids):
        role = "encrypts and decrypts" if position == 0 and settings.encryption else "decrypts"
        console.print(f"  {escape(key_id)}  [dim]{role}[/]")
    if ring.file is not None:
        mode = stat.S_IMODE(ring.file.stat().st_mode)
        if mode & 0o077:
            error_console.print(
                f"[bold yellow]warning:[/] {escape(str(ring.file))} is readable by others "
                f"(mode {mode:o}): `chmod 600 {escape(str(ring.file))}`"
            )


@encryption_keys_app.command()
def generate(
    key_id: Annotated[
        str | None, typer.Option("--id", help="Key id (default: key-<date>-<random>).")
    ] = None,
) -> None:
    """Print a new random key as `id:base64key`, for KEEL_ENCRYPTION_KEYS or a secret store."""
    try:
        key = new_key(key_id)
    except EncryptionKeysError as error:
        fail(str(error))
    typer.echo(key.entry())
    error_console.print(
        f"[dim]Put it first in {KEYS_VARIABLE} (comma-separated, newest first) to encrypt with "
        "it; keep the old entries after it so older payloads stay readable.[/]"
    )


@encryption_keys_app.command()
def rotate(
    key_id: Annotated[
        str | None, typer.Option("--id", help="Key id (default: key-<date>-<random>).")
    ] = None,
) -> None:
    """Put a new key first in the key file (created if missing): it encrypts from now on, the
    old keys keep decrypting."""
    settings = get_settings()
    ring = _file_ring(settings, "rotate")
    try:
        key = new_key(key_id)
    except EncryptionKeysError as error:
        fail(str(error))
    if key.key_id in ring.key_ids:
        fail(f"key id {key.key_id!r} is already in use", "choose another --id")
    assert ring.file is not None
    write_key_file(ring.file, [key, *ring.keys])
    console.print(f"[green]✓[/] new key {escape(key.key_id)} encrypts from now on")
    if ring.keys:
        console.print(f"  older keys still decrypt: {escape(', '.join(ring.key_ids))}")
    console.print(f"  key file: {escape(str(ring.file))} (mode 600; back it up)")
    console.print(f"[dim]→ {RESTART_HINT}[/]")


@encryption_keys_app.command()
def retire(
    key_id: Annotated[str, typer.Argument(help="Id of the key to remove.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove an old key from the key file. What it encrypted becomes unreadable for good."""
    settings = get_settings()
    ring = _file_ring(settings, "retire")
    if key_id not in ring.key_ids:
        fail(
            f"no key {key_id!r} in {ring.source}",
            f"its keys: {', '.join(ring.key_ids) or 'none'}",
        )
    if ring.key_ids[0] == key_id and settings.encryption:
        fail(
            f"{key_id!r} is the key that encrypts new payloads",
            "run `keel encryption-keys rotate` first, then retire it",
        )
    if not yes:
        typer.confirm(
            f"Payloads encrypted with {key_id!r} (histories of workflows that ran while it "
            "encrypted, running or closed) will be unreadable forever; a running workflow that "
            "needs one fails its tasks. Retire it?",
            abort=True,
        )
    assert ring.file is not None
    remaining = [key for key in ring.keys if key.key_id != key_id]
    write_key_file(ring.file, remaining)
    shown = ", ".join(key.key_id for key in remaining) or "none"
    console.print(f"[green]✓[/] retired {escape(key_id)}; remaining keys: {escape(shown)}")
    console.print(f"[dim]→ {RESTART_HINT}[/]")
