"""Latency keel adds around an activity on the file-backed dev server, per server configuration.

Run: ``.venv/bin/python bench/temporal_latency.py [--rounds N] [--configs a,b,...]``
(default: 25 rounds of default, xfer_rps, wal, keel; 2-3 minutes on a busy 2-core machine;
``--configs`` also takes the exploratory keel_* variants listed in ``CONFIGS``).

For every configuration it starts its own ``temporal server start-dev`` (SQLite file under a temp
dir, ports picked by ``WorkflowEnvironment.start_local``) and one worker in this process, then
measures in interleaved rounds: every round visits every configuration in a fresh random order,
so load from other processes on the machine hits every configuration alike. Cases:

* ``empty``      empty workflow, client start -> result
* ``act1``       workflow running 1 no-op regular activity, start -> result
* ``act5``       workflow running 5 sequential no-op regular activities, start -> result
* ``upd_act``    workflow Update whose handler runs 1 no-op regular activity
* ``upd_local``  workflow Update whose handler runs 1 no-op local activity
* ``act1_idle``  ``act1`` as the first call after the server sat idle (~1 s or more)
* ``act1_llm``   ``act1`` whose activity sleeps 200 ms (a stand-in for an LLM call), right after

Every figure is overhead: wall time minus the time the activities spent in their own code, i.e.
what keel adds over calling the function directly. The first five run back to back after a
drain (see ``run_block``). It prints p50/p99 per case per configuration, ratios against
``default`` measured in the same run, and the servers' eager-execution counters (proof that the
dynamic config passed through ``start_local(dev_server_extra_args=...)`` reached the server).
Workflows run unsandboxed, to time the server and transport path rather than sandbox CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import PollerBehaviorAutoscaling, UnsandboxedWorkflowRunner, Worker

from infra.temporal_tuning import (
    DEV_SERVER_DYNAMIC_CONFIG,
    DEV_SERVER_SQLITE_PRAGMAS,
    REQUEST_EAGER_WORKFLOW_START,
    WORKER_OPTIONS,
    dynamic_config_flags,
    sqlite_pragma_flags,
)

TEMPORAL_CLI = Path(sys.executable).with_name("temporal")
TASK_QUEUE = "bench-latency"
# Measured back to back, after the drain (see run_block).
SUSTAINED_CASES = ("empty", "act1", "act5", "upd_act", "upd_local")
# Measured first in a configuration's turn, after it sat idle while the others ran.
IDLE_CASES = ("act1_idle", "act1_llm")
ALL_CASES = (*SUSTAINED_CASES, *IDLE_CASES)
LLM_CALL_MS = 200  # what act1_llm's activity sleeps: a stand-in for a (short) LLM call
BASELINE = "default"
WARMUP_ROUNDS = 2
DRAIN_WORKFLOWS = 12
ACTIVITY_TIMEOUT = timedelta(seconds=30)
CALL_TIMEOUT_S = 60.0  # fail, rather than hang, if a dev server goes away mid-run
SERVER_START_ATTEMPTS = 3


# --- Workflows and activities -----------------------------------------------------------------


@activity.defn
async def llm_call(sleep_ms: int) -> float:
    """The activity under test: sleeps ``sleep_ms`` (0: a no-op); returns its own wall time."""
    started = time.perf_counter()
    if sleep_ms:
        await asyncio.sleep(sleep_ms / 1000)
    return (time.perf_counter() - started) * 1000


@workflow.defn
class EmptyWorkflow:
    @workflow.run
    async def run(self) -> float:
        return 0.0


@workflow.defn
class ActivitiesWorkflow:
    @workflow.run
    async def run(self, count: int, sleep_ms: int) -> float:
        spent = 0.0
        for _ in range(count):
            spent += await workflow.execute_activity(
                llm_call, sleep_ms, start_to_close_timeout=ACTIVITY_TIMEOUT
            )
        return spent


@workflow.defn
class UpdateHostWorkflow:
    """A long-lived workflow whose Updates each run one activity and return."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.signal
    def finish(self) -> None:
        self._done = True

    @workflow.update
    async def via_activity(self) -> float:
        return await workflow.execute_activity(llm_call, 0, start_to_close_timeout=ACTIVITY_TIMEOUT)

    @workflow.update
    async def via_local_activity(self) -> float:
        return await workflow.execute_local_activity(
            llm_call, 0, start_to_close_timeout=ACTIVITY_TIMEOUT
        )


