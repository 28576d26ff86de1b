"""Which transport carries tokens from the LLM activity to the client: measured, in one run.

Run: ``.venv/bin/python bench/stream_transport.py [--events 200] [--tokens 100]``

Candidates, each publishing from outside the workflow (where the LLM activity runs) and read by
a subscriber in another task (where the API runs):

* ``postgres``          keel's transport: ``stream_events`` rows + LISTEN/NOTIFY
                        (infra/token_streams.py; publisher coalesces while a write is in flight).
* ``workflow_streams``  Temporal's ``temporalio.contrib.workflow_streams``: publishes are Signals
                        to the workflow, subscribers long-poll it with Updates.

Two measurements per transport:

* ``single``: one event at a time, publish -> received, ``--events`` times (p50/p99 latency).
* ``tokens``: a 100 tok/s stream (a delta every 10 ms, ``--tokens`` of them), latency per delta
  and what it costs: rows written (Postgres) or workflow history events added (Temporal).

Needs a Temporal dev server (started here, file-backed) and Postgres (KEEL_TEST_DATABASE_URL or
127.0.0.1:5432; a scratch database is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio import workflow
from temporalio.client import Client
from temporalio.contrib.workflow_streams import (
    WorkflowStream,
    WorkflowStreamClient,
    WorkflowStreamState,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from infra.database import dispose_engines, get_engine
from infra.migrate import upgrade_to_head
from infra.temporal_tuning import dev_server_args
from infra.token_streams import StreamEventType, StreamHub, StreamPublisher

TEMPORAL_CLI = Path(sys.executable).with_name("temporal")
TASK_QUEUE = "bench-streams"


@workflow.defn
class StreamHost:
    """A workflow hosting a Temporal workflow stream, as a chat session would."""

    @workflow.init
    def __init__(self, prior: WorkflowStreamState | None = None) -> None:
        self.stream = WorkflowStream(prior)
        self.done = False

    @workflow.run
    async def run(self, prior: WorkflowStreamState | None = None) -> None:
        await workflow.wait_condition(lambda: self.done)

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    cost: str = ""

    def line(self, name: str) -> str:
        ordered = sorted(self.latencies_ms)
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return f"{name:<34} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   {self.cost}"


# --- Postgres ----------------------------------------------------------------------------------


async def postgres_single(hub: StreamHub, count: int) -> Result:
    key = f"bench/{uuid.uuid4().hex}"
    result = Result()
    received: asyncio.Queue[float] = asyncio.Queue()

    async def follow() -> None:
        async for event in hub.follow(key):
            received.put_nowait(time.perf_counter())
            if event.terminal:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    # One event at a time, each awaited: the transport's own latency, no coalescing pause.
    async with StreamPublisher(key, flush_interval=0) as publisher:
        for index in range(count):
            sent = time.perf_counter()
            kind = StreamEventType.DONE if index == count - 1 else StreamEventType.DELTA
            publisher.publish(kind, {"text": f"token{index} "}, attempt="a")
            got = await received.get()
            result.latencies_ms.append((got - sent) * 1000)
    await follower
    result.cost = f"{count} rows, {publisher.writes} inserts"
    return result


async def postgres_tokens(hub: StreamHub, tokens: int, interval: float) -> Result:
    key = f"bench/{uuid.uuid4().hex}"
    result = Result()
    sent_at: dict[str, float] = {}

    async def follow() -> None:
        async for event in hub.follow(key):
            now = time.perf_counter()
            for piece in str(event.data.get("text", "")).split():
                if piece in sent_at:
                    result.latencies_ms.append((now - sent_at[piece]) * 1000)
            if event.terminal:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    async with StreamPublisher(key) as publisher:
        for index in range(tokens):
            piece = f"t{index}"
            sent_at[piece] = time.perf_counter()
            publisher.publish(StreamEventType.DELTA, {"text": piece + " "}, attempt="a")
            await asyncio.sleep(interval)
        publisher.publish(StreamEventType.DONE, {"text": ""})
    await follower
    rows = await _count_rows(key)
    result.cost = f"{rows} rows for {tokens} deltas ({publisher.writes} inserts)"
    return result


async def _count_rows(key: str) -> int:
    async with get_engine().connect() as connection:
        from sqlalchemy import text

        result = await connection.execute(
            text("SELECT count(*) FROM stream_events WHERE stream_key = :k"), {"k": key}
        )
        return int(result.scalar_one())


# --- Temporal workflow streams -----------------------------------------------------------------


async def _with_host(
    client: Client, body: Callable[[str], Awaitable[Result]], history: bool
) -> Result:
    workflow_id = f"stream-host-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        StreamHost.run, None, id=workflow_id, task_queue=TASK_QUEUE
    )
    before = (await handle.describe()).raw_description.workflow_execution_info.history_length
    result = await body(workflow_id)
    after = (await handle.describe()).raw_description.workflow_execution_info.history_length
    await handle.signal(StreamHost.finish)
    if history:
        result.cost += f"{after - before} history events added"
    return result


async def temporal_single(client: Client, count: int) -> Result:
    async def body(workflow_id: str) -> Result:
        result = Result()
        received: asyncio.Queue[float] = asyncio.Queue()
        reader = WorkflowStreamClient.create(client, workflow_id)

        async def follow() -> None:
            async for _ in reader.subscribe(["t"], result_type=str, poll_cooldown=timedelta(0)):
                received.put_nowait(time.perf_counter())
                if received.qsize() + len(result.latencies_ms) >= count:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        writer = WorkflowStreamClient.create(client, workflow_id)
        topic = writer.topic("t", type=str)
        async with writer:
            for index in range(count):
                sent = time.perf_counter()
                topic.publish(f"token{index}", force_flush=True)
                got = await received.get()
                result.latencies_ms.append((got - sent) * 1000)
        await follower
        return result

    return await _with_host(client, body, history=True)


async def temporal_tokens(client: Client, tokens: int, interval: float) -> Result:
    async def body(workflow_id: str) -> Result:
        result = Result()
        sent_at: dict[str, float] = {}
        reader = WorkflowStreamClient.create(client, workflow_id)

        async def follow() -> None:
            seen = 0
            async for item in reader.subscribe(["t"], result_type=str, poll_cooldown=timedelta(0)):
                result.latencies_ms.append((time.perf_counter() - sent_at[item.data]) * 1000)
                seen += 1
                if seen >= tokens:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        # The library's own batching: flush at most every 50 ms (its default is 2 s).
        writer = WorkflowStreamClient.create(
            client, workflow_id, batch_interval=timedelta(milliseconds=50)
        )
        topic = writer.topic("t", type=str)
        async with writer:
            for index in range(tokens):
                piece = f"t{index}"
                sent_at[piece] = time.perf_counter()
                topic.publish(piece)
                await asyncio.sleep(interval)
        await follower
        return result

    return await _with_host(client, body, history=True)


# --- Setup -------------------------------------------------------------------------------------


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def main(events: int, tokens: int) -> None:
    server = os.environ.get(
        "KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ).replace("postgresql+asyncpg://", "postgresql://")
    admin_url = server.rpartition("/")[0] + "/postgres"
    name = f"keel_bench_streams_{os.getpid()}"
    database_url = admin_url.rpartition("/")[0] + f"/{name}"
    await _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _admin(admin_url, f"CREATE DATABASE {name}")
    os.environ["DATABASE_URL"] = database_url
    await asyncio.to_thread(upgrade_to_head, database_url)
    with tempfile.TemporaryDirectory() as scratch:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(TEMPORAL_CLI),
            ui=False,
            dev_server_log_level="error",
            dev_server_extra_args=[*dev_server_args(), "--db-filename", f"{scratch}/t.db"],
        )
        try:
            async with (
                Worker(
                    env.client,
                    task_queue=TASK_QUEUE,
                    workflows=[StreamHost],
                    workflow_runner=UnsandboxedWorkflowRunner(),
                ),
                StreamHub(database_url) as hub,
            ):
                interval = 0.01
                # Warm both paths, then interleave so machine load hits both alike.
                await postgres_single(hub, 20)
                await temporal_single(env.client, 10)
                results = {
                    "postgres  single event": await postgres_single(hub, events),
                    "temporal  single event": await temporal_single(env.client, events),
                    "postgres  100 tok/s stream": await postgres_tokens(hub, tokens, interval),
                    "temporal  100 tok/s stream": await temporal_tokens(
                        env.client, tokens, interval
                    ),
                }
        finally:
            await env.shutdown()
            await dispose_engines()
            await _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"publish -> subscriber latency ({events} single events, {tokens}-delta streams)")
    for label, result in results.items():
        print(result.line(label))
    pg = statistics.median(results["postgres  single event"].latencies_ms)
    tw = statistics.median(results["temporal  single event"].latencies_ms)
    print(f"ratio temporal/postgres, single-event p50: {tw / pg:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=100)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.tokens))
