"""A flood of low-priority requests is shed with 503 + Retry-After at once, while a
high-priority request still gets through and runs with Temporal priority 1."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx2
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from api.server import running_api
from contracts.sessions import session_workflow_id
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.api.tokens import http_client, issue_token, openai_client
from tests.conftest import reconfigure

MODEL = "gpt-4o-mini"
CAPACITY = 2
FLOOD = 8


def chat(question: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}]}


async def test_a_low_priority_flood_is_shed_while_high_priority_passes(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    slow_simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(monkeypatch, KEEL_SHED_IN_FLIGHT=str(CAPACITY))
    low = {"X-Keel-Priority": "low"}
    token = await issue_token()
    async with (
        running_api(settings, client) as url,
        http_client(url, token, timeout=60) as http,
    ):

        async def timed_post(question: str) -> tuple[httpx2.Response, float]:
            started = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=chat(question), headers=low)
            return response, time.perf_counter() - started

        flood = [asyncio.create_task(timed_post(f"flood {i}")) for i in range(FLOOD)]
        await asyncio.sleep(0.3)  # the flood is in: CAPACITY requests in flight, the rest shed
        session_id = f"s-{uuid.uuid4().hex[:8]}"
        vip = openai_client(
            url, token, **{"X-Keel-Priority": "high", "X-Keel-Session-Id": session_id}
        )
        urgent = await vip.chat.completions.create(**chat("urgent question"))  # type: ignore[call-overload]
        results = await asyncio.gather(*flood)

        shed = [(r, t) for r, t in results if r.status_code == 503]
        served = [(r, t) for r, t in results if r.status_code == 200]
        assert len(served) == CAPACITY and len(shed) == FLOOD - CAPACITY
        for response, seconds in shed:
            assert response.headers["Retry-After"] == str(settings.shed_retry_after_seconds)
            assert response.json()["error"]["code"] == "overloaded"
            # Refused at once, not after queueing behind the flood (each served call takes ~2 s).
            assert seconds < min(t for _, t in served)
        assert urgent.choices[0].message.content
        # The urgent turn ran with Temporal priority 1 (the flood's low requests with 5).
        description = await client.get_workflow_handle(session_workflow_id(session_id)).describe()
        assert description.raw_description.workflow_execution_info.priority.priority_key == 1

        # Once the flood has drained, low priority is admitted again.
        slow_simulator.configure(fixed_latency_s=None)
        after = await http.post("/v1/chat/completions", json=chat("later"), headers=low)
        assert after.status_code == 200
        assert (await http.get("/healthz")).json()["in_flight"] == 0
