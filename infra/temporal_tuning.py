"""Temporal latency tuning keel uses, as data. Evidence: ``bench/temporal_latency.py``.

Figures: p50 overhead (wall time minus the activity's own time) on the file-backed
``temporal server start-dev`` (CLI 1.9.1, Server 1.32), temporalio 1.35, on a 2-core machine
shared with other test runs (load average ~5), from interleaved bench runs; "default" is
start-dev as shipped, measured in the same run. "Sustained" = back to back, as in sequential
tests or a dev server with several workflows in flight.

Where the "exactly 50 ms per activity" comes from: the history service hands each new transfer
task (the workflow task after a start or after an activity completes, a non-eager activity
task, ...) to matching only after reading it back from its shard's transfer queue, and those
reads pass a token bucket of ``history.transferProcessorMaxPollRPS`` (default 20/s, burst 20).
The dev server has ONE history shard, so every workflow shares that bucket: after ~20 quick
reads each read waits for the next token, 50 ms per hop. A start is one hop (empty workflow
50 ms), each sequential activity one more (act1 100 ms, act5 300 ms), an Update running an
activity one (47 ms); a local activity none (10 ms). Those are the default-config figures with
WAL on, where nothing else blurs them. The second, noisier cost is SQLite's rollback journal
(see DEV_SERVER_SQLITE_PRAGMAS).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# --dynamic-config-value flags for the dev server. Also works through
# WorkflowEnvironment.start_local(dev_server_extra_args=dev_server_args()).
DEV_SERVER_DYNAMIC_CONFIG: dict[str, object] = {
    # THE fix for the 50 ms. A dev stack never comes near 1000 reads/s (burst 1000), so a task
    # is read as soon as it is written. It costs nothing at idle: the reader still only reads
    # when told a task was written (or once a minute). Alone, on a quiet machine: per extra
    # activity 50 -> 11-14 ms; on a busy one the rollback journal then eats the gain.
    "history.transferProcessorMaxPollRPS": 1000,
    # The activity task comes back in the RespondWorkflowTaskCompleted response instead of
    # going through the transfer queue and matching. Already on in Server 1.32 (the server's
    # activity_eager_execution counter moves with no flags); older servers default to false.
    # Turned off on the tuned server: act5 73 -> 88 ms, +3 ms per activity.
    "system.enableActivityEagerExecution": True,
    # Allows request_eager_start (below). Already on in Server 1.32; older servers default to
    # false. Turned off: the server denies every eager start, act1 22 -> 25 ms.
    "system.enableEagerWorkflowStart": True,
}

# --sqlite-pragma flags (start-dev accepts journal_mode and synchronous). start-dev funnels all
# persistence of all services through ONE SQLite connection, and with --db-filename the default
# rollback journal + synchronous=FULL syncs and creates/deletes the journal file on every
# commit, stalling everything queued behind it. Tuned server with the rollback journal instead:
# act1 22 -> 116 ms, per extra activity 13 -> 50 ms (load-dependent: 10-50 ms per hop).
# WAL + synchronous=normal measured the same as in-memory SQLite (act1 19-22 ms) and still
# survives a crash of the server process; only an OS crash or power loss can lose the last
# commits. WAL + synchronous=full (an fsync per commit) costs +2-3 ms per activity. The pragmas
# are harmless without --db-filename.
DEV_SERVER_SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}

# Client.start_workflow/execute_workflow(request_eager_start=...): the first workflow task comes
# back in the start response and goes straight to the worker, skipping the transfer queue and
# matching. act1 25 -> 22 ms p50, p99 73 -> 46 ms. Takes effect only when the starting Client is
# the one a running Worker on that task queue was built with (same process); with any other
# client the start is an ordinary one, so passing it always is free.
REQUEST_EAGER_WORKFLOW_START = True

# Worker(**WORKER_OPTIONS). Deliberately empty: no worker knob tried beat run-to-run noise
# (2 workflow / 1 activity pollers, autoscaling pollers, 1 matching partition), and the SDK
# defaults already keep eager activities (disable_eager_activity_execution=False) and the
# sticky workflow cache on. Never set max_cached_workflows=0: every workflow task then replays
# the whole history; Updates on a long-lived workflow went 18 -> 98 ms.
WORKER_OPTIONS: dict[str, Any] = {}


def dynamic_config_flags(values: Mapping[str, object]) -> list[str]:
    """``--dynamic-config-value KEY=VALUE`` pairs; start-dev rejects values that are not JSON."""
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
    """Extra ``temporal server start-dev`` arguments for keel's dev stack and tests."""
    return dynamic_config_flags(DEV_SERVER_DYNAMIC_CONFIG) + sqlite_pragma_flags(
        DEV_SERVER_SQLITE_PRAGMAS
    )
