"""Provider batches wait durably: on the real dev stack (Temporal dev server, embedded Postgres,
simulator and workers as processes), the batch worker, the Temporal server and Postgres are each
SIGKILLed while provider batches are in progress and brought back with `up`. Nothing is submitted
to a provider twice (the simulator's own log of created batches), and every item ends with
exactly one result and one ledger row."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from activities.batch.files import BatchFileLimits, parse_lines
from activities.batch.provider_batches import PROVIDER_BATCH_RUN
from contracts.batch import BatchOptions
from contracts.provider_batch import ProviderBatchSettings
from devstack import stack
from infra.database import dispose_engines, session_factory
from infra.settings import get_settings
from infra.tables import ProviderBatchChunk
from infra.temporal_client import KeelPlugin
from services.batches import submit_provider_batch
from tests.batch.conftest import BACKUP, CHEAP, items_of, prompt_lines
from tests.devstack.devstack_helpers import Stack, discard_home, make_settings
from tests.helpers import ledger_rows

ITEMS, PER_CHUNK = 24, 6
PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "KEEL_OPENAI_API_KEY",
    "KEEL_ANTHROPIC_API_KEY",
)


@contextlib.contextmanager
def traversable_home() -> Iterator[Path]:
    """A throw-away KEEL_HOME under /tmp that the embedded Postgres' user can reach (0755)."""
    home = Path(tempfile.mkdtemp(prefix="keel-provider-batch-", dir="/tmp"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        discard_home(home)


def sigkill(status: stack.StackStatus, part: str) -> None:
    pid = status.part(part).pid
    assert pid is not None, f"{part} is not running"
    process = psutil.Process(pid)
    process.send_signal(signal.SIGKILL)
    process.wait(10)


async def chunks_submitted(batch_id: str) -> int:
    async with session_factory()() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(ProviderBatchChunk)
            .where(
                ProviderBatchChunk.batch_id == batch_id,
                ProviderBatchChunk.provider_batch_id.is_not(None),
            )
        )
    return int(count or 0)


async def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_provider_batches_survive_worker_temporal_and_postgres_kills_without_resubmitting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEEL_METRICS_PORT", "0")
    monkeypatch.setenv("KEEL_LOG_FORMAT", "json")
    with traversable_home() as home:
        settings = make_settings(home)
        dev = Stack(settings, overrides={})
        status = await asyncio.to_thread(dev.up)
        assert status.simulator_url is not None
        async with httpx2.AsyncClient(base_url=status.simulator_url) as simulator:
            # Slow enough that every kill lands while provider batches are in progress.
            configured = await simulator.post(
                "/admin/config", json={"batch": {"processing_s": 8.0}}
            )
            assert configured.status_code == 200, configured.text
            monkeypatch.setenv("DATABASE_URL", status.database_url)
            get_settings.cache_clear()
            try:
                client = await Client.connect(
                    status.temporal_address,
                    namespace=status.temporal_namespace,
                    plugins=[KeelPlugin(settings)],
                )
                batch_id = "pkill"
                lines = prompt_lines(ITEMS // 2, model=CHEAP, prefix="o") + prompt_lines(
                    ITEMS // 2, model=BACKUP, prefix="a"
                )
                handle = await submit_provider_batch(
                    client,
                    settings,
                    session_factory(),
                    list(parse_lines(lines, BatchFileLimits.from_settings(settings))),
                    batch_id=batch_id,
                    options=BatchOptions(),
                    source_name="kill.jsonl",
                    provider_settings=ProviderBatchSettings(
                        poll_initial_seconds=0.5,
                        poll_max_seconds=1.0,
                        max_requests_per_chunk=PER_CHUNK,
                    ),
                )
                chunks = ITEMS // PER_CHUNK

                async def all_submitted() -> bool:
                    return await chunks_submitted(batch_id) == chunks

                await wait_for(all_submitted, "every chunk at its provider")
                batch_worker = stack.worker_part(settings.batch_task_queue)
                sigkill(status, batch_worker)
                sigkill(status, stack.TEMPORAL)
                restarted = await asyncio.to_thread(dev.up)
                assert restarted.part(stack.TEMPORAL).action == "started"
                assert restarted.part(batch_worker).pid != status.part(batch_worker).pid
                sigkill(restarted, stack.POSTGRES)
                again = await asyncio.to_thread(dev.up)
                assert again.part(stack.POSTGRES).action == "started"
                items_so_far = await items_of(batch_id)
                # The kills landed before the provider finished.
                assert sum(1 for i in items_so_far if i.status == "ok") < ITEMS

                result = await asyncio.wait_for(handle.result(), timeout=120)
                submissions = (await simulator.get("/admin/batches")).json()["submissions"]
                stats = (await simulator.get("/admin/stats")).json()
                items = await items_of(batch_id)
                ledger = await ledger_rows(handle.id)
            finally:
                await dispose_engines()
                get_settings.cache_clear()

    assert (result.status, result.ok, result.failed) == ("completed", ITEMS, 0)
    # Nothing submitted twice: one provider batch per chunk, and each line in exactly one.
    assert len(submissions) == chunks
    sent = Counter(custom_id for s in submissions for custom_id in s["custom_ids"])
    assert len(sent) == ITEMS and set(sent.values()) == {1}
    assert stats["totals"]["requests"] == 0  # no live call was needed
    assert len(items) == len({i.custom_id for i in items}) == ITEMS
    assert all(i.status == "ok" and i.response and i.response["provider_batch_id"] for i in items)
    assert len(ledger) == ITEMS and {r.run_id for r in ledger} == {PROVIDER_BATCH_RUN}
    assert len({r.activity_id for r in ledger}) == ITEMS
