"""What keel adds to an interactive chat turn: the same openai SDK call, made directly to the
simulator and through `keel api`, interleaved in one run.

Run: ``.venv/bin/python bench/interactive.py [--rounds 60] [--latency-scale 0.2]``

Everything runs as it would in production, each in its own process: a file-backed Temporal dev
server (keel's tuning), the simulator (``python -m llmsim``), one worker on the interactive
queue (``python -m workers``), and ``keel api``. This process is only the client.

Per round, in random order:

* ``direct``   the SDK streams from the simulator.
* ``keel``     the SDK streams from keel: a stateless request (no session id), i.e. a new
               one-turn session workflow started with update-with-start.
* ``session``  the SDK streams the next turn of a session whose workflow is already running
               (an Update on it), as a chat UI does after its first message.

Reported for each: time to first token (first content chunk) and whole turn (until
``[DONE]``), p50/p99, and keel's added time (p50 of keel minus p50 of direct). The simulator
answers every call with the same number of tokens, so prompt size (history) does not change the
model's latency and the difference is keel's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx2
import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.api.history.v1 import HistoryEvent  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from contracts.search_attributes import ALL_SEARCH_ATTRIBUTES  # noqa: E402
from devstack.ephemeral import use_throwaway_key_if_unset  # noqa: E402
from infra.migrate import upgrade_to_head  # noqa: E402
from infra.temporal_client import KeelPlugin  # noqa: E402
from infra.temporal_tuning import dev_server_args  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "gpt-4o-mini"
OUTPUT_TOKENS = 60
QUEUE = "bench-interactive"


@dataclass
class Samples:
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@dataclass
class TurnTiming:
    """Wall-clock times of one call through keel, for the phase breakdown."""

    turn_id: str
    sent: float
    first_token: float
    finished: float


async def streamed_call(
    client: openai.AsyncOpenAI,
    question: str,
    samples: Samples,
    timings: list[TurnTiming] | None = None,
) -> None:
    turn_id = f"bench-{uuid.uuid4().hex}"
    sent, started = time.time(), time.perf_counter()
    first: float | None = None
    first_wall = 0.0
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        stream=True,
        extra_headers={"Idempotency-Key": turn_id},
    )
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content and first is None:
                first, first_wall = time.perf_counter(), time.time()
    done = time.perf_counter()
    assert first is not None, "no content streamed"
    samples.ttft_ms.append((first - started) * 1000)
    samples.total_ms.append((done - started) * 1000)
    if timings is not None:
        timings.append(TurnTiming(turn_id, sent, first_wall, time.time()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _tail(log: Path) -> str:
    return log.read_text()[-2000:] if log.exists() else ""


async def wait_for_log(log: Path, pattern: str, process: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{await asyncio.to_thread(_tail, log)}")
        found = re.search(pattern, await asyncio.to_thread(_tail, log))
        if found:
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{process.args!r} not ready:\n{await asyncio.to_thread(_tail, log)}")


async def wait_for_http(url: str) -> None:
    async with httpx2.AsyncClient(timeout=2) as http:
        for _ in range(300):
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


def _event_time(event: HistoryEvent) -> float:
    return event.event_time.ToMicroseconds() / 1e6


async def phase_breakdown(
    env: WorkflowEnvironment, database_url: str, timings: list[TurnTiming]
) -> dict[str, list[float]]:
    """Split each profiled turn into phases from the workflow's history, the ledger and the
    stream's rows."""
    phases: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        phases.setdefault(name, []).append(seconds * 1000)

    connection = await asyncpg.connect(database_url)
    try:
        for timing in timings:
            session_id = await connection.fetchval(
                "SELECT session_id FROM messages WHERE turn_id = $1 AND role = 'user'",
                timing.turn_id,
            )
            workflow_id = f"chat-{session_id}"
            call = await connection.fetchrow(
                "SELECT extract(epoch FROM created_at) AS at, first_token_ms, latency_ms "
                "FROM llm_calls WHERE workflow_id = $1 AND outcome = 'ok'",
                workflow_id,
            )
            rows = await connection.fetch(
                "SELECT type, extract(epoch FROM created_at) AS at FROM stream_events "
                "WHERE stream_key = $1 ORDER BY seq",
                f"turn/{session_id}/{timing.turn_id}",
            )
            history = await env.client.get_workflow_handle(workflow_id).fetch_history()
            times: dict[int, float] = {}
            for event in history.events:
                times.setdefault(event.event_type, _event_time(event))
            started = times[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED]
            scheduled = times[EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
            activity_started = times[EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
            activity_done = times[EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
            deltas = [float(r["at"]) for r in rows if r["type"] == "delta"]
            done = next(float(r["at"]) for r in rows if r["type"] == "done")
            add("1 HTTP + API + update-with-start -> workflow started", started - timing.sent)
            task_started = times[EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED]
            task_completed = times[EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
            add("2 first workflow task: prepare_turn LA (+ plan_llm_route before the patch)",
                scheduled - started)  # fmt: skip
            add("  of which waiting for the worker to pick the task up", task_started - started)
            add("  of which the worker's task (activation, local activity)",
                task_completed - task_started)  # fmt: skip
            add("3 activity scheduled -> started (eager dispatch)", activity_started - scheduled)
            add("4 activity started -> first token's row committed", deltas[0] - activity_started)
            add("  of which the provider's own time to first token", call["first_token_ms"] / 1000)
            add("5 first token's row -> client has the token", timing.first_token - deltas[0])
            # The answering call stores the answer and its `done` row with its ledger row
            # (AnswerRecords): the reply no longer waits for the activity's completion.
            add("6 last token's row -> `done` row (ledger, breaker, answer stored)",
                done - deltas[-1])  # fmt: skip
            add("7 `done` row -> client has [DONE]", timing.finished - done)
            add("  (off the path) `done` row -> activity completed", activity_done - done)
    finally:
        await connection.close()
    return phases


async def bench(rounds: int, latency_scale: float, scratch: Path) -> None:
    server = os.environ.get(
        "KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    admin_url = server.rpartition("/")[0] + "/postgres"
    name = f"keel_bench_interactive_{os.getpid()}"
    database_url = admin_url.rpartition("/")[0] + f"/{name}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    await asyncio.to_thread(upgrade_to_head, database_url)

    # Payloads encrypted as in production; the worker and API processes inherit the key.
    settings = use_throwaway_key_if_unset()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        plugins=[KeelPlugin(settings)],
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        ui=False,
        dev_server_log_level="error",
        dev_server_extra_args=[*dev_server_args(), "--db-filename", str(scratch / "temporal.db")],
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sim_log = scratch / "sim.log"
        simulator = start_process(
            [str(BIN / "python"), "-m", "llmsim", "--port", "0", "--no-access-log",
             "--log-level", "warning", "--latency-scale", str(latency_scale)],
            dict(os.environ), sim_log,
        )  # fmt: skip
        processes.append(simulator)
        sim_url = (await wait_for_log(sim_log, r"listening on (http://\S+)", simulator)).group(1)
        async with httpx2.AsyncClient(base_url=sim_url) as http:
            changed = await http.post(
                "/admin/config",
                json={"min_output_tokens": OUTPUT_TOKENS, "max_output_tokens": OUTPUT_TOKENS},
            )
            changed.raise_for_status()

        keel_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))},
            "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "DATABASE_URL": database_url,
            "KEEL_SIMULATOR_URL": sim_url,
            "KEEL_INTERACTIVE_TASK_QUEUE": QUEUE,
            "KEEL_LOG_LEVEL": "warning",
            "KEEL_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        worker_log = scratch / "worker.log"
        worker = start_process(
            [str(BIN / "python"), "-m", "workers", "--queue", QUEUE], keel_env, worker_log
        )
        processes.append(worker)
        port = free_port()
        api = start_process(
            [str(BIN / "keel"), "api", "--port", str(port)], keel_env, scratch / "api.log"
        )
        processes.append(api)
        keel_url = f"http://127.0.0.1:{port}"
        await wait_for_http(f"{keel_url}/healthz")
        # The worker logs nothing at warning level once up: a first call proves it polls.

        direct = openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="sim", max_retries=0)
        # The API needs a token, made as a user would (`keel token create`, secret on stdout).
        creating = await asyncio.create_subprocess_exec(
            str(BIN / "keel"), "token", "create", "--tenant", "default", "--role", "client",
            "--expires", "1d", "--description", "bench/interactive.py",
            env=keel_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        created, problem = await creating.communicate()
        if creating.returncode != 0:
            raise RuntimeError(f"keel token create failed: {problem.decode()}")
        token = created.decode().strip()
        through_keel = openai.AsyncOpenAI(base_url=f"{keel_url}/v1", api_key=token, max_retries=0)
        session_id = f"bench-{uuid.uuid4().hex[:8]}"
        session_client = through_keel.with_options(
            default_headers={"X-Keel-Session-Id": session_id}
        )
        results = {"direct": Samples(), "keel": Samples(), "session": Samples()}
        timings: list[TurnTiming] = []
        calls: dict[str, Callable[[str, Samples], Awaitable[None]]] = {
            "direct": lambda q, s: streamed_call(direct, q, s),
            "keel": lambda q, s: streamed_call(through_keel, q, s, timings),
            "session": lambda q, s: streamed_call(session_client, q, s),
        }
        for _ in range(5):  # warm-up: connections, worker caches, the session's workflow
            for kind in calls:
                await calls[kind](f"warm up {uuid.uuid4().hex[:6]}", Samples())
        for number in range(rounds):
            order = list(calls)
            random.shuffle(order)
            for kind in order:
                await calls[kind](f"Round {number}: name a river.", results[kind])
        phases = await phase_breakdown(env, database_url, timings[5:])
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        await env.shutdown()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()

    print(
        f"{rounds} rounds, simulator latency_scale={latency_scale}, {OUTPUT_TOKENS} output "
        "tokens per answer, streamed (openai SDK, AsyncOpenAI)"
    )
    print(
        f"{'':10} {'TTFT p50':>9} {'p99':>8} {'turn p50':>9} {'p99':>8}   added p50 (TTFT / turn)"
    )
    base = results["direct"]
    for kind, samples in results.items():
        added = ""
        if kind != "direct":
            ttft = statistics.median(samples.ttft_ms) - statistics.median(base.ttft_ms)
            turn = statistics.median(samples.total_ms) - statistics.median(base.total_ms)
            added = f"   +{ttft:.1f} ms / +{turn:.1f} ms"
        print(
            f"{kind:10} {statistics.median(samples.ttft_ms):7.1f}ms "
            f"{percentile(samples.ttft_ms, 0.99):6.1f}ms "
            f"{statistics.median(samples.total_ms):7.1f}ms "
            f"{percentile(samples.total_ms, 0.99):6.1f}ms{added}"
        )
    print("targets: added TTFT p50 <= 50 ms, added whole-turn p50 <= 30 ms")
    print()
    print("where a stateless turn's time goes (p50 per phase, ms; one host, one clock):")
    for phase, values in phases.items():
        print(f"  {phase:<58} {statistics.median(values):7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--latency-scale", type=float, default=0.2)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(bench(arguments.rounds, arguments.latency_scale, Path(directory)))
