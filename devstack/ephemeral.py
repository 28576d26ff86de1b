"""A throwaway keel stack inside one process, for benchmarks and recording replay histories.

A scratch database (migrated to head) on an existing Postgres, a fresh Temporal dev server, the
LLM simulator on an ephemeral port, and keel's workers — all torn down on exit.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contracts.search_attributes import ALL_SEARCH_ATTRIBUTES
from infra.database import dispose_engines
from infra.migrate import upgrade_to_head
from infra.payload_codec import configured_keys, new_key
from infra.settings import KeelSettings, get_settings, to_asyncpg_url
from infra.temporal_client import KeelPlugin
from infra.temporal_tuning import dev_server_args
from llmsim import SimConfig, SimServer
from workers.builder import build_worker

TEMPORAL_CLI = Path(sys.executable).with_name("temporal")
PROVIDER_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
)


@dataclass
class EphemeralStack:
    client: Client
    settings: KeelSettings
    simulator: SimServer
    database_url: str


def use_throwaway_key_if_unset() -> KeelSettings:
    """Give this process (and the processes it starts, which inherit os.environ) a random
    encryption key when encryption is on and none is configured: a throwaway stack encrypts its
    payloads as production does. Returns the settings that result."""
    get_settings.cache_clear()
    settings = get_settings()
    if settings.encryption and not configured_keys(settings).keys:
        os.environ["KEEL_ENCRYPTION_KEYS"] = new_key("throwaway").entry()
        get_settings.cache_clear()
        settings = get_settings()
    return settings


def _server_url() -> str:
    explicit = os.environ.get("KEEL_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    url = explicit or "postgresql://postgres@127.0.0.1:5432/postgres"
    return to_asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def ephemeral_stack(
    *,
    queues: Sequence[str] = ("interactive",),
    simulator: SimConfig | None = None,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[EphemeralStack]:
    server_url = _server_url()
    name = f"keel_scratch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f"CREATE DATABASE {name}")
    database_url = server_url.rpartition("/")[0] + f"/{name}"
    saved = dict(os.environ)
    try:
        await asyncio.to_thread(upgrade_to_head, database_url)
        with SimServer(simulator or SimConfig(latency_scale=0.0, seed=7)) as sim:
            for variable in PROVIDER_VARIABLES:
                os.environ.pop(variable, None)
            os.environ.update(DATABASE_URL=database_url, KEEL_SIMULATOR_URL=sim.url)
            os.environ.update(extra_env or {})
            settings = use_throwaway_key_if_unset()
            async with AsyncExitStack() as stack:
                env = await stack.enter_async_context(
                    await WorkflowEnvironment.start_local(
                        dev_server_existing_path=str(TEMPORAL_CLI),
                        plugins=[KeelPlugin(settings)],
                        search_attributes=ALL_SEARCH_ATTRIBUTES,
                        ui=False,
                        dev_server_log_level="error",
                        dev_server_extra_args=dev_server_args(),
                    )
                )
                for queue in queues:
                    name_of_queue = (
                        settings.batch_task_queue
                        if queue == "batch"
                        else settings.interactive_task_queue
                    )
                    await stack.enter_async_context(
                        build_worker(env.client, name_of_queue, settings)
                    )
                yield EphemeralStack(env.client, settings, sim, database_url)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        await dispose_engines()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