# --- Configurations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    name: str
    summary: str
    dynamic_config: Mapping[str, object] = field(default_factory=dict)
    sqlite_pragmas: Mapping[str, str] = field(default_factory=dict)
    in_memory: bool = False
    eager_start: bool = False
    worker_options: Mapping[str, Any] = field(default_factory=dict)

    def server_args(self, metrics_port: int) -> list[str]:
        args = dynamic_config_flags(self.dynamic_config) + sqlite_pragma_flags(self.sqlite_pragmas)
        return [*args, "--metrics-port", str(metrics_port)]


EAGER_ACTIVITY_OFF = {"system.enableActivityEagerExecution": False}
TRANSFER_RPS = {"history.transferProcessorMaxPollRPS": 1000}


def keel(
    name: str = "keel",
    summary: str = "infra.temporal_tuning: dev_server_args() + eager start + worker options",
    *,
    dynamic_config: Mapping[str, object] = DEV_SERVER_DYNAMIC_CONFIG,
    sqlite_pragmas: Mapping[str, str] = DEV_SERVER_SQLITE_PRAGMAS,
    in_memory: bool = False,
    eager_start: bool = REQUEST_EAGER_WORKFLOW_START,
    worker_options: Mapping[str, Any] = WORKER_OPTIONS,
) -> BenchConfig:
    """What keel ships (infra.temporal_tuning), optionally with one thing changed."""
    return BenchConfig(
        name, summary, dynamic_config, sqlite_pragmas, in_memory, eager_start, worker_options
    )


CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig("default", "start-dev as shipped (file-backed), SDK defaults"),
        BenchConfig("xfer_rps", "only history.transferProcessorMaxPollRPS=1000", TRANSFER_RPS),
        BenchConfig(
            "wal",
            "only --sqlite-pragma journal_mode=wal, synchronous=normal",
            sqlite_pragmas=DEV_SERVER_SQLITE_PRAGMAS,
        ),
        keel(),
        # Exploratory variants (select with --configs).
        keel(
            "keel_rollback",
            "keel without the SQLite pragmas (rollback journal, FULL sync)",
            sqlite_pragmas={},
        ),
        keel(
            "keel_walfull",
            "keel with journal_mode=wal but synchronous=full (fsync on every commit)",
            sqlite_pragmas={"journal_mode": "wal", "synchronous": "full"},
        ),
        keel(
            "keel_mem",
            "keel on in-memory SQLite (no --db-filename, no pragmas)",
            in_memory=True,
            sqlite_pragmas={},
        ),
        keel("keel_no_estart", "keel without request_eager_start", eager_start=False),
        keel(
            "keel_no_estart_srv",
            "keel + system.enableEagerWorkflowStart=false",
            dynamic_config={
                **DEV_SERVER_DYNAMIC_CONFIG,
                "system.enableEagerWorkflowStart": False,
            },
        ),
        keel(
            "keel_no_eager_act",
            "keel + system.enableActivityEagerExecution=false",
            dynamic_config={**DEV_SERVER_DYNAMIC_CONFIG, **EAGER_ACTIVITY_OFF},
        ),
        keel(
            "keel_1part",
            "keel + 1 matching read/write partition per task queue",
            dynamic_config={
                **DEV_SERVER_DYNAMIC_CONFIG,
                "matching.numTaskqueueReadPartitions": 1,
                "matching.numTaskqueueWritePartitions": 1,
            },
        ),
        keel(
            "keel_1poll",
            "keel + 2 workflow-task pollers, 1 activity-task poller",
            worker_options={
                **WORKER_OPTIONS,
                "max_concurrent_workflow_task_polls": 2,  # the minimum with a workflow cache
                "max_concurrent_activity_task_polls": 1,
            },
        ),
        keel(
            "keel_autopoll",
            "keel + autoscaling pollers",
            worker_options={
                **WORKER_OPTIONS,
                "workflow_task_poller_behavior": PollerBehaviorAutoscaling(),
                "activity_task_poller_behavior": PollerBehaviorAutoscaling(),
            },
        ),
        keel(
            "keel_nocache",
            "keel + max_cached_workflows=0 (no sticky execution)",
            worker_options={**WORKER_OPTIONS, "max_cached_workflows": 0},
        ),
    )
}
DEFAULT_CONFIGS = ("default", "xfer_rps", "wal", "keel")


