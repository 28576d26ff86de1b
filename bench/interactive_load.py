"""Interactive chat under load: N concurrent openai-SDK clients, each its own session, streaming
turns through `keel api`, as users would.

Run: ``.venv/bin/python bench/interactive_load.py [--clients 200] [--turns 3] [--profile chaos]``

The stack runs as in production, each part in its own process (see bench/interactive.py): a
file-backed Temporal dev server (keel's tuning, or ``--dev-server-defaults`` for the server's
default dynamic config, the stand-in for a cluster without the tuning), the simulator
(``--profile``), one interactive worker, and ``keel api``. ``--keel-repo`` runs the worker and
the API from another checkout (its own ``.venv``), for a before/after on the same machine.

Two phases, one run:

* ``idle``: ``--idle-clients`` clients (default 4), ``--idle-turns`` turns each (default 25):
  the reference latency. 100 turns, so its p99 is a percentile and not the slowest of a dozen
  (with 4 clients of 3 turns it moved 410-561 ms between runs on an idle machine).
* ``load``: ``--clients`` clients at once. A client refused with 503 waits the Retry-After
  and sends the same turn again (same Idempotency-Key), as the SDK's own retry would.

Printed: accepted turns per second at saturation, CPU milliseconds per accepted turn by process
(from /proc: API, worker, Temporal server, simulator, and the Postgres backends connected to the
bench's database), p50/p99 of accepted turns in each phase (from the accepted request's send to
``[DONE]``), the share of requests shed, and the checks: every stream parsed by the openai SDK,
and every session holds exactly the turns its client saw answered, each stored once, with the
text the client assembled (a keel-aware client: it drops what it had at a ``retry`` marker).
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
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx2
import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from temporalio.testing import WorkflowEnvironment  # noqa: E402

from contracts.search_attributes import ALL_SEARCH_ATTRIBUTES  # noqa: E402
from devstack.ephemeral import use_throwaway_key_if_unset  # noqa: E402
from infra.migrate import upgrade_to_head  # noqa: E402
from infra.temporal_client import KeelPlugin  # noqa: E402
from infra.temporal_tuning import dev_server_args  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "gpt-4o-mini"
QUEUE = "bench-interactive-load"
CLIENT_TIMEOUT_SECONDS = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A client sends a turn again, same Idempotency-Key, after a broken connection or these statuses
# (the openai SDK's own retry rule for 5xx; 502 is keel's "every model failed", final).
RESENT_STATUSES = frozenset({500, 504})
RESENDS = 3


# --- Processes (as bench/interactive.py starts them; bench scripts stand alone) ---------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _tail_all(log: Path) -> str:
    return log.read_text() if log.exists() else ""


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


@dataclass
class ClientRecord:
    session_id: str
    answered: dict[str, str] = field(default_factory=dict)  # turn id -> text the client saw
    failed: dict[str, str] = field(default_factory=dict)  # turn id -> error
    latencies_ms: list[float] = field(default_factory=list)
    shed: int = 0
    resent: int = 0
    requests: int = 0
    parse_errors: int = 0


async def one_turn(sdk: openai.AsyncOpenAI, record: ClientRecord, question: str) -> None:
    turn_id = f"t-{uuid.uuid4().hex[:16]}"
    headers = {"Idempotency-Key": turn_id, "X-Keel-Session-Id": record.session_id}
    resent = 0
    while True:
        record.requests += 1
        started = time.perf_counter()
        try:
            stream = await sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": question}],
                stream=True,
                extra_headers=headers,
            )
            text = ""
            async for chunk in stream:
                keel = (chunk.model_extra or {}).get("keel") or {}
                if keel.get("event") == "retry":
                    text = ""  # the attempt it belonged to failed: keel resends the answer
                for choice in chunk.choices:
                    text += choice.delta.content or ""
        except openai.APIStatusError as error:
            if error.status_code == 503:
                record.shed += 1
                retry_after = float(error.response.headers.get("retry-after") or 1)
                await asyncio.sleep(retry_after * random.uniform(1.0, 1.5))
                continue
            if error.status_code in RESENT_STATUSES and resent < RESENDS:
                resent += 1  # as the SDK's own retries would, with the same Idempotency-Key
                record.resent += 1
                continue
            record.failed[turn_id] = f"{error.status_code}: {error.message}"
            return
        except ValueError as error:  # JSONDecodeError: the SDK could not parse a chunk
            record.parse_errors += 1
            record.failed[turn_id] = f"unparsable stream: {error}"
            return
        except openai.APIConnectionError as error:
            if resent < RESENDS:
                resent += 1  # the same key again: the turn's first answer, not a second turn
                record.resent += 1
                continue
            record.failed[turn_id] = f"{type(error).__name__}: {error}"
            return
        except openai.APIError as error:
            record.failed[turn_id] = f"{type(error).__name__}: {error}"
            return
        record.latencies_ms.append((time.perf_counter() - started) * 1000)
        record.answered[turn_id] = text
        return


async def run_clients(
    url: str, token: str, clients: int, turns: int, tag: str
) -> tuple[list[ClientRecord], float]:
    limits = httpx2.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    http = httpx2.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT_SECONDS)
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, http_client=http)
    records = [ClientRecord(session_id=f"{tag}-{uuid.uuid4().hex[:10]}") for _ in range(clients)]

    async def client(record: ClientRecord) -> None:
        await asyncio.sleep(random.uniform(0, 0.5))  # users do not arrive in one instant
        for number in range(turns):
            await one_turn(sdk, record, f"Turn {number}: tell me about rivers.")

    started = time.perf_counter()
    await asyncio.gather(*(client(r) for r in records))
    elapsed = time.perf_counter() - started
    await sdk.close()
    return records, elapsed


# --- CPU by process ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def pid_with_argument(argument: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in command:
            return int(entry.name)
    return None


async def postgres_pids(admin: asyncpg.Connection, database: str) -> list[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return [int(r["pid"]) for r in rows]


async def cpu_snapshot(
    processes: dict[str, int], admin: asyncpg.Connection, database: str
) -> dict[str, float]:
    snapshot = {name: cpu_seconds(pid) for name, pid in processes.items()}
    # Backends come and go with the pools; those alive at both ends carry nearly all the work.
    for pid in await postgres_pids(admin, database):
        snapshot[f"postgres:{pid}"] = cpu_seconds(pid)
    return snapshot


def cpu_by_process(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    used: dict[str, float] = {}
    for key, seconds in after.items():
        name = "postgres" if key.startswith("postgres:") else key
        used[name] = used.get(name, 0.0) + seconds - before.get(key, 0.0)
    return used


# --- Checks ------------------------------------------------------------------------------------


async def check_sessions(connection: asyncpg.Connection, records: list[ClientRecord]) -> list[str]:
    """Every session holds exactly the turns its client saw answered, each once, same text."""
    problems: list[str] = []
    for record in records:
        rows = await connection.fetch(
            "SELECT turn_id, role, content FROM messages WHERE session_id = $1 ORDER BY seq",
            record.session_id,
        )
        stored: dict[str, list[str]] = {}
        for row in rows:
            if row["role"] == "assistant":
                stored.setdefault(row["turn_id"], []).append(row["content"] or "")
        for turn_id, texts in stored.items():
            if len(texts) != 1:
                problems.append(f"{record.session_id}/{turn_id}: stored {len(texts)} times")
        for turn_id, text in record.answered.items():
            if turn_id not in stored:
                problems.append(f"{record.session_id}/{turn_id}: answered but not stored")
            elif stored[turn_id][0] != text:
                problems.append(f"{record.session_id}/{turn_id}: stored text differs")
        for turn_id in stored.keys() - record.answered.keys():
            why = record.failed.get(turn_id, "never answered to the client")
            problems.append(f"{record.session_id}/{turn_id}: stored, but the client got {why}")
    return problems


# --- The run -----------------------------------------------------------------------------------


def summary(name: str, records: list[ClientRecord], elapsed: float) -> dict[str, float]:
    latencies = [ms for r in records for ms in r.latencies_ms]
    answered = sum(len(r.answered) for r in records)
    requests = sum(r.requests for r in records)
    shed = sum(r.shed for r in records)
    failed = sum(len(r.failed) for r in records)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = percentile(latencies, 0.99) if latencies else float("nan")
    print(
        f"{name:5} {len(records):4d} clients: {answered} turns answered in {elapsed:6.1f} s "
        f"= {answered / elapsed:6.1f} turns/s; accepted turn p50 {p50:7.0f} ms, p99 {p99:7.0f} ms; "
        f"shed {shed}/{requests} requests ({100 * shed / max(requests, 1):.1f}%); "
        f"failed {failed}; sent again after a broken connection or 5xx "
        f"{sum(r.resent for r in records)}"
    )
    return {"p50": p50, "p99": p99, "rate": answered / elapsed, "answered": answered}


async def bench(args: argparse.Namespace, scratch: Path) -> int:
    keel_bin = Path(args.keel_repo) / ".venv" / "bin" if args.keel_repo else BIN
    keel_repo = Path(args.keel_repo) if args.keel_repo else REPO
    server = os.environ.get(
        "KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    admin_url = server.rpartition("/")[0] + "/postgres"
    name = f"keel_bench_load_{os.getpid()}"
    database_url = admin_url.rpartition("/")[0] + f"/{name}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    await asyncio.to_thread(upgrade_to_head, database_url)

    settings = use_throwaway_key_if_unset()
    db_file = scratch / "temporal.db"
    tuning = [] if args.dev_server_defaults else dev_server_args()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        plugins=[KeelPlugin(settings)],
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        ui=False,
        dev_server_log_level="error",
        dev_server_extra_args=[*tuning, "--db-filename", str(db_file)],
    )
    processes: list[subprocess.Popen[bytes]] = []
    problems: list[str] = []
    api_errors: Counter[str] = Counter()
    try:
        sim_log = scratch / "sim.log"
        simulator = start_process(
            [str(BIN / "python"), "-m", "llmsim", "--port", "0", "--no-access-log",
             "--log-level", "warning", "--latency-scale", str(args.latency_scale),
             "--profile", args.profile, "--seed", str(args.seed)],
            dict(os.environ), sim_log,
        )  # fmt: skip
        processes.append(simulator)
        sim_url = (await wait_for_log(sim_log, r"listening on (http://\S+)", simulator)).group(1)
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
        worker = start_process(
            [str(keel_bin / "python"), "-m", "workers", "--queue", QUEUE],
            keel_env, scratch / "worker.log", cwd=keel_repo,
        )  # fmt: skip
        processes.append(worker)
        port = free_port()
        api = start_process(
            [str(keel_bin / "keel"), "api", "--port", str(port)],
            keel_env, scratch / "api.log", cwd=keel_repo,
        )  # fmt: skip
        processes.append(api)
        url = f"http://127.0.0.1:{port}"
        await wait_for_http(f"{url}/healthz")
        creating = await asyncio.create_subprocess_exec(
            str(keel_bin / "keel"), "token", "create", "--tenant", "default", "--role", "client",
            "--expires", "1d", "--description", "bench/interactive_load.py",
            env=keel_env, cwd=keel_repo,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        created, problem = await creating.communicate()
        if creating.returncode != 0:
            raise RuntimeError(f"keel token create failed: {problem.decode()}")
        token = created.decode().strip()
        temporal_pid = pid_with_argument(str(db_file))
        watched = {"api": api.pid, "worker": worker.pid, "simulator": simulator.pid}
        if temporal_pid is not None:
            watched["temporal"] = temporal_pid

        await run_clients(url, token, 2, 2, "warm")  # connections, caches, first workflows
        idle, idle_elapsed = await run_clients(
            url, token, args.idle_clients, args.idle_turns, "idle"
        )
        before = await cpu_snapshot(watched, admin, name)
        loaded, load_elapsed = await run_clients(url, token, args.clients, args.turns, "load")
        after = await cpu_snapshot(watched, admin, name)
        async with httpx2.AsyncClient() as http:
            health = (await http.get(f"{url}/healthz")).json()
        connection = await asyncpg.connect(database_url)
        try:
            problems = await check_sessions(connection, idle + loaded)
        finally:
            await connection.close()
        api_errors = Counter(
            re.findall(
                r'"error": ?"([^"]+)"', await asyncio.to_thread(_tail_all, scratch / "api.log")
            )
        )
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

    load = os.getloadavg()
    print(
        f"keel from {keel_repo}; simulator profile {args.profile}, latency_scale "
        f"{args.latency_scale}; {args.turns} streamed turns per client; dev server "
        f"{'default dynamic config' if args.dev_server_defaults else 'with keel tuning'}; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    idle_figures = summary("idle", idle, idle_elapsed)
    load_figures = summary("load", loaded, load_elapsed)
    used = cpu_by_process(before, after)
    per_turn = {k: 1000 * v / max(load_figures["answered"], 1) for k, v in used.items()}
    print(
        "CPU ms per accepted turn (load phase): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_turn.items()))
        + f"; total {sum(per_turn.values()):.1f}"
    )
    print(
        f"load p99 / idle p99 = {load_figures['p99'] / idle_figures['p99']:.2f} (target <= 2); "
        f"API admission: {health.get('admitted')} admitted, {health.get('shed')} shed, "
        f"limit now {health.get('admission_limit')}"
    )
    parse_errors = sum(r.parse_errors for r in idle + loaded)
    print(f"streams the openai SDK could not parse: {parse_errors}")
    failures = Counter(
        text.split(":")[0] for r in idle + loaded for text in r.failed.values()
    ).most_common(5)
    if failures:
        print(f"failed turns by error: {failures}")
    if api_errors:
        print(f"errors in the API's log: {api_errors.most_common(5)}")
    if problems:
        print(f"SESSION CHECK FAILED ({len(problems)}):")
        for line in problems[:20]:
            print(f"  {line}")
    else:
        print("every session holds exactly the turns its client saw answered, each stored once")
    return 1 if problems or parse_errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--idle-clients", type=int, default=4)
    parser.add_argument("--idle-turns", type=int, default=25, help="turns per idle client")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--profile", default="none", help="the simulator's fault profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-scale", type=float, default=0.2)
    parser.add_argument("--keel-repo", help="run the worker and API from this checkout")
    parser.add_argument(
        "--dev-server-defaults",
        action="store_true",
        help="the dev server's default dynamic config (a stand-in for an untuned cluster)",
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        try:
            code = asyncio.run(bench(arguments, Path(directory)))
        except Exception:
            traceback.print_exc()
            code = 2
    sys.exit(code)
