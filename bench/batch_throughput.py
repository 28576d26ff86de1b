"""Batch throughput: keel vs what a user would write without it vs the engine's ceiling, in one
run on one file-backed Temporal dev server.

Run: ``.venv/bin/python bench/batch_throughput.py`` (the spec: 5,000 items, concurrency 200,
simulator latency 1 s). Scale down with ``--items`` / ``--concurrency`` / ``--latency``;
``--repeats N`` measures each rate N times and prints the median.

(a) keel: a batch submitted through ``services.batches.submit_batch`` and run by real batch
    worker processes (``python -m workers --queue …``, launched as ``keel dev up`` launches
    them: ``--nice`` included, ``--batch-nice`` to change it), items in Postgres.
(b) asyncio: one process, the OpenAI SDK, an ``asyncio.Semaphore(concurrency)``, results
    written to a JSONL file — the script a user writes without keel.
(c) bare Temporal: one workflow keeping ``concurrency`` no-op activities in flight (no provider
    latency, so keel/bare is capped near 0.5 by construction: printed, not a target).

While (a) runs, an interactive worker process answers sequential ``AskWorkflow`` calls (against
a zero-latency simulator of its own, so the figure is keel's latency, not the provider's); the
same calls are timed with the batch idle, in the same run. Their phases (from each call's
history) say where the p99 goes under load.

Figures: items/s, ``keel/asyncio``, ``keel/bare``, ``interactive p99 under batch / idle``, and
**CPU ms per item by process** (``/proc/<pid>/stat`` utime+stime of each process and its
children, before/after the batch): each keel process, the Temporal server and the simulators
separately, and the total of keel processes + Temporal server.

Modes:
  ``--large``       keel alone on 100,000 items (``--large-items``): completion, wall time,
                    items/s, every run's history event count (the continue-as-new chain, walked
                    with the Temporal client), the batch worker's peak RSS (VmHWM).
  ``--scale-out``   items/s with 1, 2 and 4 batch worker processes (``--scale-out-workers``) at
                    concurrency 1,000, and the plain script at the same concurrency.
  ``--workers N``   N batch worker processes in the default mode.

Needs a Postgres (``KEEL_TEST_DATABASE_URL`` / ``DATABASE_URL``, default 127.0.0.1:5432): a
scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import openai
import psutil
from sqlalchemy import func, select
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.batch.files import BatchFileLimits, parse_lines
from contracts.batch import BatchOptions
from contracts.search_attributes import ALL_SEARCH_ATTRIBUTES
from devstack.ephemeral import use_throwaway_key_if_unset
from devstack.stack import BATCH_WORKER_NICE, worker_argv
from infra.database import dispose_engines, session_factory
from infra.migrate import upgrade_to_head
from infra.settings import get_settings, to_asyncpg_url
from infra.tables import LlmCall
from infra.temporal_client import keel_data_converter
from infra.temporal_tuning import dev_server_args
from services.batches import submit_batch
from workflows.ask import AskInput, AskWorkflow

REPO = Path(__file__).resolve().parent.parent
TEMPORAL_CLI = Path(sys.executable).with_name("temporal")
MODEL = "gpt-4o-mini"
MAX_TOKENS = 32
PROVIDER_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
)


def prompt(n: int) -> str:
    return f"Item {n}: classify this support ticket in one word."


# --- (c) the engine's ceiling ----------------------------------------------------------------


@activity.defn(name="bench_noop")
async def noop(n: int) -> int:
    return n


@workflow.defn(name="BenchFanOut")
class FanOutWorkflow:
    """``concurrency`` no-op activities in flight until ``items`` have run."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.done = 0

    @workflow.run
    async def run(self, items: int, concurrency: int) -> int:
        tasks = []
        for n in range(items):
            await workflow.wait_condition(lambda: self.in_flight < concurrency)
            self.in_flight += 1
            tasks.append(asyncio.create_task(self.one(n)))
        await asyncio.gather(*tasks)
        return self.done

    async def one(self, n: int) -> None:
        await workflow.execute_activity(noop, n, start_to_close_timeout=timedelta(seconds=60))
        self.in_flight -= 1
        self.done += 1


async def bare_temporal(client: Client, items: int, concurrency: int) -> float:
    queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[FanOutWorkflow],
        activities=[noop],
        max_concurrent_activities=max(concurrency, 100),
        # The engine's ceiling: no sandbox CPU (keel's own workflows run sandboxed).
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        started = time.perf_counter()
        await client.execute_workflow(
            FanOutWorkflow.run, args=[items, concurrency], id=queue, task_queue=queue
        )
        return items / (time.perf_counter() - started)


