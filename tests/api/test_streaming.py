"""Streams over HTTP: a client that drops mid-stream and reconnects with Last-Event-ID resumes
with no gap and no duplicate; `curl -N`-style clients can follow a turn's own event stream."""

from __future__ import annotations

import asyncio
import uuid

import anthropic
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from temporalio.client import Client
from temporalio.worker import Worker

from api.server import running_api
from llmsim import SimServer
from services.api_tokens import IssuedToken
from tests.api.sse_reading import SseEvent, content_of, sse_events
from tests.api.tokens import http_client, openai_client
from tests.conftest import reconfigure
from tests.sessions.conftest import stored_messages

MODEL = "gpt-4o-mini"


def body(question: str) -> dict[str, object]:
    return {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": question}]}


async def test_a_reconnect_mid_stream_resumes_without_gap_or_duplicate(
    keel_url: str, api_token: IssuedToken, slow_simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    headers = {"X-Keel-Session-Id": session_id, "Idempotency-Key": "turn-reconnect"}
    before: list[SseEvent] = []
    async with http_client(keel_url, api_token) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body("Tell me about deserts."), headers=headers
        ) as response:
            assert response.status_code == 200
            async for event in sse_events(response):
                before.append(event)
                if sum(1 for e in before if content_of(e)) == 3:
                    break  # the client drops the connection mid-answer
        last_id = max(e.id for e in before if e.id is not None)
        after: list[SseEvent] = []
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json=body("Tell me about deserts."),
            headers={**headers, "Last-Event-ID": str(last_id)},
        ) as response:
            async for event in sse_events(response):
                after.append(event)
    assert after[-1].data == "[DONE]"
    ids = [e.id for e in before + after if e.id is not None]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive: no gap, no repeat
    text = "".join(content_of(e) for e in before + after)
    (stored,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert text == stored.content
    assert content_of(after[0])  # resumed straight into the answer, no second opening
    assert slow_simulator.stats()["models"][MODEL]["requests"] == 1  # the model ran once
    # The dropped connection released its place in the in-flight count (load shedding).
    async with http_client(keel_url, api_token) as http:
        for _ in range(50):
            if (await http.get("/healthz")).json()["in_flight"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/healthz")).json()["in_flight"] == 0


async def test_a_turn_can_be_followed_and_resumed_on_its_own_event_stream(
    keel_url: str, api_token: IssuedToken, slow_simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    headers = {"X-Keel-Session-Id": session_id, "Idempotency-Key": "turn-follow"}
    events_url = f"/v1/sessions/{session_id}/turns/turn-follow/events"
    async with http_client(keel_url, api_token) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body("Describe a forest."), headers=headers
        ) as chat:
            # A second client (a UI, `curl -N`) watches the same turn, from the start...
            async with http.stream("GET", events_url) as watcher:
                watched = [e async for e in sse_events(watcher)]
            chat_text = "".join([content_of(e) async for e in sse_events(chat)])
        # ...and one that saw the first two events resumes after them.
        async with http.stream("GET", events_url, headers={"Last-Event-ID": "2"}) as resumed:
            tail = [e async for e in sse_events(resumed)]
    kinds = [e.event for e in watched]
    assert kinds[0] == "attempt" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}
    assert [e.id for e in watched] == list(range(1, len(watched) + 1))
    assert [e.id for e in tail] == [e.id for e in watched[2:]]
    final = watched[-1].json()["text"]
    assert final == "".join(e.json()["text"] for e in watched if e.event == "delta") == chat_text


async def test_a_retried_attempt_is_marked_in_the_openai_stream(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    simulator.add_faults("stream_reset", model=MODEL, count=1, after_chunks=3)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    async with (
        http_client(keel_url, api_token) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=body("Name three mountains."),
            headers={"X-Keel-Session-Id": session_id},
        ) as response,
    ):
        events = [e async for e in sse_events(response)]
    chunks = [e.json() for e in events if e.data != "[DONE]"]
    markers = [i for i, c in enumerate(chunks) if c.get("keel", {}).get("event") == "retry"]
    assert len(markers) == 1 and chunks[markers[0]]["keel"]["attempt"] == 2
    before = "".join(content_of(e) for e in events[: markers[0]])
    after = "".join(content_of(e) for e in events[markers[0] :])
    (stored,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert before and after == stored.content  # discard what came before the marker


async def test_the_openai_sdk_parses_a_stream_that_goes_quiet_after_a_broken_attempt(
    client: Client,
    interactive_worker: Worker,
    simulator: SimServer,
    api_token: IssuedToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chaos-profile failure: an attempt streams a few tokens (events with ``id:``), its
    connection is reset, and the retry waits out a 429's Retry-After. The stream is quiet for
    longer than the keep-alive interval, so keep-alives go out between events; the openai SDK
    must parse every one of them, and the answer it assembles is the one the session stored."""
    settings = reconfigure(monkeypatch, KEEL_STREAM_KEEP_ALIVE_SECONDS="0.1")
    simulator.add_faults("stream_reset", model=MODEL, after_chunks=2)
    simulator.add_faults("rate_limit", model=MODEL, retry_after_s=1.0)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    async with (
        running_api(settings, client) as url,
        openai_client(url, api_token, **{"X-Keel-Session-Id": session_id}) as sdk,
    ):
        stream = await sdk.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "Tell me a story."}]
        )
        text = ""
        restarts = 0
        async for chunk in stream:  # raised JSONDecodeError at the first keep-alive
            keel = (chunk.model_extra or {}).get("keel") or {}
            if keel.get("event") == "retry":
                text, restarts = "", restarts + 1  # a keel-aware client drops the broken attempt
            for choice in chunk.choices:
                text += choice.delta.content or ""
    (stored,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert restarts == 1
    assert text == stored.content
    assert simulator.stats()["models"][MODEL]["requests"] == 3  # reset, 429, answer


async def test_a_streamed_answer_cut_at_max_tokens_finishes_with_length_like_a_plain_one(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    question: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Describe a glacier in detail."}
    ]
    async with openai_client(keel_url, api_token) as sdk:
        plain = await sdk.chat.completions.create(model=MODEL, messages=question, max_tokens=5)
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=question, max_tokens=5, stream=True
        )
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert plain.choices[0].finish_reason == "length"
    assert [f for f in finishes if f is not None] == ["length"]


async def test_an_anthropic_stream_cut_at_max_tokens_stops_with_max_tokens(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=keel_url, api_key=api_token.secret, max_retries=0
    ) as claude:
        question: list[MessageParam] = [
            {"role": "user", "content": "Describe a glacier in detail."}
        ]
        plain = await claude.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=5, messages=question
        )
        async with claude.messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=5, messages=question
        ) as stream:
            final = await stream.get_final_message()
    assert plain.stop_reason == "max_tokens" and final.stop_reason == "max_tokens"
