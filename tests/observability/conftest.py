"""A real worker serving its metrics endpoint, for the tests that scrape it."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from infra.settings import KeelSettings
from tests.conftest import reconfigure
from workers.__main__ import run_worker


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


@pytest.fixture
async def worker_metrics(
    client: Client, keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The real worker entry point (python -m workers), run in this process on an ephemeral
    metrics port, re-reading its gauges every 0.2 s."""
    settings = reconfigure(
        monkeypatch,
        TEMPORAL_ADDRESS=client.service_client.config.target_host,
        KEEL_METRICS_PORT="0",
        KEEL_METRICS_REFRESH_SECONDS="0.2",
    )
    stop = asyncio.Event()
    started: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    worker = asyncio.create_task(
        run_worker(settings.interactive_task_queue, stop, on_started=started.set_result)
    )
    url = await asyncio.wait_for(started, 60)
    assert url is not None
    yield url
    stop.set()
    await worker
