"""The HTTP API served from the test's event loop, on an ephemeral port, against the test's
dev server, database, simulator and in-process worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from api.server import running_api
from infra.settings import KeelSettings
from llmsim import SimServer


@pytest.fixture
async def keel_url(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker
) -> AsyncIterator[str]:
    async with running_api(keel_settings, client) as url:
        yield url


@pytest.fixture
def slow_simulator(simulator: SimServer) -> Iterator[SimServer]:
    """The session's simulator streaming at a human pace for one test (restored after)."""
    before = simulator.configure()
    simulator.configure(fixed_latency_s=2.0, latency_scale=1.0)
    try:
        yield simulator
    finally:
        simulator.configure(
            fixed_latency_s=before["fixed_latency_s"], latency_scale=before["latency_scale"]
        )