# --- Harness ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Target:
    config: BenchConfig
    env: WorkflowEnvironment
    worker: Worker
    update_host: WorkflowHandle[Any, Any] | None
    metrics_port: int
    samples: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in ALL_CASES})

    @property
    def client(self) -> Client:
        return self.env.client

    @property
    def host(self) -> WorkflowHandle[Any, Any]:
        assert self.update_host is not None, "start_target sets it"
        return self.update_host

    def case(self, name: str) -> Callable[[], Awaitable[float]]:
        """The call measuring ``name``; it returns the activities' own time, to subtract."""
        client, eager = self.client, self.config.eager_start

        async def run_workflow(count: int, sleep_ms: int) -> float:
            wf_id = f"bench-{uuid.uuid4()}"
            if count == 0:
                return await client.execute_workflow(
                    EmptyWorkflow.run, id=wf_id, task_queue=TASK_QUEUE, request_eager_start=eager
                )
            return await client.execute_workflow(
                ActivitiesWorkflow.run,
                args=[count, sleep_ms],
                id=wf_id,
                task_queue=TASK_QUEUE,
                request_eager_start=eager,
            )

        calls: dict[str, Callable[[], Awaitable[float]]] = {
            "empty": lambda: run_workflow(0, 0),
            "act1": lambda: run_workflow(1, 0),
            "act5": lambda: run_workflow(5, 0),
            "upd_act": lambda: self.host.execute_update(UpdateHostWorkflow.via_activity),
            "upd_local": lambda: self.host.execute_update(UpdateHostWorkflow.via_local_activity),
            "act1_idle": lambda: run_workflow(1, 0),
            "act1_llm": lambda: run_workflow(1, LLM_CALL_MS),
        }
        return calls[name]


async def start_server(config: BenchConfig, data_dir: Path) -> tuple[WorkflowEnvironment, int]:
    """Start the configuration's dev server; retry when a picked free port got taken meanwhile
    (other people's servers start on this machine too)."""
    for attempt in range(1, SERVER_START_ATTEMPTS + 1):
        metrics_port = free_port()
        db_file = data_dir / f"{config.name}-{attempt}.sqlite"
        try:
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=str(TEMPORAL_CLI),
                dev_server_database_filename=None if config.in_memory else str(db_file),
                dev_server_extra_args=config.server_args(metrics_port),
                dev_server_log_level="error",
                dev_server_startup_timeout=timedelta(seconds=30),
            )
        except RuntimeError as err:
            if attempt == SERVER_START_ATTEMPTS:
                raise
            print(f"{config.name}: dev server did not start ({err}); retrying", flush=True)
            continue
        return env, metrics_port
    raise AssertionError("unreachable")


async def start_target(config: BenchConfig, data_dir: Path) -> Target:
    env, metrics_port = await start_server(config, data_dir)
    try:
        worker = Worker(
            env.client,
            task_queue=TASK_QUEUE,
            workflows=[EmptyWorkflow, ActivitiesWorkflow, UpdateHostWorkflow],
            activities=[llm_call],
            workflow_runner=UnsandboxedWorkflowRunner(),
            **dict(config.worker_options),
        )
        await worker.__aenter__()
    except BaseException:
        await env.shutdown()
        raise
    target = Target(config, env, worker, None, metrics_port)
    try:
        target.update_host = await env.client.start_workflow(
            UpdateHostWorkflow.run, id=f"bench-update-host-{uuid.uuid4()}", task_queue=TASK_QUEUE
        )
    except BaseException:
        await stop_target(target)
        raise
    return target


async def stop_target(target: Target) -> None:
    try:
        if target.update_host is not None:
            await asyncio.wait_for(target.update_host.signal(UpdateHostWorkflow.finish), 10)
            await asyncio.wait_for(target.update_host.result(), 10)
        await asyncio.wait_for(target.worker.__aexit__(None, None, None), 30)
    finally:
        await target.env.shutdown()


