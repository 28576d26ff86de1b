"""The OpenAI Files and Batches API, driven by the official openai SDK over HTTP against
`keel api`, a batch worker and the simulator: an existing batch script works unchanged and
durably (every custom_id answered once, one ledger row per call), bad lines are a 400 naming the
line, another tenant sees nothing, cancel and expiry stop a batch, list paginates, retries with
an Idempotency-Key create nothing twice, and ``models.list()`` names what a token may use."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import openai
import pytest
from sqlalchemy import func, update
from temporalio.client import Client
from temporalio.worker import Worker

from activities.batch.files import BatchFileLimits
from activities.batch.provider_api import openai_body
from contracts.batch import ItemRequest, batch_workflow_id
from infra.database import DatabaseRole, session_factory
from infra.settings import KeelSettings
from infra.tables import OpenAiBatch, OpenAiFile
from llmsim import SimServer
from services.api_tokens import IssuedToken
from services.openai_files import FileRefused, check_batch_file, checked_batch_lines
from services.retention import parse_duration, purge_content
from tests.api.tokens import http_client, openai_client
from tests.batch.conftest import items_of
from tests.conftest import reconfigure
from tests.helpers import eventually, ledger_rows
from workers.builder import build_worker

MODEL = "gpt-4o-mini"
FINAL = ("completed", "failed", "expired", "cancelled")
# Few items in flight at a time, so a cancel meets items still pending.
CONCURRENCY = 3


@pytest.fixture
def keel_settings(keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch) -> KeelSettings:
    return reconfigure(monkeypatch, KEEL_BATCH_CONCURRENCY=str(CONCURRENCY))


@pytest.fixture
async def batch_worker(client: Client, keel_settings: KeelSettings) -> AsyncIterator[Worker]:
    worker = build_worker(client, keel_settings.batch_task_queue, keel_settings)
    async with worker:
        yield worker


@pytest.fixture
async def sdk(
    keel_url: str, api_token: IssuedToken, batch_worker: Worker
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(keel_url, api_token) as client:
        yield client


@pytest.fixture
def slower_simulator(simulator: SimServer) -> Iterator[SimServer]:
    before = simulator.configure()
    simulator.configure(fixed_latency_s=1.0, latency_scale=1.0)
    try:
        yield simulator
    finally:
        simulator.configure(
            fixed_latency_s=before["fixed_latency_s"], latency_scale=before["latency_scale"]
        )


def batch_line(custom_id: str, question: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 32,
            **body,
        },
    }


def jsonl(lines: Sequence[dict[str, Any] | str]) -> bytes:
    return "".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
    ).encode()


def requests_file(count: int, prefix: str = "req") -> bytes:
    return jsonl(
        [batch_line(f"{prefix}-{n}", f"Question {n}: name a river.") for n in range(count)]
    )


def output_lines(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


async def finished(
    client: openai.AsyncOpenAI, batch_id: str, timeout: float = 90
) -> openai.types.Batch:
    return await eventually(
        lambda: client.batches.retrieve(batch_id),
        lambda batch: batch.status in FINAL,
        timeout=timeout,
        interval=0.3,
    )


# --- the script, unchanged ------------------------------------------------------------------


def an_existing_batch_script(base_url: str, api_key: str, path: str) -> dict[str, Any]:
    """What an OpenAI batch script does, with the sync client, only the base URL changed."""
    import time

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    with open(path, "rb") as source:
        batch_input_file = client.files.create(file=source, purpose="batch")
    batch = client.batches.create(
        input_file_id=batch_input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": "nightly eval job"},
    )
    seen = [batch.status]
    deadline = time.monotonic() + 90
    while batch.status not in FINAL and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
        seen.append(batch.status)
    assert batch.output_file_id is not None, batch
    output = client.files.content(batch.output_file_id)
    return {
        "input": batch_input_file,
        "batch": batch,
        "statuses": seen,
        "output": output.content,
        "output_file": client.files.retrieve(batch.output_file_id),
        "listed": [b.id for b in client.batches.list(limit=10)],
        "models": [m.id for m in client.models.list()],
    }


async def test_an_openai_batch_script_runs_unchanged_and_answers_every_request_once(
    keel_url: str,
    api_token: IssuedToken,
    batch_worker: Worker,
    simulator: SimServer,
    tmp_path: Any,
) -> None:
    count = 12
    path = tmp_path / "batchinput.jsonl"
    path.write_bytes(requests_file(count))
    run = await asyncio.to_thread(
        an_existing_batch_script, f"{keel_url}/v1", api_token.secret, str(path)
    )
    uploaded, batch = run["input"], run["batch"]
    assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
    assert uploaded.filename == "batchinput.jsonl" and uploaded.status == "processed"
    assert batch.status == "completed", run["statuses"]
    assert set(run["statuses"]) <= {"validating", "in_progress", "finalizing", "completed"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (count, count)
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.metadata == {"description": "nightly eval job"}
    assert batch.endpoint == "/v1/chat/completions" and batch.completion_window == "24h"
    assert batch.completed_at and batch.in_progress_at and batch.expires_at
    assert batch.expires_at - batch.created_at == 24 * 3600

    lines = output_lines(run["output"])
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{n}" for n in range(count))
    for line in lines:
        response = line["response"]
        assert line["error"] is None and response["status_code"] == 200
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert run["output_file"].purpose == "batch_output"
    assert run["output_file"].bytes == len(run["output"])
    assert run["listed"] == [batch.id]
    assert {"keel", "balanced", MODEL, "claude-3-5-haiku-latest"} <= set(run["models"])

    # Durable and counted once: one ledger row per request, as many as the provider received.
    rows = await ledger_rows(batch_workflow_id(batch.id))
    assert len(rows) == count == simulator.stats()["totals"]["requests"]
    assert all(row.outcome == "ok" and row.tenant == "default" for row in rows)
    # The same batch as keel sees it.
    assert [item.status for item in await items_of(batch.id)] == ["ok"] * count


async def test_a_file_with_bad_lines_is_a_400_naming_them_and_nothing_is_stored(
    sdk: openai.AsyncOpenAI, simulator: SimServer
) -> None:
    good = batch_line("a", "Name a lake.")
    cases: dict[str, list[dict[str, Any] | str]] = {
        "line 2: url '/v1/embeddings' is not supported": [
            good,
            {**batch_line("b", "x"), "url": "/v1/embeddings"},
        ],
        "line 3: invalid JSON": [good, batch_line("b", "Name a sea."), '{"custom_id": "c",'],
        "line 2: not an OpenAI batch line": [good, {"custom_id": "k", "prompt": "Hi"}],
        "line 2: body field(s) seed are not honoured": [good, batch_line("b", "x", seed=7)],
        "line 2: custom_id 'a' repeats line 1": [good, batch_line("a", "Again.")],
        "line 1: body field(s) tools not supported": [batch_line("a", "x", tools=[])],
    }
    for expected, lines in cases.items():
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        assert expected in refused.value.message, (expected, refused.value.message)
        assert refused.value.code == "invalid_batch_line"
    # Many bad lines: the first three are named, and how many more there are.
    many = [good] + ['{"custom_id": "x' + str(n) + '"}' for n in range(6)]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.files.create(file=("in.jsonl", jsonl(many)), purpose="batch")
    message = refused.value.message
    assert "6 line(s)" in message and "line 2:" in message and "line 4:" in message
    assert "line 5:" not in message and "and 3 more" in message
    with pytest.raises(openai.BadRequestError) as empty:
        await sdk.files.create(file=("in.jsonl", b"\n \n"), purpose="batch")
    assert empty.value.code == "empty_file"
    with pytest.raises(openai.BadRequestError) as purpose:
        await sdk.files.create(file=("in.jsonl", jsonl([good])), purpose="fine-tune")
    assert purpose.value.param == "purpose" and "'fine-tune'" in purpose.value.message
    # Harmless fields pass (and are not sent on).
    accepted = await sdk.files.create(
        file=("in.jsonl", jsonl([batch_line("a", "x", user="u-1", store=False)])),
        purpose="batch",
    )
    assert [f.id async for f in sdk.files.list()] == [accepted.id]
    assert simulator.stats()["totals"]["requests"] == 0


async def test_an_upload_larger_than_a_request_body_is_taken_up_to_the_file_limit(
    sdk: openai.AsyncOpenAI, keel_settings: KeelSettings
) -> None:
    """Batch files are bigger than chat requests: the upload route has its own body limit."""
    padding = "x" * 900
    content = jsonl([batch_line(f"r{n}", f"{padding} {n}") for n in range(1500)])
    assert len(content) > keel_settings.max_request_body_bytes
    uploaded = await sdk.files.create(file=("big.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content)
    assert (await sdk.files.content(uploaded.id)).content == content


def test_a_file_over_a_limit_is_refused_naming_the_setting() -> None:
    content = requests_file(40)
    limits = BatchFileLimits.from_settings(KeelSettings())
    assert check_batch_file(content, limits) == 40
    # What a batch runs: the same check, its lines parsed in the same pass.
    lines = checked_batch_lines(content, limits)
    assert [line.custom_id for line in lines] == [f"req-{n}" for n in range(40)]
    assert all(line.request is not None and line.problem is None for line in lines)
    with pytest.raises(FileRefused):
        checked_batch_lines(content, replace(limits, items=39))
    with pytest.raises(FileRefused) as too_big:
        check_batch_file(content, replace(limits, file_bytes=len(content) - 1))
    assert too_big.value.status == 413 and "KEEL_MAX_BATCH_FILE_BYTES" in too_big.value.message
    with pytest.raises(FileRefused) as too_many:
        check_batch_file(content, replace(limits, items=39))
    assert "KEEL_MAX_BATCH_ITEMS" in too_many.value.message
    with pytest.raises(FileRefused) as too_long:
        check_batch_file(content, replace(limits, line_bytes=50))
    assert "line 1: line is" in too_long.value.message
    assert "KEEL_MAX_BATCH_LINE_BYTES" in too_long.value.message


async def test_another_tenants_token_gets_404_for_everything(
    sdk: openai.AsyncOpenAI, keel_url: str, simulator: SimServer
) -> None:
    from tests.api.tokens import issue_token

    uploaded = await sdk.files.create(file=("in.jsonl", requests_file(2)), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    other = await issue_token(tenant="other-tenant")
    async with openai_client(keel_url, other) as stranger:
        attempts = [
            stranger.files.retrieve(uploaded.id),
            stranger.files.content(uploaded.id),
            stranger.files.delete(uploaded.id),
            stranger.batches.retrieve(batch.id),
            stranger.batches.cancel(batch.id),
            stranger.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ),
        ]
        for attempt in attempts:
            with pytest.raises(openai.NotFoundError):
                await attempt
        assert [b.id async for b in stranger.batches.list()] == []
        assert [f.id async for f in stranger.files.list()] == []
    done = await finished(sdk, batch.id)
    assert done.status == "completed"
    async with openai_client(keel_url, other) as stranger:
        assert done.output_file_id is not None
        with pytest.raises(openai.NotFoundError):
            await stranger.files.content(done.output_file_id)
    # Its owner still has all of it.
    assert (await sdk.files.retrieve(uploaded.id)).id == uploaded.id


async def test_cancel_stops_the_batch_and_every_request_is_in_one_of_the_two_files(
    sdk: openai.AsyncOpenAI, slower_simulator: SimServer
) -> None:
    count = 15
    uploaded = await sdk.files.create(file=("in.jsonl", requests_file(count)), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # Cancelled once requests are at the provider (they finish) and others wait (they never run).
    await eventually(lambda: slower_simulator.stats()["totals"]["requests"] >= 1, timeout=30)
    cancelling = await sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    again = await sdk.batches.cancel(batch.id)  # harmless
    assert again.status in ("cancelling", "cancelled")
    done = await finished(sdk, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts is not None and counts.total == count
    assert 0 < counts.completed < count and counts.completed + counts.failed == count
    assert done.output_file_id and done.error_file_id
    outputs = output_lines((await sdk.files.content(done.output_file_id)).content)
    errors = output_lines((await sdk.files.content(done.error_file_id)).content)
    assert len(outputs) == counts.completed and len(errors) == counts.failed
    ids = [line["custom_id"] for line in outputs + errors]
    assert sorted(ids) == sorted(f"req-{n}" for n in range(count))
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    # A finished batch cannot be cancelled into another state.
    other = await sdk.files.create(file=("b.jsonl", requests_file(1, "z")), purpose="batch")
    quick = await sdk.batches.create(
        input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await finished(sdk, quick.id)).status == "completed"
    with pytest.raises(openai.ConflictError) as late:
        await sdk.batches.cancel(quick.id)
    assert late.value.code == "batch_not_cancellable"


async def test_a_batch_past_its_completion_window_expires(
    sdk: openai.AsyncOpenAI, slower_simulator: SimServer
) -> None:
    uploaded = await sdk.files.create(file=("in.jsonl", requests_file(12)), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await eventually(
        lambda: sdk.batches.retrieve(batch.id), lambda b: b.status == "in_progress", timeout=30
    )
    # 24 hours pass (the window's end moves back instead).
    async with session_factory().begin() as session:
        await session.execute(
            update(OpenAiBatch)
            .where(OpenAiBatch.batch_id == batch.id)
            .values(expires_at=func.now() - timedelta(seconds=1))
        )
    done = await finished(sdk, batch.id)
    assert done.status == "expired" and done.expired_at is not None
    assert done.request_counts is not None and done.request_counts.failed > 0
    assert done.error_file_id is not None
    errors = output_lines((await sdk.files.content(done.error_file_id)).content)
    assert errors and {line["error"]["code"] for line in errors} == {"batch_expired"}


async def test_list_pages_newest_first_and_retries_with_a_key_create_nothing_twice(
    sdk: openai.AsyncOpenAI, simulator: SimServer
) -> None:
    key = {"Idempotency-Key": "upload-1"}
    first = await sdk.files.create(
        file=("in.jsonl", requests_file(1)), purpose="batch", extra_headers=key
    )
    retried = await sdk.files.create(
        file=("in.jsonl", requests_file(1)), purpose="batch", extra_headers=key
    )
    assert retried.id == first.id
    with pytest.raises(openai.ConflictError):
        await sdk.files.create(
            file=("in.jsonl", requests_file(2)), purpose="batch", extra_headers=key
        )
    created = []
    for n in range(3):
        headers = {"Idempotency-Key": f"batch-{n}"}
        batch = await sdk.batches.create(
            input_file_id=first.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers=headers,
        )
        again = await sdk.batches.create(
            input_file_id=first.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers=headers,
        )
        assert again.id == batch.id
        created.append(batch.id)
    page = await sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    assert [b.id async for b in sdk.batches.list(limit=2)] == created[::-1]
    for batch_id in created:
        assert (await finished(sdk, batch_id)).status == "completed"
    # One request per batch reached the provider: the retried creates started nothing.
    assert simulator.stats()["totals"]["requests"] == 3


async def test_a_json_schema_lines_strict_and_description_are_kept_not_dropped(
    sdk: openai.AsyncOpenAI, simulator: SimServer
) -> None:
    """A line's json_schema runs as the live API runs it: its strict flag and description are
    part of the stored request (and so of the call); a json_schema field keel does not know is a
    400 naming it."""
    schema = {
        "type": "object",
        "properties": {"river": {"type": "string"}},
        "required": ["river"],
        "additionalProperties": False,
    }
    json_schema = {
        "name": "river",
        "description": "One river of the country asked about",
        "schema": schema,
        "strict": True,
    }
    line = batch_line(
        "a",
        "Name a river of France.",
        response_format={"type": "json_schema", "json_schema": json_schema},
    )
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.files.create(
            file=(
                "in.jsonl",
                jsonl(
                    [
                        {
                            **line,
                            "body": {
                                **line["body"],
                                "response_format": {
                                    "type": "json_schema",
                                    "json_schema": {**json_schema, "examples": []},
                                },
                            },
                        }
                    ]
                ),
            ),
            purpose="batch",
        )
    uploaded = await sdk.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await finished(sdk, batch.id)).status == "completed"
    assert "response_format.json_schema field(s) examples" in refused.value.message
    (item,) = await items_of(batch.id)
    assert item.status == "ok"
    request = ItemRequest.model_validate(item.request)
    assert request.json_schema_strict is True
    assert request.json_schema_description == "One river of the country asked about"
    sent = openai_body(MODEL, request)["response_format"]["json_schema"]
    assert sent == json_schema


async def test_create_refuses_what_keel_cannot_run_naming_the_field(
    sdk: openai.AsyncOpenAI, simulator: SimServer
) -> None:
    uploaded = await sdk.files.create(file=("in.jsonl", requests_file(1)), purpose="batch")
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
    ]
    for change, param in refusals:
        fields: dict[str, Any] = {
            "input_file_id": uploaded.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **change,
        }
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.batches.create(**fields)
        assert refused.value.param == param, refused.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        await sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"priority": "high"},
        )
    assert "priority" in unknown.value.message
    with pytest.raises(openai.NotFoundError):
        await sdk.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    # Deleting the input file: gone for the API, content and all.
    deleted = await sdk.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        await sdk.files.content(uploaded.id)
    assert simulator.stats()["totals"]["requests"] == 0


async def test_models_lists_routes_and_their_reachable_models(
    keel_url: str,
    api_token: IssuedToken,
    keel_settings: KeelSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with openai_client(keel_url, api_token) as sdk:
        listed = {model.id: model for model in (await sdk.models.list()).data}
        one = await sdk.models.retrieve("claude-3-5-haiku-latest")
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("gpt-nonexistent")
    routes = set(keel_settings.routes)
    models = {model for chain in keel_settings.routes.values() for model in chain}
    assert set(listed) == routes | models | {"keel"}
    assert listed["keel"].owned_by == "keel"
    extra = listed["balanced"].model_extra or {}
    assert extra["keel"]["models"] == keel_settings.routes["balanced"]
    assert listed[MODEL].owned_by == "openai" and one.owned_by == "anthropic"
    # With only an OpenAI key, Anthropic's models cannot be reached: they are not listed.
    from api.models import available_models

    only_openai = reconfigure(monkeypatch, OPENAI_API_KEY="sk-test-not-used")
    names = {entry.id for entry in available_models(only_openai)}
    assert MODEL in names and "claude-3-5-haiku-latest" not in names


async def test_keel_purge_removes_an_old_uploads_bytes_and_keeps_the_file(
    sdk: openai.AsyncOpenAI, simulator: SimServer
) -> None:
    old = await sdk.files.create(file=("old.jsonl", requests_file(2)), purpose="batch")
    new = await sdk.files.create(file=("new.jsonl", requests_file(3)), purpose="batch")
    async with session_factory().begin() as session:
        await session.execute(
            update(OpenAiFile)
            .where(OpenAiFile.id == old.id)
            .values(created_at=func.now() - timedelta(days=100))
        )
    async with session_factory(purpose=DatabaseRole.RETENTION).begin() as session:
        purged = await purge_content(session, parse_duration("90d"))
    assert purged.counts["openai_files.content"] == 1
    assert (await sdk.files.retrieve(old.id)).bytes == len(requests_file(2))
    with pytest.raises(openai.NotFoundError) as gone:
        await sdk.files.content(old.id)
    assert gone.value.code == "file_content_purged"
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.batches.create(
            input_file_id=old.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.param == "input_file_id" and "keel purge" in refused.value.message
    assert (await sdk.files.content(new.id)).content == requests_file(3)


async def test_a_file_name_keel_cannot_store_is_cleaned_not_refused(
    sdk: openai.AsyncOpenAI, keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    # Raw multipart: the SDK's HTTP client would escape what this test needs to send as is.
    content = requests_file(1)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="night\x00ly'
        + "\u2028".encode()
        + "é".encode() * 600
        + b'.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + content
        + b"\r\n--b--\r\n"
    )
    async with http_client(keel_url, api_token) as http:
        response = await http.post(
            "/v1/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
    assert response.status_code == 200, response.text
    uploaded = response.json()
    assert uploaded["filename"] == "nightly" + "é" * 293
    batch = await sdk.batches.create(
        input_file_id=uploaded["id"], endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await finished(sdk, batch.id)).status == "completed"
