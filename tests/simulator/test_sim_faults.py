"""Fault injection as the SDKs see it: each kind raises the exception a real outage would."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from llmsim import FaultKind, FaultRule, SimConfig, SimServer

GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
USER: list[Any] = [{"role": "user", "content": "Tell me about durable workflows"}]


async def ask_openai(client: openai.AsyncOpenAI, model: str = GPT, **kw: Any) -> str:
    r = await client.chat.completions.create(model=model, messages=USER, **kw)
    return r.choices[0].message.content or ""


async def ask_anthropic(client: anthropic.AsyncAnthropic, model: str = CLAUDE, **kw: Any) -> str:
    m = await client.messages.create(model=model, max_tokens=200, messages=USER, **kw)
    return m.content[0].text


@pytest.mark.asyncio
async def test_rate_limit_carries_retry_after(
    sim: SimServer, oai: openai.AsyncOpenAI, anth: anthropic.AsyncAnthropic
) -> None:
    sim.add_faults("rate_limit", model=GPT, retry_after_s=2)
    with pytest.raises(openai.RateLimitError) as err:
        await ask_openai(oai)
    assert err.value.response.headers["retry-after"] == "2"
    assert err.value.response.headers["retry-after-ms"] == "2000"
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["x-request-id"].startswith("req_")

    sim.add_faults(FaultKind.RATE_LIMIT, model=CLAUDE, retry_after_s=0.5)
    with pytest.raises(anthropic.RateLimitError) as aerr:
        await ask_anthropic(anth)
    assert aerr.value.response.headers["retry-after"] == "1"  # whole seconds, rounded up
    assert aerr.value.response.headers["retry-after-ms"] == "500"
    assert aerr.value.type == "rate_limit_error"
    # The fault was one request only.
    assert await ask_openai(oai) and await ask_anthropic(anth)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "openai_error", "status", "code"),
    [
        ("server_error", openai.InternalServerError, 500, None),
        ("overloaded", openai.InternalServerError, 503, None),
        ("content_policy", openai.BadRequestError, 400, "content_policy_violation"),
        ("context_window", openai.BadRequestError, 400, "context_length_exceeded"),
    ],
)
async def test_openai_http_faults(
    sim: SimServer,
    oai: openai.AsyncOpenAI,
    kind: str,
    openai_error: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    sim.add_faults(kind, model=GPT)
    with pytest.raises(openai_error) as err:
        await ask_openai(oai)
    assert err.value.status_code == status and err.value.code == code


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "anthropic_error", "status", "message"),
    [
        ("server_error", anthropic.InternalServerError, 500, "Internal server error"),
        ("overloaded", anthropic.OverloadedError, 529, "Overloaded"),
        ("content_policy", anthropic.BadRequestError, 400, "Usage Policy"),
        ("context_window", anthropic.BadRequestError, 400, "prompt is too long"),
    ],
)
async def test_anthropic_http_faults(
    sim: SimServer,
    anth: anthropic.AsyncAnthropic,
    kind: str,
    anthropic_error: type[anthropic.APIStatusError],
    status: int,
    message: str,
) -> None:
    sim.add_faults(kind, model=CLAUDE)
    with pytest.raises(anthropic_error) as err:
        await ask_anthropic(anth)
    assert err.value.status_code == status and message in (err.value.api_message or "")


@pytest.mark.asyncio
async def test_hang_times_the_client_out(
    sim: SimServer, oai: openai.AsyncOpenAI, anth: anthropic.AsyncAnthropic
) -> None:
    sim.add_faults("hang", model=GPT)
    sim.add_faults("hang", model=CLAUDE)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await ask_openai(oai, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        await ask_anthropic(anth, timeout=0.3)
    assert time.monotonic() - started < 3
    assert await ask_openai(oai)  # and the server is fine afterwards


@pytest.mark.asyncio
async def test_stream_reset_cuts_the_stream_after_some_chunks(
    sim: SimServer, oai: openai.AsyncOpenAI, anth: anthropic.AsyncAnthropic
) -> None:
    sim.add_faults("stream_reset", model=GPT, after_chunks=3)
    received: list[str] = []

    async def read_openai() -> None:
        stream = await oai.chat.completions.create(model=GPT, messages=USER, stream=True)
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIConnectionError):
        await read_openai()
    assert len(received) == 4  # the role chunk, then 3 content chunks
    assert "".join(received).startswith("Re:")

    sim.add_faults("stream_reset", model=CLAUDE, after_chunks=2)
    deltas: list[str] = []

    async def read_anthropic() -> None:
        async with anth.messages.stream(model=CLAUDE, max_tokens=200, messages=USER) as s:
            async for delta in s.text_stream:
                deltas.append(delta)

    # The anthropic SDK lets the transport's error through untranslated mid-stream.
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        await read_anthropic()
    assert len(deltas) == 2 and "".join(deltas).startswith("Re:")


@pytest.mark.asyncio
async def test_stream_reset_without_streaming_drops_the_connection(
    sim: SimServer, oai: openai.AsyncOpenAI, anth: anthropic.AsyncAnthropic
) -> None:
    sim.add_faults("stream_reset", model=GPT)
    sim.add_faults("stream_reset", model=CLAUDE)
    with pytest.raises(openai.APIConnectionError) as err:
        await ask_openai(oai)
    assert not isinstance(err.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError):
        await ask_anthropic(anth)


async def outcomes(client: openai.AsyncOpenAI, n: int, model: str = GPT) -> list[str]:
    out = []
    for _ in range(n):
        try:
            await ask_openai(client, model=model)
            out.append("ok")
        except openai.APIStatusError as exc:
            out.append(str(exc.status_code))
        except openai.APIConnectionError:
            out.append("dropped")
    return out


@pytest.mark.asyncio
async def test_scripted_faults_are_consumed_in_order(
    sim: SimServer, oai: openai.AsyncOpenAI
) -> None:
    sim.add_faults("rate_limit", model=GPT, count=2)
    sim.add_faults("server_error", model=GPT)
    sim.add_faults("overloaded", model="*")
    assert await outcomes(oai, 2, model="gpt-4o") == ["503", "ok"]  # "*" is shared
    assert await outcomes(oai, 4) == ["429", "429", "500", "ok"]


@pytest.mark.asyncio
async def test_probabilistic_faults_replay_under_the_same_seed(
    sim: SimServer, oai: openai.AsyncOpenAI
) -> None:
    rules = [
        FaultRule(kind=FaultKind.SERVER_ERROR, rate=0.3),
        FaultRule(model=GPT, kind=FaultKind.RATE_LIMIT, rate=0.2),
    ]
    sim.set_fault_rules(rules)
    first = await outcomes(oai, 40)
    assert {"ok", "500", "429"} <= set(first)
    sim.reset()  # counters back to 0 (rules set live are dropped too)
    sim.set_fault_rules(rules)
    assert await outcomes(oai, 40) == first
    sim.reset()
    sim.set_fault_rules(rules)
    sim.configure(seed=8)
    assert await outcomes(oai, 40) != first


@pytest.mark.asyncio
async def test_flaky_profile_spares_the_fallback_model(
    sim: SimServer, oai: openai.AsyncOpenAI
) -> None:
    sim.set_fault_rules(profile="flaky")
    assert set(await outcomes(oai, 25)) == {"ok"}
    primary = await outcomes(oai, 40, model="gpt-4o")
    assert primary.count("ok") < 40


@pytest.mark.asyncio
async def test_stats_count_requests_faults_and_successes(
    sim: SimServer, oai: openai.AsyncOpenAI, anth: anthropic.AsyncAnthropic
) -> None:
    sim.add_faults("server_error", model=GPT)
    await outcomes(oai, 3)
    stream = await oai.chat.completions.create(model=GPT, messages=USER, stream=True)
    async for _ in stream:
        pass
    await ask_anthropic(anth)
    with pytest.raises(openai.NotFoundError):
        await ask_openai(oai, model="missing")
    stats = sim.stats()
    gpt = stats["models"][GPT]
    assert gpt["requests"] == 4 and gpt["streamed"] == 1 and gpt["non_streamed"] == 3
    assert gpt["successes"] == 3 and gpt["faults"] == {"server_error": 1}
    assert gpt["completion_tokens"] > 0 and gpt["prompt_tokens"] > 0
    assert stats["models"][CLAUDE]["successes"] == 1
    assert stats["models"]["missing"]["errors"] == {"not_found": 1}
    assert stats["totals"]["requests"] == 6


@pytest.mark.asyncio
async def test_shutdown_is_not_held_up_by_hanging_requests() -> None:
    server = SimServer(SimConfig(latency_scale=0)).start()
    server.add_faults("hang", count=2)
    client = openai.AsyncOpenAI(
        base_url=server.openai_base_url, api_key="sim", max_retries=0, timeout=30
    )
    async with client:
        pending = [asyncio.create_task(ask_openai(client)) for _ in range(2)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 2
        results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, openai.APIConnectionError) for r in results)