def eager_counters(port: int) -> dict[str, float]:
    """Sum the server's eager-execution counters from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(
            r"^(activity_eager_execution|workflow_eager_execution\w*)\{.*\}\s+(\S+)$", line
        )
        if match:
            totals[match[1]] = totals.get(match[1], 0.0) + float(match[2])
    return totals


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is close to the maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def overhead_ms(call: Callable[[], Awaitable[float]]) -> float:
    """Wall time of ``call`` minus the time its activities spent in their own code."""
    started = time.perf_counter()
    activity_ms = await asyncio.wait_for(call(), CALL_TIMEOUT_S)
    return (time.perf_counter() - started) * 1000 - activity_ms


async def run_block(target: Target, passes: int, record: bool) -> None:
    """One configuration's turn in a round.

    The history service reads its transfer queue through a token bucket (20 reads/s, burst 20;
    see infra/temporal_tuning.py), so what ran just before a sample matters. The turn starts
    with the idle cases (the bucket refilled while the other configurations ran; this is what a
    lone workflow whose LLM calls take seconds sees), then drains the bucket with back-to-back
    empty workflows, then measures the sustained cases: the state of sequential tests or of a
    dev server with several workflows in flight.
    """
    samples: dict[str, list[float]] = {case: [] for case in ALL_CASES}
    for case in IDLE_CASES:
        samples[case].append(await overhead_ms(target.case(case)))
    drain = target.case("empty")
    for _ in range(DRAIN_WORKFLOWS):
        await drain()
    for _ in range(passes):
        for case in SUSTAINED_CASES:
            samples[case].append(await overhead_ms(target.case(case)))
    if record:
        for case, values in samples.items():
            target.samples[case] += values


async def run_rounds(targets: Sequence[Target], rounds: int, passes: int) -> None:
    for round_no in range(WARMUP_ROUNDS + rounds):
        order = list(targets)
        random.shuffle(order)
        for target in order:
            await run_block(target, passes, record=round_no >= WARMUP_ROUNDS)


def report(targets: Sequence[Target], rounds: int) -> None:
    base = next((t for t in targets if t.config.name == BASELINE), targets[0])
    print(
        f"\n{rounds} interleaved rounds (after {WARMUP_ROUNDS} warm-up); overhead in ms "
        f"(wall time minus the activities' own time); p99 is nearest-rank, so with fewer than "
        f"100 samples it is about the maximum; ratio = config / {base.config.name}, same run\n"
    )
    header = (
        f"{'case':<10} {'config':<18} {'p50':>7} {'p99':>7} {'p50 ratio':>10} {'p99 ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for case in ALL_CASES:
        base_p50 = statistics.median(base.samples[case])
        base_p99 = percentile(base.samples[case], 99)
        for target in targets:
            values = target.samples[case]
            p50, p99 = statistics.median(values), percentile(values, 99)
            print(
                f"{case:<10} {target.config.name:<18} {p50:7.1f} {p99:7.1f} "
                f"{p50 / base_p50:10.2f} {p99 / base_p99:10.2f}"
            )
        print()
    print("added p50 per extra sequential activity = (act5 - act1) / 4:")
    for target in targets:
        per = statistics.median(target.samples["act5"]) - statistics.median(target.samples["act1"])
        print(f"  {target.config.name:<18} {per / 4:6.1f} ms")
    print("\nserver eager-execution counters (from each dev server's /metrics):")
    for target in targets:
        try:
            counters = eager_counters(target.metrics_port)
        except OSError as err:
            print(f"  {target.config.name:<18} metrics unavailable: {err}")
            continue
        shown = ", ".join(f"{k}={v:g}" for k, v in sorted(counters.items())) or "none"
        print(f"  {target.config.name:<18} {shown}")
    print("\nconfigurations:")
    for target in targets:
        cfg = target.config
        flags = " ".join(cfg.server_args(0)[:-2]) or "(no extra flags)"
        extra = [f"request_eager_start={cfg.eager_start}"]
        extra += [f"{k}={v!r}" for k, v in cfg.worker_options.items()]
        print(
            f"  {cfg.name:<18} {cfg.summary}\n  {'':<18} server: {flags}\n"
            f"  {'':<18} client/worker: {', '.join(extra)}"
        )


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=25, help="measured rounds (default 25)")
    parser.add_argument(
        "--passes", type=int, default=1, help="measured passes per configuration per round"
    )
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated subset of: {', '.join(CONFIGS)}",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    if not TEMPORAL_CLI.exists():
        parser.error(f"no temporal CLI at {TEMPORAL_CLI}")

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        targets: list[Target] = []
        try:
            for name in names:  # one at a time: concurrent starts race for the same free ports
                targets.append(await start_target(CONFIGS[name], Path(tmp)))
            print(
                f"started {len(targets)} dev servers in {time.perf_counter() - began:.1f}s; "
                f"measuring {args.rounds} rounds ...",
                flush=True,
            )
            await run_rounds(targets, args.rounds, args.passes)
            report(targets, args.rounds)
        finally:
            await asyncio.gather(*(stop_target(t) for t in targets), return_exceptions=True)
    print(f"\ntotal {time.perf_counter() - began:.0f}s", flush=True)


if __name__ == "__main__":
    exit_code = 0
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        exit_code = 130
    except Exception:
        traceback.print_exc()
        exit_code = 1
    # The SDK's Rust runtime threads can abort or hang interpreter finalization
    # ("PyGILState_Release ... must be current"); everything is shut down by now, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
