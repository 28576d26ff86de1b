"""keel's zero-setup local stack: Temporal dev server, embedded Postgres, LLM simulator, workers.

``keel dev up | down | status`` (``starters/dev.py``) is a thin CLI over :mod:`devstack.stack`.
All state lives under ``settings.home`` (``.keel/`` or ``KEEL_HOME``).
"""

from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.processes import ManagedProcess, PortClaim, StopOutcome
from devstack.stack import PartStatus, StackStatus, down, print_status, status, up

__all__ = [
    "DevStackError",
    "ManagedProcess",
    "PartStatus",
    "PortClaim",
    "StackLayout",
    "StackStatus",
    "StopOutcome",
    "down",
    "print_status",
    "status",
    "up",
]
