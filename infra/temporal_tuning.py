"""Temporal latency tuning keel uses (draft; figures filled in from bench/temporal_latency.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

DEV_SERVER_DYNAMIC_CONFIG: dict[str, object] = {
    "history.transferProcessorMaxPollRPS": 1000,
    "system.enableActivityEagerExecution": True,
}

DEV_SERVER_SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}

REQUEST_EAGER_WORKFLOW_START = True

WORKER_OPTIONS: dict[str, Any] = {}


def dynamic_config_flags(values: Mapping[str, object]) -> list[str]:
    flags: list[str] = []
    for key, value in values.items():
        flags += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    return flags


def sqlite_pragma_flags(pragmas: Mapping[str, str]) -> list[str]:
    flags: list[str] = []
    for key, value in pragmas.items():
        flags += ["--sqlite-pragma", f"{key}={value}"]
    return flags


def dev_server_args() -> list[str]:
    return dynamic_config_flags(DEV_SERVER_DYNAMIC_CONFIG) + sqlite_pragma_flags(
        DEV_SERVER_SQLITE_PRAGMAS
    )
