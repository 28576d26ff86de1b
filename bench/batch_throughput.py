"""Batch throughput: keel vs what a user would write without it vs the engine's ceiling, in one
run on one file-backed Temporal dev server.

Run: ``.venv/bin/python bench/batch_throughput.py`` (the spec: 5,000 items, concurrency 200,
simulator latency 1 s). Scale down with ``--items`` / ``--concurrency`` / ``--latency``;
``--large`` runs keel alone on 100,000 items (``--large-items`` to scale it).

(a) keel: a ``BatchWorkflow`` on a real batch worker process (``python -m workers``), items in
    Postgres, every call through ``ask_llm`` (route plan, streamed SDK call, ledger rows).
(b) asyncio: one process, the OpenAI SDK, an ``asyncio.Semaphore(concurrency)``, results
    written to a JSONL file — the script a user writes without keel.
(c) bare Temporal: one workflow keeping ``concurrency`` no-op activities in flight (the
    engine's ceiling on this machine: every keel item is at least one activity).

While (a) runs, an interactive worker process answers sequential ``AskWorkflow`` calls (against
a zero-latency simulator of its own, so the figure is keel's latency, not the provider's); the
same calls are timed with the batch idle. Prints items/s, keel/asyncio, keel/bare, interactive
p50/p99 idle vs under batch load, and for keel: runs (continue-as-new), the largest run's
history events, the batch worker's peak RSS, and where its CPU went.

Needs a Postgres (``KEEL_TEST_DATABASE_URL`` / ``DATABASE_URL``, default 127.0.0.1:5432): a
scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

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
from infra.database import dispose_engines, session_factory
from infra.migrate import upgrade_to_head
from infra.settings import get_settings, to_asyncpg_url
from infra.tables import LlmCall
from infra.temporal_client import keel_data_converter
from infra.temporal_tuning import dev_server_args
from services.batches import submit_batch
from workflows.ask import AskInput, AskWorkflow
from workflows.batch import BatchResult

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
    sdk = openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="sim", max_retries=3)
    gate = asyncio.Semaphore(concurrency)
    results: list[str] = []

    async def one(n: int) -> None:
        async with gate:
            reply = await sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt(n)}],
                max_tokens=MAX_TOKENS,
            )
            results.append(
                json.dumps({"custom_id": f"i{n}", "text": reply.choices[0].message.content})
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(items)))
    await asyncio.to_thread(out.write_text, "\n".join(results) + "\n")
    rate = items / (time.perf_counter() - started)
    await sdk.close()
    return rate


# --- Processes: simulators, workers -------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    peak_rss: int = 0
    current_rss: int = 0
    cpu_seconds: float = 0.0

    def sample(self) -> None:
        try:
            info = psutil.Process(self.process.pid)
            self.current_rss = info.memory_info().rss
            self.peak_rss = max(self.peak_rss, self.current_rss)
            times = info.cpu_times()
            self.cpu_seconds = times.user + times.system
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

    def stop_all(self) -> None:
        for child in reversed(self.started):
            if child.process.poll() is None:
                child.process.terminate()
                try:
                    child.process.wait(15)
                except subprocess.TimeoutExpired:
                    child.process.kill()


@contextmanager
def children(scratch: Path) -> Iterator[Children]:
    running = Children(scratch)
    try:
        yield running
    finally:
        running.stop_all()


async def simulator(kids: Children, name: str, *flags: str) -> str:
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
    return (await kids.wait_for(child, r"llmsim listening on (\S+)")).group(1)


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


# --- (a) keel, and the interactive probe ----------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def ask_latencies(
    client: Client, queue: str, stop: asyncio.Event | None, count: int, gap_s: float
) -> list[float]:
    """Sequential interactive calls: ``count`` of them, or until ``stop`` is set."""
    samples: list[float] = []
    while (stop is None and len(samples) < count) or (stop is not None and not stop.is_set()):
        started = time.perf_counter()
        await client.execute_workflow(
            AskWorkflow.run,
            AskInput(prompt="One word: is the sky blue?", models=[MODEL], max_tokens=8),
            id=f"bench-ask-{uuid.uuid4().hex[:10]}",
            task_queue=queue,
        )
        samples.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(gap_s)
    return samples


async def run_histories(client: Client, workflow_id: str) -> list[int]:
    lengths = []
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        description = await client.get_workflow_handle(
            workflow_id, run_id=execution.run_id
        ).describe()
        lengths.append(description.raw_description.workflow_execution_info.history_length)
    return lengths


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


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
        return f"{sum(values) / len(values):.0f} ms" if values else "—"

    busy = sum(task_time) / 1000
    span = _ms(
        history.events[-1].event_time.ToDatetime() - history.events[0].event_time.ToDatetime()
    )
    return [
        f"last run: {len(history.events)} events, {tasks} workflow tasks, {markers} markers "
        f"(local activities), {len(running)} items",
        f"  activity queue wait (scheduled → started)  avg {avg(queue_wait)}",
        f"  activity run (started → completed)         avg {avg(running)}"
        f"  · provider call inside it (ledger) avg {float(provider[0] or 0):.0f} ms, "
        f"first token {float(provider[1] or 0):.0f} ms",
        f"  completion → next workflow task started    avg {avg(to_next_task)}",
        f"  workflow task (started → completed)        avg {avg(task_time)}, "
        f"busy {busy:.1f}s of {span / 1000:.1f}s ({busy / (span / 1000):.0%})",
    ]


@dataclass
class KeelRun:
    rate: float
    result: BatchResult
    runs: int
    max_history: int
    peak_rss_mb: float
    worker_cpu_s: float
    ask_busy: list[float]
    breakdown: list[str]
    cpu_by_process: dict[str, float]
    # (seconds into the batch, worker RSS in MB): does memory plateau, or grow with items?
    rss_timeline: list[tuple[float, float]]


async def keel_batch(
    client: Client,
    kids: Children,
    worker: Child,
    items: int,
    concurrency: int,
    history_limit: int,
    probe_queue: str | None,
    tenant: str = "default",
) -> KeelRun:
    settings = get_settings()
    lines = [
        json.dumps({"custom_id": f"i{n}", "prompt": prompt(n), "max_tokens": MAX_TOKENS})
        for n in range(items)
    ]
    batch_id = f"bench-{uuid.uuid4().hex[:6]}"
    loaded = time.perf_counter()
    handle = await submit_batch(
        client,
        settings,
        session_factory(),
        list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
        batch_id=batch_id,
        options=BatchOptions(concurrency=concurrency, model=MODEL, tenant=tenant),
        source_name="bench",
        history_event_limit=history_limit,
    )
    started = time.perf_counter()
    print(f"  loaded {items} items in {started - loaded:.1f}s; running …", flush=True)
    for child in kids.started:
        child.sample()
    cpu_before = {child.name: child.cpu_seconds for child in kids.started}
    server_cpu_before = _server_cpu()
    stop = asyncio.Event()
    probe = (
        asyncio.create_task(ask_latencies(client, probe_queue, stop, 0, 0.1))
        if probe_queue
        else None
    )

    rss_timeline: list[tuple[float, float]] = []

    async def watch_rss() -> None:
        while not stop.is_set():
            worker.sample()
            rss_timeline.append((time.perf_counter() - started, worker.current_rss / 2**20))
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_rss())
    result = await handle.result()
    elapsed = time.perf_counter() - started
    stop.set()
    ask_busy = await probe if probe else []
    await watcher
    for child in kids.started:
        child.sample()
    cpu = {child.name: child.cpu_seconds - cpu_before[child.name] for child in kids.started}
    cpu["temporal-server"] = _server_cpu() - server_cpu_before
    histories = await run_histories(client, handle.id)
    return KeelRun(
        rate=items / elapsed,
        result=result,
        runs=len(histories),
        max_history=max(histories),
        peak_rss_mb=worker.high_water_rss() / 2**20,
        worker_cpu_s=cpu[worker.name],
        ask_busy=ask_busy,
        breakdown=await where_the_time_goes(client, handle.id),
        cpu_by_process=cpu,
        rss_timeline=rss_timeline,
    )


def _server_cpu() -> float:
    """CPU seconds of the Temporal dev server (the `temporal` child of this process)."""
    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith("temporal"):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


# --- The run -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="keel-bench-batch-"))
    suffix = uuid.uuid4().hex[:6]
    batch_queue, interactive_queue = f"keel-batch-{suffix}", f"keel-interactive-{suffix}"
    print(
        f"batch throughput · items {args.items} · concurrency {args.concurrency} · "
        f"latency {args.latency}s · scratch {scratch}",
        flush=True,
    )
    async with scratch_database() as database_url:
        with children(scratch) as kids:
            batch_sim = await simulator(kids, "sim-batch", "--fixed-latency", str(args.latency))
            ask_sim = await simulator(kids, "sim-interactive", "--latency-scale", "0")
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
                base_env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES} | {
                    "TEMPORAL_ADDRESS": client.service_client.config.target_host,
                    "DATABASE_URL": database_url,
                    "KEEL_BATCH_TASK_QUEUE": batch_queue,
                    "KEEL_INTERACTIVE_TASK_QUEUE": interactive_queue,
                    "KEEL_LOG_FORMAT": "json",
                }
                for name, value in base_env.items():
                    os.environ[name] = value
                get_settings.cache_clear()
                worker_cmd = [sys.executable, "-m", "workers", "--queue"]
                # The batch worker may run at a lower CPU priority (nice): on a shared host the
                # interactive worker then gets the CPU first (the bulkhead beyond task queues).
                niced = ["nice", "-n", str(args.batch_nice)] if args.batch_nice else []
                batch_worker = kids.spawn(
                    "worker-batch",
                    [*niced, *worker_cmd, batch_queue],
                    base_env | {"KEEL_SIMULATOR_URL": batch_sim},
                )
                ask_worker = kids.spawn(
                    "worker-interactive",
                    [*worker_cmd, interactive_queue],
                    base_env | {"KEEL_SIMULATOR_URL": ask_sim},
                )
                for child in (batch_worker, ask_worker):
                    await kids.wait_for(child, "worker.started")
                await ask_latencies(client, interactive_queue, None, 10, 0)  # warm up

                if args.large:
                    await large_run(client, kids, batch_worker, args)
                    return

                bare = plain = float("nan")
                if not args.keel_only:
                    print("(c) bare Temporal fan-out of no-op activities …", flush=True)
                    bare = await bare_temporal(client, args.items, args.concurrency)
                    print(f"    {bare:.1f} items/s", flush=True)
                    print("(b) asyncio + OpenAI SDK + semaphore …", flush=True)
                    plain = await plain_asyncio(
                        batch_sim, args.items, args.concurrency, scratch / "asyncio.jsonl"
                    )
                    print(f"    {plain:.1f} items/s", flush=True)
                print("interactive calls, batch idle …", flush=True)
                idle = await ask_latencies(client, interactive_queue, None, args.asks, 0.1)
                print("(a) keel batch (interactive calls running alongside) …", flush=True)
                keel = await keel_batch(
                    client,
                    kids,
                    batch_worker,
                    args.items,
                    args.concurrency,
                    args.history_limit,
                    interactive_queue,
                    args.batch_tenant,
                )
                report(args, keel, plain, bare, idle)


def report(
    args: argparse.Namespace, keel: KeelRun, plain: float, bare: float, idle: list[float]
) -> None:
    busy = keel.ask_busy
    ideal = args.concurrency / args.latency
    print()
    print(f"{'':26}{'items/s':>10}")
    print(f"{'ideal (concurrency/latency)':26}{ideal:>10.1f}")
    outcome = f"{keel.result.ok} ok, {keel.result.failed} failed"
    print(f"{'(a) keel batch':26}{keel.rate:>10.1f}   {outcome}")
    print(f"{'(b) asyncio + SDK':26}{plain:>10.1f}")
    print(f"{'(c) bare Temporal':26}{bare:>10.1f}")
    print()
    print(f"keel/asyncio  {keel.rate / plain:.2f}   (target >= 0.80)")
    print(f"keel/bare     {keel.rate / bare:.2f}   (target >= 0.80)")
    print(
        f"interactive   idle p50 {percentile(idle, 0.5):.0f} ms p99 {percentile(idle, 0.99):.0f} ms"
        f" (n={len(idle)}) · under batch p50 {percentile(busy, 0.5):.0f} ms "
        f"p99 {percentile(busy, 0.99):.0f} ms (n={len(busy)})"
    )
    if idle and busy:
        ratio = percentile(busy, 0.99) / percentile(idle, 0.99)
        print(f"interactive p99 under batch / idle  {ratio:.2f}   (target <= 1.50)")
    print(
        f"keel runs {keel.runs} · largest run {keel.max_history} history events · batch worker "
        f"peak RSS {keel.peak_rss_mb:.0f} MB · worker CPU {keel.worker_cpu_s:.1f}s "
        f"({keel.worker_cpu_s / args.items * 1000:.1f} ms/item)"
    )
    print_profile(keel, args.items)


def print_profile(keel: KeelRun, items: int) -> None:
    print("where the time goes:")
    for line in keel.breakdown:
        print(f"  {line}")
    shares = " · ".join(
        f"{name} {seconds:.1f}s ({seconds / items * 1000:.1f} ms/item)"
        for name, seconds in sorted(keel.cpu_by_process.items(), key=lambda kv: -kv[1])
    )
    print(f"  CPU during the keel batch: {shares}")


async def large_run(
    client: Client, kids: Children, worker: Child, args: argparse.Namespace
) -> None:
    print(f"--large: keel batch of {args.large_items} items …", flush=True)
    keel = await keel_batch(
        client, kids, worker, args.large_items, args.concurrency, args.history_limit, None
    )
    print()
    print(
        f"keel {keel.rate:.1f} items/s · {keel.result.ok} ok, {keel.result.failed} failed · "
        f"runs {keel.runs}"
    )
    print(f"largest run: {keel.max_history} history events   (target <= 10,000)")
    print(f"batch worker peak RSS: {keel.peak_rss_mb:.0f} MB   (target <= 500 MB)")
    if keel.rss_timeline:
        tenth = max(1, len(keel.rss_timeline) // 10)
        points = keel.rss_timeline[::tenth] + keel.rss_timeline[-1:]
        print("  RSS over the run: " + ", ".join(f"{t:.0f}s {mb:.0f} MB" for t, mb in points))
    per_item = keel.worker_cpu_s / args.large_items * 1000
    print(f"batch worker CPU: {keel.worker_cpu_s:.1f}s ({per_item:.1f} ms/item)")
    print_profile(keel, args.large_items)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0, help="simulator seconds per call")
    parser.add_argument("--asks", type=int, default=100, help="interactive calls timed idle")
    parser.add_argument("--history-limit", type=int, default=9000)
    parser.add_argument("--large", action="store_true", help="keel alone on --large-items")
    parser.add_argument("--keel-only", action="store_true", help="skip (b) and (c)")
    parser.add_argument(
        "--batch-nice", type=int, default=0, help="run the batch worker under nice -n N"
    )
    parser.add_argument(
        "--batch-tenant",
        default="default",
        help="tenant of the batch (the interactive calls are tenant 'default')",
    )
    parser.add_argument("--large-items", type=int, default=100_000)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