# --- (b) what a user writes without keel -----------------------------------------------------


async def plain_asyncio(sim_url: str, items: int, concurrency: int, out: Path) -> float:
    # A generous connect timeout: at concurrency 1,000 on a busy host the SDK's default (5 s)
    # gives up while the simulator is still accepting the burst of connections.
    sdk = openai.AsyncOpenAI(
        base_url=f"{sim_url}/v1",
        api_key="sim",
        max_retries=3,
        timeout=openai.Timeout(120.0, connect=60.0),
    )
    gate = asyncio.Semaphore(concurrency)
    results: list[str] = []
    failures: list[str] = []

    async def one(n: int) -> None:
        async with gate:
            try:
                reply = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt(n)}],
                    max_tokens=MAX_TOKENS,
                )
            except openai.APIError as exc:  # what the script's user would log and move past
                failures.append(type(exc).__name__)
                return
            results.append(
                json.dumps({"custom_id": f"i{n}", "text": reply.choices[0].message.content})
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(items)))
    await asyncio.to_thread(out.write_text, "\n".join(results) + "\n")
    rate = items / (time.perf_counter() - started)
    await sdk.close()
    if failures:
        kinds = ", ".join(sorted(set(failures)))
        print(f"    asyncio: {len(failures)} of {items} calls failed ({kinds})", flush=True)
    return rate


# --- Processes: simulators, workers -------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    peak_rss: int = 0
    current_rss: int = 0

    def sample(self) -> None:
        try:
            self.current_rss = psutil.Process(self.process.pid).memory_info().rss
            self.peak_rss = max(self.peak_rss, self.current_rss)
        except psutil.Error:
            pass

    def high_water_rss(self) -> int:
        """The kernel's own peak (VmHWM), which sampling could miss."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return self.peak_rss
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return max(self.peak_rss, int(match.group(1)) * 1024 if match else 0)


@dataclass
class Children:
    scratch: Path
    started: list[Child] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log = self.scratch / f"{name}.log"
        process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    async def wait_for(self, child: Child, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited:\n{child.log.read_text()[-3000:]}")
            match = re.search(pattern, child.log.read_text(errors="replace"))
            if match:
                return match
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{child.name} never logged {pattern!r}")

    def stop(self, child: Child) -> None:
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(30)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def stop_all(self) -> None:
        for child in reversed(self.started):
            self.stop(child)


@contextmanager
def children(scratch: Path) -> Iterator[Children]:
    running = Children(scratch)
    try:
        yield running
    finally:
        running.stop_all()


async def simulator(kids: Children, name: str, *flags: str) -> tuple[str, Child]:
    child = kids.spawn(
        name,
        [
            sys.executable,
            "-m",
            "llmsim",
            "--port",
            "0",
            "--no-access-log",
            "--log-level",
            "warning",
            *flags,
        ],
        dict(os.environ),
    )
    return (await kids.wait_for(child, r"llmsim listening on (\S+)")).group(1), child


# --- CPU by process -----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of one process (``/proc/<pid>/stat`` fields 14-17): its
    own CPU and that of the children it has waited for."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" start at field 3.
    fields = stat.rpartition(")")[2].split()
    return sum(int(ticks) for ticks in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of every live descendant (e.g. the program a wrapper runs)."""
    total = _stat_cpu_seconds(pid) or 0.0
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for descendant in descendants:
        total += _stat_cpu_seconds(descendant.pid) or 0.0
    return total


def _schedstat_wait_ns(task: Path) -> int:
    """Field 2 of ``schedstat``: nanoseconds the thread was runnable but not running."""
    with suppress(OSError, IndexError, ValueError):
        return int((task / "schedstat").read_text().split()[1])
    return 0


def run_queue_wait_seconds(pid: int, *, descendants: bool = True) -> float:
    """Time the threads of ``pid`` (and of its live descendants) spent waiting for a CPU, summed
    over threads: the direct measure of CPU contention."""
    pids = [pid]
    if descendants:
        with suppress(psutil.Error):
            pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    total_ns = 0
    for one in pids:
        with suppress(OSError):
            total_ns += sum(map(_schedstat_wait_ns, Path(f"/proc/{one}/task").iterdir()))
    return total_ns / 1e9


