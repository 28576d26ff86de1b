"""Signing job callbacks: HMAC-SHA256 over the timestamp and the exact body bytes.

Header: ``X-Keel-Signature: t=<unix seconds>,v1=<hex digest>``; the digest is
``HMAC_SHA256(secret, f"{t}.".encode() + body)``. A receiver recomputes it with the shared secret
(``verify_signature``), compares in constant time and rejects stale timestamps, so a captured
callback cannot be replayed later or altered in transit.
"""

from __future__ import annotations

import hashlib
import hmac
import time

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
