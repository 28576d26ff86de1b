"""Admin endpoints over HTTP, canned responses and the latency model."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import pytest_asyncio

from llmsim import SimServer

GPT = "gpt-4o-mini"
USER: list[Any] = [{"role": "user", "content": "Classify this ticket: refund please"}]


@pytest_asyncio.fixture
async def http(sim: SimServer) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


@pytest.mark.asyncio
async def test_faults_endpoint_round_trip(
    http: httpx2.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    r = await http.post(
        "/admin/faults",
        json={
            "scripted": [{"model": GPT, "kind": "rate_limit", "count": 2, "retry_after_s": 3}],
            "rules": [{"model": "gpt-4o", "kind": "server_error", "rate": 1.0}],
        },
    )
    assert r.status_code == 200
    view = (await http.get("/admin/faults")).json()
    assert view["scripted"][0]["count"] == 2 and view["rules"][0]["model"] == "gpt-4o"
    assert "flaky" in view["profiles"]
    with pytest.raises(openai.RateLimitError) as err:
        await oai.chat.completions.create(model=GPT, messages=USER)
    assert err.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert (await http.get("/admin/faults")).json()["scripted"][0]["count"] == 1
    cleared = await http.delete("/admin/faults")
    assert cleared.json() == {"rules": [], "scripted": []}
    assert await oai.chat.completions.create(model=GPT, messages=USER)
    r = await http.post("/admin/faults", json={"profile": "flaky"})
    assert {rule["model"] for rule in r.json()["rules"]} >= {"gpt-4o", "claude-sonnet-4-5"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "payload", "needle"),
    [
        ("/admin/faults", {"scripted": [{"model": GPT, "kind": "meteor"}]}, "invalid fault"),
        ("/admin/faults", {"rules": [{"kind": "hang", "rate": 1.5}]}, "invalid fault"),
        ("/admin/faults", {"profile": "nope"}, "unknown profile"),
        ("/admin/faults", {"scripted": [], "surprise": 1}, "invalid fault"),
        ("/admin/responses", {"match": "", "content": "x"}, "invalid canned"),
        ("/admin/config", {"latency_scale": -1}, "invalid config"),
        ("/admin/config", {"latencyscale": 0}, "invalid config"),
        ("/admin/config", {"seed": None}, "seed cannot be null"),
        ("/admin/config", {"min_output_tokens": 50, "max_output_tokens": 10}, "must not exceed"),
    ],
)
async def test_bad_admin_input_is_a_422(
    http: httpx2.AsyncClient, path: str, payload: dict[str, Any], needle: str
) -> None:
    r = await http.post(path, json=payload)
    assert r.status_code == 422
    assert needle in r.json()["error"]["message"]
    garbled = await http.post(path, content=b"{not json")
    assert garbled.status_code == 422


@pytest.mark.asyncio
async def test_stats_and_reset(http: httpx2.AsyncClient, oai: openai.AsyncOpenAI) -> None:
    await oai.chat.completions.create(model=GPT, messages=USER)
    stats = (await http.get("/admin/stats")).json()
    assert stats["models"][GPT]["requests"] == 1 and stats["models"][GPT]["successes"] == 1
    assert stats["totals"]["requests"] == 1
    assert (await http.post("/admin/reset")).json() == {"ok": True}
    assert (await http.get("/admin/stats")).json()["models"] == {}


@pytest.mark.asyncio
async def test_canned_responses(
    http: httpx2.AsyncClient, oai: openai.AsyncOpenAI, anth: anthropic.AsyncAnthropic
) -> None:
    canned = '{"category": "billing", "urgent": true}'
    r = await http.post("/admin/responses", json={"match": "refund", "content": canned})
    assert r.status_code == 200 and r.json()["responses"][0]["content"] == canned
    answer = await oai.chat.completions.create(
        model=GPT,
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "t", "schema": {"type": "object"}},
        },
    )
    assert answer.choices[0].message.content == canned
    m = await anth.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER)
    assert m.content[0].type == "text" and m.content[0].text == canned
    other = await oai.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": "unrelated"}],
    )
    assert other.choices[0].message.content != canned

    await http.delete("/admin/responses")
    await http.post(
        "/admin/responses",
        json={
            "responses": [
                {"match": "refund", "content": "once only", "times": 1, "model": GPT},
            ]
        },
    )
    first = await oai.chat.completions.create(model=GPT, messages=USER)
    second = await oai.chat.completions.create(model=GPT, messages=USER)
    assert first.choices[0].message.content == "once only"
    assert second.choices[0].message.content != "once only"
    assert (await http.get("/admin/responses")).json() == {"responses": []}


@pytest.mark.asyncio
async def test_config_endpoint_and_fixed_latency(
    http: httpx2.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    r = await http.post("/admin/config", json={"fixed_latency_s": 0.3, "seed": 11})
    assert r.json()["fixed_latency_s"] == 0.3 and r.json()["seed"] == 11
    started = time.monotonic()
    await oai.chat.completions.create(model=GPT, messages=USER)
    assert 0.29 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    stream = await oai.chat.completions.create(model=GPT, messages=USER, stream=True)
    async for _ in stream:
        pass
    assert 0.29 <= time.monotonic() - started < 1.5
    r = await http.post("/admin/config", json={"fixed_latency_s": None})
    assert r.json()["fixed_latency_s"] is None
    assert (await http.get("/admin/config")).json()["seed"] == 11


@pytest.mark.asyncio
async def test_latency_scale_paces_streams(sim: SimServer, oai: openai.AsyncOpenAI) -> None:
    sim.configure(latency_scale=1.0)
    started = time.monotonic()
    stream = await oai.chat.completions.create(
        model="sim-tiny", messages=USER, stream=True, max_tokens=40
    )
    arrivals = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    # sim-tiny: 50 ms to first token, then 400 tokens/s (2 tokens a chunk: 5 ms apart).
    assert arrivals[0] >= 0.045
    assert arrivals[-1] - arrivals[0] >= 0.07
    assert arrivals[-1] < 1.0
    sim.configure(latency_scale=0)
    started = time.monotonic()
    await oai.chat.completions.create(model="claude-opus-4-1", messages=USER)
    assert time.monotonic() - started < 0.3  # 1.4 s to first token at scale 1


@pytest.mark.asyncio
async def test_health_and_unknown_routes(http: httpx2.AsyncClient) -> None:
    assert (await http.get("/health")).json()["status"] == "ok"
    missing = await http.post("/v1/completions", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = await http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    bad_json = await http.post("/v1/chat/completions", content=b"nope")
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    no_model = await http.post(
        "/v1/messages",
        json={"max_tokens": 5, "messages": []},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert no_model.status_code == 400 and no_model.json()["type"] == "error"