def main_thread_wait_seconds(pid: int) -> float:
    """The same for the main thread alone: a Python worker's event loop runs there."""
    return _schedstat_wait_ns(Path(f"/proc/{pid}/task/{pid}")) / 1e9


def own_cpu_seconds() -> float:
    """This process alone (it is the parent of everything else measured)."""
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True)
class Measured:
    label: str
    pid: int | None  # None: this process (the bench driver)
    keel: bool  # counts toward "keel processes + Temporal server"

    def cpu_seconds(self) -> float:
        return own_cpu_seconds() if self.pid is None else tree_cpu_seconds(self.pid)

    def waited_seconds(self) -> float:
        if self.pid is None:
            return run_queue_wait_seconds(os.getpid(), descendants=False)
        return run_queue_wait_seconds(self.pid)


@dataclass
class CpuShare:
    label: str
    seconds: float
    keel: bool
    waited: float  # run-queue wait over the same span (all threads)
    loop_waited: float  # the main thread's (the event loop's)


class CpuMeter:
    """CPU seconds each process spent between ``start()`` and ``stop()``."""

    def __init__(self, processes: Sequence[Measured]) -> None:
        self.processes = list(processes)
        self.before: dict[Measured, tuple[float, float, float]] = {}

    def start(self) -> None:
        self.before = {p: self.read(p) for p in self.processes}

    @staticmethod
    def read(process: Measured) -> tuple[float, float, float]:
        loop = main_thread_wait_seconds(process.pid or os.getpid())
        return process.cpu_seconds(), process.waited_seconds(), loop

    def stop(self) -> list[CpuShare]:
        shares = []
        for process in self.processes:
            now = self.read(process)
            cpu, waited, loop = (
                after - before for after, before in zip(now, self.before[process], strict=True)
            )
            shares.append(CpuShare(process.label, cpu, process.keel, waited, loop))
        return shares


def temporal_server_pids() -> list[int]:
    """The Temporal dev server(s) this process started (``temporal server start-dev``)."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith("temporal"):
                pids.append(process.pid)
        except psutil.Error:
            pass
    return pids


# --- Postgres -----------------------------------------------------------------------------------


def _server_url() -> str:
    explicit = os.environ.get("KEEL_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    url = explicit or "postgresql://postgres@127.0.0.1:5432/postgres"
    return to_asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    server = _server_url()
    name = f"keel_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server.rpartition("/")[0] + "/postgres")
    await admin.execute(f"CREATE DATABASE {name}")
    url = server.rpartition("/")[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
    finally:
        await dispose_engines()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


# --- The stack the bench runs on ------------------------------------------------------------------


@dataclass
class Stack:
    client: Client
    kids: Children
    args: argparse.Namespace
    batch_queue: str
    interactive_queue: str
    worker_env: dict[str, str]
    batch_sim_url: str
    interactive_worker: Child
    simulators: list[Child]
    server_pids: list[int]
    batch_workers: list[Child] = field(default_factory=list)

    async def start_batch_workers(self, count: int) -> None:
        """``count`` batch worker processes on the batch queue, launched as ``keel dev up``
        launches its batch worker (same argv, ``--nice`` included)."""
        argv = list(worker_argv(self.batch_queue, nice=self.args.batch_nice))
        env = self.worker_env | {"KEEL_SIMULATOR_URL": self.batch_sim_url}
        for n in range(len(self.batch_workers), count):
            worker = self.kids.spawn(f"worker-batch-{n + 1}", argv, env)
            self.batch_workers.append(worker)
        for worker in self.batch_workers:
            await self.kids.wait_for(worker, "worker.started")

    def stop_batch_workers(self) -> None:
        for worker in self.batch_workers:
            self.kids.stop(worker)
        self.batch_workers = []

    def measured(self) -> list[Measured]:
        """Every process whose CPU the bench reports, keel's own first."""
        several = len(self.batch_workers) > 1
        batch = [
            Measured(f"batch worker {n + 1}" if several else "batch worker", w.process.pid, True)
            for n, w in enumerate(self.batch_workers)
        ]
        return [
            *batch,
            Measured("interactive worker", self.interactive_worker.process.pid, True),
            *(Measured("Temporal server", pid, True) for pid in self.server_pids),
            *(Measured(sim.name, sim.process.pid, False) for sim in self.simulators),
            Measured("bench driver (submits, times the interactive calls)", None, False),
        ]


# --- (a) keel, and the interactive probe ----------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


@dataclass(frozen=True)
class AskSample:
    ms: float
    workflow_id: str


