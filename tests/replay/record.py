"""Record the replay test's histories: ``python -m tests.replay.record [NAME ...]``.

Runs each scenario on a fresh dev server, a scratch database and the simulator, then writes the
workflow's history as JSON under tests/replay/histories/.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infra.migrate import upgrade_to_head
from infra.search_attributes import ALL_SEARCH_ATTRIBUTES
from infra.settings import get_settings
from infra.temporal_tuning import dev_server_args
from llmsim import SimConfig, SimServer
from tests.conftest import TEMPORAL_CLI
from tests.replay.scenarios import SCENARIOS
from tests.replay.test_replay import HISTORIES
from workers.builder import build_worker

SERVER_URL = os.environ.get(
    "KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def record(names: list[str]) -> None:
    scratch = "keel_replay_record"
    admin = await asyncpg.connect(SERVER_URL)
    await admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {scratch}")
    database_url = SERVER_URL.rpartition("/")[0] + f"/{scratch}"
    await asyncio.to_thread(upgrade_to_head, database_url)
    try:
        with SimServer(SimConfig(latency_scale=0.0, seed=7)) as sim:
            os.environ.update(DATABASE_URL=database_url, KEEL_SIMULATOR_URL=sim.url)
            for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
                os.environ.pop(key, None)
            get_settings.cache_clear()
            settings = get_settings()
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=str(TEMPORAL_CLI),
                data_converter=pydantic_data_converter,
                search_attributes=ALL_SEARCH_ATTRIBUTES,
                ui=False,
                dev_server_extra_args=dev_server_args(),
            )
            async with env, build_worker(env.client, settings.interactive_task_queue, settings):
                for name in names:
                    sim.reset()
                    handle = await SCENARIOS[name](env.client, settings, sim)
                    history = await handle.fetch_history()
                    (HISTORIES / f"{name}.json").write_text(history.to_json())
                    print(f"recorded {name}: {len(history.events)} events")
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1:] or sorted(SCENARIOS)))
