"""A flood is shed with 503 + Retry-After at once (low priority first, then normal, at the
adaptive limit), while a high-priority request still gets through and runs with Temporal
priority 1."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx2
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from api.load_shedding import AdmissionLimit
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
        # A refusal comes before the token is looked up and the body validated: under overload
        # most requests are refused, and a refusal must cost next to nothing.
        async with httpx2.AsyncClient(
            base_url=url, headers={"Authorization": "Bearer not-a-keel-token"}
        ) as stranger:
            unknown = await stranger.post("/v1/chat/completions", json=chat("hi"), headers=low)
        malformed = await http.post("/v1/messages", json={"messages": 3}, headers=low)
        job = await http.post("/v1/jobs", json={"kind": "ask", "input": {}}, headers=low)
        for refused in (unknown, malformed, job):
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == str(settings.shed_retry_after_seconds)
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
        # ...and what was refused for load is now refused for what it is.
        async with httpx2.AsyncClient(
            base_url=url, headers={"Authorization": "Bearer not-a-keel-token"}
        ) as stranger:
            unknown = await stranger.post("/v1/chat/completions", json=chat("hi"), headers=low)
        assert unknown.status_code == 401
        malformed = await http.post("/v1/messages", json={"messages": 3}, headers=low)
        assert malformed.status_code == 400, malformed.text
        assert (await http.get("/healthz")).json()["in_flight"] == 0


async def test_normal_priority_is_shed_at_the_limit_while_high_priority_passes(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    slow_simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch, KEEL_ADMISSION_MIN_IN_FLIGHT="1", KEEL_ADMISSION_MAX_IN_FLIGHT=str(CAPACITY)
    )
    token = await issue_token()
    async with (
        running_api(settings, client) as url,
        http_client(url, token, timeout=60) as http,
    ):

        async def post(question: str, priority: str) -> httpx2.Response:
            headers = {"X-Keel-Priority": priority}
            return await http.post("/v1/chat/completions", json=chat(question), headers=headers)

        flood = [asyncio.create_task(post(f"flood {i}", "normal")) for i in range(FLOOD)]
        await asyncio.sleep(0.3)  # CAPACITY normal requests hold every place, the rest are shed
        # High priority is not shed while lower work holds the places: both get through.
        urgent = await asyncio.gather(post("urgent 1", "high"), post("urgent 2", "high"))
        results = await asyncio.gather(*flood)

        assert [r.status_code for r in urgent] == [200, 200]
        shed = [r for r in results if r.status_code == 503]
        assert sum(r.status_code == 200 for r in results) == CAPACITY
        assert len(shed) == FLOOD - CAPACITY
        for response in shed:
            assert response.headers["Retry-After"] == str(settings.shed_retry_after_seconds)
            assert response.json()["error"]["code"] == "overloaded"
            assert "normal-priority requests are refused" in response.json()["error"]["message"]
        health = (await http.get("/healthz")).json()
        assert health["admitted"] == {"high": 2, "normal": CAPACITY, "low": 0}
        assert health["shed"] == {"high": 0, "normal": FLOOD - CAPACITY, "low": 0}
        assert health["in_flight"] == 0
        metrics = (await http.get("/metrics")).text
        assert 'keel_api_shed_total{priority="normal"}' in metrics


def test_the_limit_follows_keels_latency_against_the_budget() -> None:
    """AIMD on keel's own latency: over budget, the limit is cut below what is in flight and
    the stragglers admitted before the cut do not cut it again; well under budget with
    requests waiting, it grows; it stays within its floor and ceiling."""
    now = [0.0]
    settings = KeelSettings(
        interactive_latency_budget_ms=200, admission_min_in_flight=4, admission_max_in_flight=64
    )
    limit = AdmissionLimit(settings, clock=lambda: now[0])
    assert limit.allowed == 16

    def window(seconds: float, in_flight: int, admitted_at: float | None = None) -> None:
        now[0] += 0.6 + seconds  # requests admitted after the last adjustment
        for _ in range(3):  # one window: it closes at its third sample
            when = now[0] - seconds if admitted_at is None else admitted_at
            limit.observe(when, seconds, in_flight, in_flight_at_admission=in_flight)

    window(0.5, in_flight=30)  # over budget: cut to 0.8 x the limit (16 < 30 in flight)
    assert limit.allowed == 12
    window(0.5, in_flight=12, admitted_at=now[0] - 0.1)  # admitted before the cut: ignored
    assert limit.allowed == 12
    window(0.05, in_flight=10)  # fast, but nobody waits at the limit: unchanged
    assert limit.allowed == 12
    limit.refused()
    window(0.05, in_flight=12)  # fast and requests were refused: grow 20 % (of 12.8)
    assert limit.allowed == 15
    window(0.05, in_flight=3)
    # A request admitted after the last adjustment has waited past the budget for its first
    # event: the limit is cut before that request reports anything.
    limit.waiting_since(now[0], in_flight=14)
    assert limit.allowed == 15  # not yet waiting long
    now[0] += 0.3
    limit.waiting_since(now[0] - 0.3, in_flight=14)
    assert limit.allowed == 11
    limit.waiting_since(now[0] - 0.3, in_flight=11)  # admitted before that cut: no second one
    assert limit.allowed == 11
    for _ in range(20):
        window(0.05, in_flight=limit.allowed)
    assert limit.allowed == 64  # the ceiling
    for _ in range(20):
        window(1.0, in_flight=30)
    assert limit.allowed == 4  # the floor


def test_on_a_slow_machine_the_limit_keeps_twice_the_uncongested_latency() -> None:
    """When even a few requests in flight take longer than the budget (a machine busy with
    other work), the limit holds accepted requests within twice that latency instead of
    shedding down to the floor."""
    now = [0.0]
    settings = KeelSettings(
        interactive_latency_budget_ms=200, admission_min_in_flight=4, admission_max_in_flight=64
    )
    limit = AdmissionLimit(settings, clock=lambda: now[0])

    def window(seconds: float, in_flight: int) -> None:
        now[0] += 0.6 + seconds
        for _ in range(3):  # one window: it closes at its third sample
            limit.observe(now[0] - seconds, seconds, in_flight, in_flight_at_admission=in_flight)

    window(0.5, in_flight=3)  # uncongested, yet over the budget: the machine is slow
    assert limit.threshold_seconds == 1.0
    window(0.8, in_flight=30)  # within twice the uncongested latency: kept
    assert limit.allowed == 16
    window(1.2, in_flight=30)  # beyond it: cut
    assert limit.allowed == 12
