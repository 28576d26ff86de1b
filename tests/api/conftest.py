"""The HTTP API served from the test's event loop, on an ephemeral port, against the test's
dev server, database, simulator and in-process worker; and API tokens to call it with.

Every /v1 request needs a token: ``api_token`` is a client token of tenant ``default`` in the
test's database, ``keel_http`` / ``keel_openai`` send it. Tests elsewhere (e.g. tests/security)
can import these fixtures (``from tests.api.conftest import api_token, keel_url``) or issue their
own with ``tests.api.tokens.issue_token``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import openai
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from api.server import running_api
from infra.settings import KeelSettings
from llmsim import SimServer
from services.api_tokens import IssuedToken
from tests.api.tokens import http_client, issue_token, openai_client


@pytest.fixture
async def keel_url(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker
) -> AsyncIterator[str]:
    async with running_api(keel_settings, client) as url:
        yield url


@pytest.fixture
async def api_token(database_url: str) -> IssuedToken:
    """A client token (chat, sessions, jobs) of tenant ``default``, in the test's database."""
    return await issue_token()


@pytest.fixture
async def keel_http(keel_url: str, api_token: IssuedToken) -> AsyncIterator[httpx2.AsyncClient]:
    """An HTTP client for keel_url that authenticates with ``api_token``."""
    async with http_client(keel_url, api_token, timeout=30) as http:
        yield http


@pytest.fixture
async def keel_openai(keel_url: str, api_token: IssuedToken) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official openai SDK pointed at keel_url, ``api_key`` = ``api_token``."""
    async with openai_client(keel_url, api_token) as sdk:
        yield sdk


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
