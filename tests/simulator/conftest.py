"""Fixtures: one in-process simulator per test session (ephemeral port), reset before
every test, plus real OpenAI / Anthropic SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import openai
import pytest
import pytest_asyncio

from llmsim import SimConfig, SimServer

SEED = 7


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimServer]:
    with SimServer(SimConfig(seed=SEED, latency_scale=0)) as server:
        yield server


@pytest.fixture
def sim(sim_server: SimServer) -> SimServer:
    sim_server.reset()
    sim_server.clear_faults()
    sim_server.clear_canned_responses()
    sim_server.configure(seed=SEED, latency_scale=0, fixed_latency_s=None, prompt_cache=True)
    return sim_server


@pytest_asyncio.fixture
async def oai(sim: SimServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=sim.openai_base_url, api_key="sim", max_retries=0, timeout=10
    )
    async with client:
        yield client


@pytest_asyncio.fixture
async def anth(sim: SimServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        base_url=sim.anthropic_base_url, api_key="sim", max_retries=0, timeout=10
    )
    async with client:
        yield client
