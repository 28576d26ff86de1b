"""The official openai SDK, pointed at `keel api`, works: sync and streaming, sessions,
idempotent retries, OpenAI-shaped errors and a resumable stream."""

from __future__ import annotations

import asyncio
import uuid

import httpx2
import openai
import pytest

from contracts.sessions import session_workflow_id
from llmsim import SimServer
from services.api_tokens import IssuedToken
from tests.api.tokens import http_client, openai_client
from tests.helpers import ledger_rows
from tests.sessions.conftest import stored_messages

MODEL = "gpt-4o-mini"


def sdk(keel_url: str, token: IssuedToken, **headers: str) -> openai.AsyncOpenAI:
    return openai_client(keel_url, token, **headers)


async def test_the_sync_openai_client_gets_a_chat_completion(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    def call() -> openai.types.chat.ChatCompletion:
        # The keel token is the SDK's api_key: it goes out as `Authorization: Bearer …`.
        with openai.OpenAI(
            base_url=f"{keel_url}/v1", api_key=api_token.secret, max_retries=0
        ) as sync:
            return sync.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Name a river."},
                ],
            )

    completion = await asyncio.to_thread(call)
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].message.content and completion.choices[0].finish_reason
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    extra = completion.model_extra or {}
    session_id = extra["keel"]["session_id"]
    assert [m.role for m in await stored_messages(session_id)] == ["user", "assistant"]


async def test_streaming_with_the_async_client_ends_with_the_stored_text(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    client = sdk(keel_url, api_token, **{"X-Keel-Session-Id": session_id})
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a glacier."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    text = "".join(pieces)
    (stored,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert text and text == stored.content and finish == "stop"
    assert usage is not None and usage.completion_tokens == stored.tokens
    (row,) = await ledger_rows(session_workflow_id(session_id))
    assert row.streamed and row.cost_usd is not None and row.cost_usd > 0


async def test_a_session_keeps_its_history_between_requests(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    client = sdk(keel_url, api_token)
    first = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Remember: my name is Ada."}],
        extra_body={"session_id": session_id},
    )
    # The client sends only the new question; keel supplies the history.
    second = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is my name?"}],
        extra_body={"session_id": session_id},
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    assert len(await stored_messages(session_id)) == 4


async def test_a_retried_request_with_the_same_idempotency_key_is_answered_once(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    client = sdk(
        keel_url, api_token, **{"X-Keel-Session-Id": session_id, "Idempotency-Key": "retry-me"}
    )
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Name a lake."}]}
    first = await client.chat.completions.create(**request)  # type: ignore[call-overload]
    again = await asyncio.gather(
        *(client.chat.completions.create(**request) for _ in range(3))  # type: ignore[call-overload]
    )
    assert {c.choices[0].message.content for c in again} == {first.choices[0].message.content}
    assert simulator.stats()["models"][MODEL]["requests"] == 1
    # Stateless requests too: the key maps a retry onto the same one-turn session.
    stateless = sdk(keel_url, api_token, **{"Idempotency-Key": "stateless-retry"})
    once = await stateless.chat.completions.create(**request)  # type: ignore[call-overload]
    twice = await stateless.chat.completions.create(**request)  # type: ignore[call-overload]
    assert twice.choices[0].message.content == once.choices[0].message.content
    assert (twice.model_extra or {})["keel"]["session_id"] == (once.model_extra or {})["keel"][
        "session_id"
    ]
    assert simulator.stats()["models"][MODEL]["requests"] == 2


async def test_bad_requests_get_openai_shaped_4xx_errors(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    client = sdk(keel_url, api_token)
    with pytest.raises(openai.BadRequestError) as empty:
        await client.chat.completions.create(model=MODEL, messages=[])
    assert empty.value.status_code == 400
    assert isinstance(empty.value.body, dict) and "messages" in empty.value.body["message"]
    with pytest.raises(openai.BadRequestError) as assistant_last:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "assistant", "content": "hi"}]
        )
    assert "last message" in assistant_last.value.message
    async with http_client(keel_url, api_token) as http:
        garbage = await http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        missing = await http.get("/v1/nothing-here")
        bad_priority = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Keel-Priority": "urgent"},
        )
    for response, status in ((garbage, 400), (missing, 404), (bad_priority, 400)):
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert "Traceback" not in response.text


async def test_a_failed_turn_is_an_error_not_a_stack_trace(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    client = sdk(keel_url, api_token)
    with pytest.raises(openai.APIStatusError) as failure:
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hello"}]
        )
    assert failure.value.status_code == 404  # the caller's unknown model, as OpenAI answers it
    assert "no-such-model" in failure.value.message and "Traceback" not in failure.value.message


async def test_openapi_document_lists_the_routes(keel_url: str) -> None:
    async with httpx2.AsyncClient(base_url=keel_url) as http:
        document = (await http.get("/openapi.json")).json()
    assert {
        "/v1/chat/completions",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/approvals",
        "/v1/approvals/{workflow_id}/approve",
    } <= set(document["paths"])