async def ask_latencies(
    client: Client, queue: str, stop: asyncio.Event | None, count: int, gap_s: float
) -> list[AskSample]:
    """Sequential interactive calls: ``count`` of them, or until ``stop`` is set."""
    samples: list[AskSample] = []
    while (stop is None and len(samples) < count) or (stop is not None and not stop.is_set()):
        workflow_id = f"bench-ask-{uuid.uuid4().hex[:10]}"
        started = time.perf_counter()
        await client.execute_workflow(
            AskWorkflow.run,
            AskInput(prompt="One word: is the sky blue?", models=[MODEL], max_tokens=8),
            id=workflow_id,
            task_queue=queue,
        )
        samples.append(AskSample((time.perf_counter() - started) * 1000, workflow_id))
        await asyncio.sleep(gap_s)
    return samples


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


PHASES = (
    "workflow task waits (scheduled → started)",
    "workflow task runs incl. local activities",
    "activity waits (scheduled → started)",
    "activity runs",
    "outside the history (client ↔ server)",
)


async def ask_phases(client: Client, sample: AskSample) -> dict[str, float]:
    """Where one interactive call's time went, from its history (ms per phase)."""
    history = await client.get_workflow_handle(sample.workflow_id).fetch_history()
    phases = dict.fromkeys(PHASES, 0.0)
    opened: dict[int, datetime] = {}
    for event in history.events:
        at = event.event_time.ToDatetime()
        kind = event.event_type
        if kind in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        ):
            opened[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            scheduled = event.workflow_task_started_event_attributes.scheduled_event_id
            phases[PHASES[0]] += _ms(at - opened[scheduled])
            opened[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            started = event.workflow_task_completed_event_attributes.started_event_id
            phases[PHASES[1]] += _ms(at - opened[started])
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            scheduled = event.activity_task_started_event_attributes.scheduled_event_id
            phases[PHASES[2]] += _ms(at - opened[scheduled])
            opened[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            started = event.activity_task_completed_event_attributes.started_event_id
            phases[PHASES[3]] += _ms(at - opened[started])
    span = history.events[-1].event_time.ToDatetime() - history.events[0].event_time.ToDatetime()
    phases[PHASES[4]] = sample.ms - _ms(span)
    return phases


async def phase_report(client: Client, idle: list[AskSample], busy: list[AskSample]) -> list[str]:
    """Mean of each phase idle, under batch, and in the slowest 5 % under batch (the tail)."""
    idle_phases = [await ask_phases(client, sample) for sample in idle]
    busy_phases = [await ask_phases(client, sample) for sample in busy]
    slowest = sorted(range(len(busy)), key=lambda i: -busy[i].ms)[: max(1, len(busy) // 20)]

    def mean(rows: list[dict[str, float]], phase: str) -> float:
        return statistics.fmean(row[phase] for row in rows) if rows else 0.0

    lines = [f"  {'phase (mean ms)':44}{'idle':>8}{'batch':>8}{'slowest 5%':>12}"]
    for phase in PHASES:
        tail = [busy_phases[i] for i in slowest]
        lines.append(
            f"  {phase:44}{mean(idle_phases, phase):>8.0f}{mean(busy_phases, phase):>8.0f}"
            f"{mean(tail, phase):>12.0f}"
        )
    return lines


async def run_history_lengths(client: Client, workflow_id: str, first_run_id: str) -> list[int]:
    """Events in each run of the batch's continue-as-new chain, first run first."""
    lengths = []
    run_id: str | None = first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        lengths.append(len(history.events))
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else None
        )
    return lengths


async def where_the_time_goes(client: Client, workflow_id: str) -> list[str]:
    """From the last run's history and the ledger: what an item's ~latency turned into."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    scheduled: dict[int, datetime] = {}
    started: dict[int, datetime] = {}
    queue_wait, running, to_next_task, task_time = [], [], [], []
    completions: list[datetime] = []
    task_started: datetime | None = None
    markers = tasks = 0
    for event in history.events:
        at = event.event_time.ToDatetime()
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            sid = event.activity_task_started_event_attributes.scheduled_event_id
            started[sid] = at
            queue_wait.append(_ms(at - scheduled[sid]))
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = event.activity_task_completed_event_attributes.scheduled_event_id
            if sid in started:
                running.append(_ms(at - started[sid]))
            completions.append(at)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            task_started, tasks = at, tasks + 1
            to_next_task += [_ms(at - done) for done in completions]
            completions = []
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and task_started:
            task_time.append(_ms(at - task_started))
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            markers += 1
    async with session_factory()() as session:
        provider = (
            await session.execute(
                select(func.avg(LlmCall.latency_ms), func.avg(LlmCall.first_token_ms)).where(
                    LlmCall.workflow_id == workflow_id
                )
            )
        ).one()

    def avg(values: list[float]) -> str:
        return f"{statistics.fmean(values):.0f} ms" if values else "—"

    busy = sum(task_time) / 1000
    span = _ms(
        history.events[-1].event_time.ToDatetime() - history.events[0].event_time.ToDatetime()
    )
    return [
        f"last run: {len(history.events)} events, {tasks} workflow tasks, {markers} markers "
        f"(local activities), {len(running)} activities",
        f"  activity queue wait (scheduled → started)  avg {avg(queue_wait)}",
        f"  activity run (started → completed)         avg {avg(running)}"
        f"  · provider call (ledger) avg {float(provider[0] or 0):.0f} ms, "
        # A page asks for whole answers (nobody watches a batch item's tokens): no first token.
        + (
            f"first token {float(provider[1]):.0f} ms"
            if provider[1] is not None
            else "answers not streamed"
        ),
        f"  completion → next workflow task started    avg {avg(to_next_task)}",
        f"  workflow task (started → completed)        avg {avg(task_time)}, "
        f"busy {busy:.1f}s of {span / 1000:.1f}s ({busy / max(span / 1000, 1e-9):.0%})",
    ]


@dataclass
class KeelRun:
    items: int
    rate: float
    wall_s: float
    load_s: float
    result: Any  # the batch workflow's result (ok, failed, …), whatever its model
    history_lengths: list[int]
    peak_rss_mb: float
    cpu: list[CpuShare]
    ask_busy: list[AskSample]
    breakdown: list[str]
    # (seconds into the batch, batch workers' RSS in MB): does memory plateau, or grow?
    rss_timeline: list[tuple[float, float]]

    @property
    def outcome(self) -> str:
        """Every item has an outcome (the counts the batch's result reports)."""
        counts = {name: getattr(self.result, name, 0) for name in ("ok", "failed", "skipped")}
        complete = sum(counts.values()) == self.items
        status = getattr(self.result, "status", "?")
        shown = ", ".join(f"{n} {name}" for name, n in counts.items())
        return f"{'complete' if complete else 'INCOMPLETE'} ({status}): {shown}"


async def keel_batch(stack: Stack, items: int, concurrency: int, probe: bool) -> KeelRun:
    """Submit one batch through the public entry point and wait for its result."""
    settings = get_settings()
    lines = [
        json.dumps({"custom_id": f"i{n}", "prompt": prompt(n), "max_tokens": MAX_TOKENS})
        for n in range(items)
    ]
    batch_id = f"bench-{uuid.uuid4().hex[:6]}"
    limit = {"history_event_limit": stack.args.history_limit} if stack.args.history_limit else {}
    loaded = time.perf_counter()
    handle = await submit_batch(
        stack.client,
        settings,
        session_factory(),
        list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
        batch_id=batch_id,
        options=BatchOptions(concurrency=concurrency, model=MODEL, tenant=stack.args.batch_tenant),
        source_name="bench",
        **limit,
    )
    started = time.perf_counter()
    print(f"  loaded {items} items in {started - loaded:.1f}s; running …", flush=True)
    meter = CpuMeter(stack.measured())
    meter.start()
    stop = asyncio.Event()
    prober = (
        asyncio.create_task(ask_latencies(stack.client, stack.interactive_queue, stop, 0, 0.1))
        if probe
        else None
    )
    rss_timeline: list[tuple[float, float]] = []

    async def watch_rss() -> None:
        while not stop.is_set():
            for worker in stack.batch_workers:
                worker.sample()
            rss = sum(worker.current_rss for worker in stack.batch_workers) / 2**20
            rss_timeline.append((time.perf_counter() - started, rss))
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_rss())
    result = await handle.result()
    wall = time.perf_counter() - started
    cpu = meter.stop()
    stop.set()
    ask_busy = await prober if prober else []
    await watcher
    first_run = handle.first_execution_run_id or handle.result_run_id or handle.run_id or ""
    return KeelRun(
        items=items,
        rate=items / wall,
        wall_s=wall,
        load_s=started - loaded,
        result=result,
        history_lengths=await run_history_lengths(stack.client, handle.id, first_run),
        peak_rss_mb=max(w.high_water_rss() for w in stack.batch_workers) / 2**20,
        cpu=cpu,
        ask_busy=ask_busy,
        breakdown=await where_the_time_goes(stack.client, handle.id),
        rss_timeline=rss_timeline,
    )


def cpu_lines(cpu: list[CpuShare], items: int) -> list[str]:
    lines = [
        f"CPU ms per item by process ({items} items) · ms/item its threads waited for a CPU "
        "(all threads; the main thread)"
    ]
    for share in cpu:
        lines.append(
            f"  {share.label:52}{share.seconds / items * 1000:>8.1f}"
            f"   waited {share.waited / items * 1000:.1f}; {share.loop_waited / items * 1000:.1f}"
        )
    keel_total = sum(share.seconds for share in cpu if share.keel)
    lines.append(
        f"  {'keel processes + Temporal server':52}{keel_total / items * 1000:>8.1f}"
        "   (target <= 10)"
    )
    return lines


# --- Modes ---------------------------------------------------------------------------------------


def median_rate(rates: list[float]) -> str:
    shown = f"{statistics.median(rates):.1f}"
    return (
        shown if len(rates) == 1 else f"{shown} (median of {', '.join(f'{r:.1f}' for r in rates)})"
    )


async def default_run(stack: Stack, scratch: Path) -> None:
    args = stack.args
    await stack.start_batch_workers(args.workers)
    bare: list[float] = []
    plain: list[float] = []
    if not args.keel_only:
        for _ in range(args.repeats):
            print("(c) bare Temporal fan-out of no-op activities …", flush=True)
            bare.append(await bare_temporal(stack.client, args.items, args.concurrency))
            print(f"    {bare[-1]:.1f} items/s", flush=True)
            print("(b) asyncio + OpenAI SDK + semaphore …", flush=True)
            plain.append(
                await plain_asyncio(
                    stack.batch_sim_url, args.items, args.concurrency, scratch / "asyncio.jsonl"
                )
            )
            print(f"    {plain[-1]:.1f} items/s", flush=True)
    print("interactive calls, batch idle …", flush=True)
    interactive_pid = stack.interactive_worker.process.pid
    waited_before = main_thread_wait_seconds(interactive_pid)
    idle = await ask_latencies(stack.client, stack.interactive_queue, None, args.asks, 0.1)
    idle_waited = main_thread_wait_seconds(interactive_pid) - waited_before
    runs = []
    for _ in range(args.repeats):
        print("(a) keel batch (interactive calls running alongside) …", flush=True)
        runs.append(await keel_batch(stack, args.items, args.concurrency, probe=True))
        print(f"    {runs[-1].rate:.1f} items/s", flush=True)
    busy = [sample for run in runs for sample in run.ask_busy]
    keel = statistics.median(run.rate for run in runs)
    ideal = args.concurrency / args.latency
    nan = float("nan")
    plain_rate = statistics.median(plain) if plain else nan
    bare_rate = statistics.median(bare) if bare else nan
    median_run = sorted(runs, key=lambda run: run.rate)[len(runs) // 2]

    print()
    print(
        f"batch worker processes {args.workers} · nice {args.batch_nice} · "
        f"load average before the keel batch {load_average()}"
    )
    print(f"{'':26}{'items/s':>10}")
    print(f"{'ideal (concurrency/latency)':26}{ideal:>10.1f}")
    print(f"{'(a) keel batch':26}{keel:>10.1f}   {median_run.outcome}")
    if len(runs) > 1:
        print(f"{'':26}{'':>10}   {median_rate([run.rate for run in runs])}")
    print(f"{'(b) asyncio + SDK':26}{plain_rate:>10.1f}")
    print(f"{'(c) bare Temporal':26}{bare_rate:>10.1f}")
    print()
    print(f"keel/asyncio  {keel / plain_rate:.2f}   (target >= 0.80)")
    print(
        f"keel/bare     {keel / bare_rate:.2f}   (not a target: no-op activities have no latency)"
    )
    print(
        f"interactive   idle p50 {percentile([s.ms for s in idle], 0.5):.0f} ms "
        f"p99 {percentile([s.ms for s in idle], 0.99):.0f} ms (n={len(idle)}) · under batch "
        f"p50 {percentile([s.ms for s in busy], 0.5):.0f} ms "
        f"p99 {percentile([s.ms for s in busy], 0.99):.0f} ms (n={len(busy)})"
    )
    if idle and busy:
        ratio = percentile([s.ms for s in busy], 0.99) / percentile([s.ms for s in idle], 0.99)
        print(f"interactive p99 under batch / idle  {ratio:.2f}   (target <= 1.50)")
        print("where the interactive calls' time goes:")
        for line in await phase_report(stack.client, idle, busy):
            print(line)
        busy_waited = sum(
            share.loop_waited
            for run in runs
            for share in run.cpu
            if share.label == "interactive worker"
        )
        print(
            "  interactive worker's event loop thread, wait for a CPU per call (schedstat): "
            f"idle {idle_waited / len(idle) * 1000:.0f} ms · "
            f"under batch {busy_waited / len(busy) * 1000:.0f} ms"
        )
    print(
        f"keel runs {len(median_run.history_lengths)} · largest run "
        f"{max(median_run.history_lengths)} history events · batch worker peak RSS "
        f"{median_run.peak_rss_mb:.0f} MB"
    )
    for line in cpu_lines(median_run.cpu, args.items):
        print(line)
    print("where the batch's time goes:")
    for line in median_run.breakdown:
        print(f"  {line}")


async def large_run(stack: Stack) -> None:
    args = stack.args
    await stack.start_batch_workers(args.workers)
    print(f"--large: keel batch of {args.large_items} items …", flush=True)
    keel = await keel_batch(stack, args.large_items, args.concurrency, probe=False)
    lengths = keel.history_lengths
    print()
    print(f"--large {args.large_items} items · {keel.outcome}")
    print(
        f"wall time {keel.wall_s:.1f} s (loading {keel.load_s:.1f} s before it) · "
        f"{keel.rate:.1f} items/s"
    )
    print(
        f"largest run: {max(lengths)} history events   (target <= 10,000) · runs {len(lengths)}: "
        + ", ".join(str(n) for n in lengths)
    )
    print(f"batch worker peak RSS: {keel.peak_rss_mb:.0f} MB   (target <= 500 MB)")
    if keel.rss_timeline:
        tenth = max(1, len(keel.rss_timeline) // 10)
        points = keel.rss_timeline[::tenth] + keel.rss_timeline[-1:]
        print("  RSS over the run: " + ", ".join(f"{t:.0f}s {mb:.0f} MB" for t, mb in points))
    for line in cpu_lines(keel.cpu, args.large_items):
        print(line)
    print("where the batch's time goes:")
    for line in keel.breakdown:
        print(f"  {line}")


async def scale_out(stack: Stack, scratch: Path) -> None:
    """items/s with 1, 2, 4 … batch worker processes, and the plain script, at one concurrency."""
    args = stack.args
    print(f"scale-out at concurrency {args.concurrency}, {args.items} items", flush=True)
    plain = []
    for _ in range(args.repeats):
        print("(b) asyncio + OpenAI SDK + semaphore …", flush=True)
        plain.append(
            await plain_asyncio(
                stack.batch_sim_url, args.items, args.concurrency, scratch / "asyncio.jsonl"
            )
        )
        print(f"    {plain[-1]:.1f} items/s", flush=True)
    rows = []
    for count in args.scale_out_workers:
        stack.stop_batch_workers()
        await stack.start_batch_workers(count)
        runs = []
        for _ in range(args.repeats):
            print(f"(a) keel batch on {count} batch worker process(es) …", flush=True)
            runs.append(await keel_batch(stack, args.items, args.concurrency, probe=False))
            print(f"    {runs[-1].rate:.1f} items/s · {runs[-1].outcome}", flush=True)
        rows.append((count, runs))
    plain_rate = statistics.median(plain)
    print()
    print(
        f"scale-out · concurrency {args.concurrency} · latency {args.latency}s · {args.items} items"
    )
    print(f"  {'':34}{'items/s':>10}{'keel/asyncio':>14}{'CPU ms/item':>13}")
    print(f"  {'ideal (concurrency/latency)':34}{args.concurrency / args.latency:>10.1f}")
    print(f"  {'asyncio + SDK (1 process)':34}{plain_rate:>10.1f}")
    for count, runs in rows:
        rate = statistics.median(run.rate for run in runs)
        median_run = sorted(runs, key=lambda run: run.rate)[len(runs) // 2]
        keel_cpu = sum(s.seconds for s in median_run.cpu if s.keel) / args.items * 1000
        label = f"keel, {count} batch worker{'s' if count > 1 else ''}"
        print(f"  {label:34}{rate:>10.1f}{rate / plain_rate:>14.2f}{keel_cpu:>13.1f}")
    print("  (CPU ms/item: keel processes + Temporal server)")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --- The run -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="keel-bench-batch-"))
    suffix = uuid.uuid4().hex[:6]
    batch_queue, interactive_queue = f"keel-batch-{suffix}", f"keel-interactive-{suffix}"
    print(
        f"batch throughput · items {args.large_items if args.large else args.items} · "
        f"concurrency {args.concurrency} · "
        f"latency {args.latency}s · batch worker nice {args.batch_nice} · "
        f"load average {load_average()} ({os.cpu_count()} CPUs) · scratch {scratch}",
        flush=True,
    )
    async with scratch_database() as database_url:
        with children(scratch) as kids:
            batch_sim, batch_sim_child = await simulator(
                kids, "simulator (batch)", "--fixed-latency", str(args.latency)
            )
            ask_sim, ask_sim_child = await simulator(
                kids, "simulator (interactive)", "--latency-scale", "0"
            )
            # Payloads encrypted as in production; the worker processes inherit the key. The
            # converter alone, not KeelPlugin: the bare fan-out's worker below is built from this
            # client and must not inherit keel's worker interceptors (keel's own workers are
            # processes that connect through the plugin).
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=str(TEMPORAL_CLI),
                dev_server_database_filename=str(scratch / "temporal.sqlite"),
                data_converter=keel_data_converter(use_throwaway_key_if_unset()),
                search_attributes=ALL_SEARCH_ATTRIBUTES,
                ui=False,
                dev_server_log_level="error",
                dev_server_extra_args=dev_server_args(),
            )
            async with env:
                client = env.client
                worker_env = {
                    k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES
                } | {
                    "TEMPORAL_ADDRESS": client.service_client.config.target_host,
                    "DATABASE_URL": database_url,
                    "KEEL_BATCH_TASK_QUEUE": batch_queue,
                    "KEEL_INTERACTIVE_TASK_QUEUE": interactive_queue,
                    "KEEL_LOG_FORMAT": "json",
                }
                os.environ.update(worker_env)
                get_settings.cache_clear()
                interactive_worker = kids.spawn(
                    "worker-interactive",
                    list(worker_argv(interactive_queue)),
                    worker_env | {"KEEL_SIMULATOR_URL": ask_sim},
                )
                await kids.wait_for(interactive_worker, "worker.started")
                stack = Stack(
                    client=client,
                    kids=kids,
                    args=args,
                    batch_queue=batch_queue,
                    interactive_queue=interactive_queue,
                    worker_env=worker_env,
                    batch_sim_url=batch_sim,
                    interactive_worker=interactive_worker,
                    simulators=[batch_sim_child, ask_sim_child],
                    server_pids=temporal_server_pids(),
                )
                await ask_latencies(client, interactive_queue, None, 10, 0)  # warm up
                if args.large:
                    await large_run(stack)
                elif args.scale_out:
                    await scale_out(stack, scratch)
                else:
                    await default_run(stack, scratch)
                stack.stop_batch_workers()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="default 200; 1000 with --scale-out"
    )
    parser.add_argument("--latency", type=float, default=1.0, help="simulator seconds per call")
    parser.add_argument("--asks", type=int, default=100, help="interactive calls timed idle")
    parser.add_argument(
        "--repeats", type=int, default=1, help="measure each rate this often; print the median"
    )
    parser.add_argument(
        "--history-limit",
        type=int,
        default=None,
        help="continue-as-new threshold (default: keel's setting)",
    )
    parser.add_argument("--large", action="store_true", help="keel alone on --large-items")
    parser.add_argument("--large-items", type=int, default=100_000)
    parser.add_argument("--keel-only", action="store_true", help="skip (b) and (c)")
    parser.add_argument("--workers", type=int, default=1, help="batch worker processes")
    parser.add_argument(
        "--scale-out", action="store_true", help="items/s with 1, 2, 4 batch worker processes"
    )
    parser.add_argument(
        "--scale-out-workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 4],
        help="comma-separated batch worker counts for --scale-out (default 1,2,4)",
    )
    parser.add_argument(
        "--batch-nice",
        type=int,
        default=BATCH_WORKER_NICE,
        help=f"the batch worker's --nice (default {BATCH_WORKER_NICE}, as `keel dev up`; "
        "0 = the interactive worker's priority)",
    )
    parser.add_argument(
        "--batch-tenant",
        default="default",
        help="tenant of the batch (the interactive calls are tenant 'default')",
    )
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = 1000 if args.scale_out else 200
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
