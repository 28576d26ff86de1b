"""Stable hashes: every "random" choice in the simulator derives from one of these.

Python's ``hash()`` is salted per process and the global ``random`` state is shared, so
neither could replay a run; a SHA-256 of the inputs can, across processes and machines.
"""

from __future__ import annotations

import hashlib
import random

_SEP = "\x1f"


def stable_int(*parts: object) -> int:
    """A 64-bit integer determined only by ``parts`` (compared by their ``str``)."""
    digest = hashlib.sha256(_SEP.join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def unit_interval(*parts: object) -> float:
    """A float in [0, 1) determined only by ``parts``."""
    return stable_int(*parts) / 2**64


def rng_for(*parts: object) -> random.Random:
    """A private PRNG seeded from ``parts``; ``random.Random(int)`` is stable across versions."""
    return random.Random(stable_int(*parts))
