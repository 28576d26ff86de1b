"""Signing job callbacks: HMAC-SHA256 over the timestamp and the exact body bytes.

Header: ``X-Keel-Signature: t=<unix seconds>,v1=<hex digest>``; the digest is
``HMAC_SHA256(secret, f"{t}.".encode() + body)``. A receiver recomputes it with the shared secret
(``verify_signature``), compares in constant time and rejects stale timestamps, so a captured
callback cannot be replayed later or altered in transit.

The secret is ``KEEL_CALLBACK_SIGNING_SECRET`` when set, else the secret file
(``KEEL_CALLBACK_SIGNING_SECRET_FILE``, default ``<home>/callback-signing-secret``, mode 0600),
which ``keel dev up`` creates on its first start, so the API and every worker of the dev stack
sign alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.settings import KeelSettings

SIGNATURE_HEADER = "X-Keel-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"t={stamp},v1={signature(secret, stamp, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and is no older than the tolerance."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        stamp = int(parts["t"])
        digest = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(digest, signature(secret, stamp, body))


# --- the secret: KEEL_CALLBACK_SIGNING_SECRET, else the secret file ----------------------------

SECRET_VARIABLE = "KEEL_CALLBACK_SIGNING_SECRET"
SECRET_FILE_VARIABLE = "KEEL_CALLBACK_SIGNING_SECRET_FILE"
SECRET_BYTES = 32


class SigningSecretError(Exception):
    """The signing secret is configured but cannot be used (unreadable or empty file)."""


def signing_secret(settings: KeelSettings) -> str | None:
    """The secret that signs callbacks: the variable when set, else the secret file's first
    line (the file the dev stack creates); None when neither holds one."""
    if settings.callback_signing_secret is not None:
        return settings.callback_signing_secret.get_secret_value()
    path = settings.effective_callback_signing_secret_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SigningSecretError(
            f"cannot read the callback signing secret file {path} ({SECRET_FILE_VARIABLE}): "
            f"{error.strerror}; check its owner and permissions"
        ) from None
    secret = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not secret:
        raise SigningSecretError(
            f"the callback signing secret file {path} ({SECRET_FILE_VARIABLE}) is empty; put "
            f"a secret in it (e.g. `openssl rand -hex 32`) or set {SECRET_VARIABLE}"
        )
    return secret


def missing_secret_hint(settings: KeelSettings) -> str:
    """What to do when no secret is configured (said by the API and by the worker)."""
    return (
        f"set {SECRET_VARIABLE}, or put the secret in "
        f"{settings.effective_callback_signing_secret_file} ({SECRET_FILE_VARIABLE}); "
        "`keel dev up` creates that file for the dev stack"
    )


def ensure_secret_file(settings: KeelSettings) -> Path | None:
    """Create the secret file (0600, a new random secret) when no secret is configured: the dev
    stack's first ``up``. Returns the file it created, or None when nothing was needed."""
    path = settings.effective_callback_signing_secret_file
    if settings.callback_signing_secret is not None or path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # O_CREAT's mode is masked by umask
        os.write(descriptor, (secrets.token_hex(SECRET_BYTES) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        # A link appears whole and never replaces a file: two `up`s at once keep one secret.
        os.link(temporary, path)
    except FileExistsError:
        return None
    finally:
        temporary.unlink()
    return path
