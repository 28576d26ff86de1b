"""Size limits on everything that enters keel: each door refuses what is too big with a clear
error (what, how big, the limit, the setting that raises it) before anything starts, and
nothing is lost — a refused request leaves no rows, a batch file's oversized lines are exactly
the lines reported.

Real parts throughout: the API served by uvicorn on a socket, the openai SDK, the `keel` CLI in
a subprocess, the dev server, Postgres and the simulator."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import func, select
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.batch.files import BatchFileLimits
from activities.batch.items import BatchItemActivities
from activities.sessions import FOLD_INSTRUCTION_TOKENS
from api.server import running_api
from contracts.batch import BatchOptions, LoadFileInput
from contracts.llm import ChatMessage
from contracts.sessions import FoldPlan, session_workflow_id, summarization_prompt
from infra.database import session_factory, sessions_for
from infra.settings import KeelSettings
from infra.tables import Batch, BatchItem, ChatSession, Job
from llmsim import SimServer, count_message_tokens
from services.api_tokens import IssuedToken
from services.chat_client import TurnRequest, run_turn
from tests.api.tokens import bearer, http_client, openai_client
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import ledger_rows
from tests.worker_processes import REPO_ROOT, worker_environment
from workflows.ask import AskInput, AskWorkflow

MODEL = "gpt-4o-mini"
BODY_LIMIT = 4096
KEEL = str(Path(sys.executable).with_name("keel"))


# --- helpers -------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, object]:
        payload = json.loads(self.body)
        assert set(payload) == {"error"}, payload
        error: dict[str, object] = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return error


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return RawResponse(int(status_line.split()[1]), headers, body)


@dataclass
class RawConnection:
    """One HTTP/1.1 connection driven by hand, to send bodies the way clients really do
    (and the way no client library lets a test stop halfway)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> RawResponse:
        return await _read_response(self.reader)


@pytest.fixture
async def limited_api(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[str]:
    """The API (and its worker) with small limits: 4 KiB bodies, 1,000-character prompts,
    3 messages."""
    settings = reconfigure(
        monkeypatch,
        KEEL_MAX_REQUEST_BODY_BYTES=str(BODY_LIMIT),
        KEEL_MAX_PROMPT_CHARS="1000",
        KEEL_MAX_PROMPT_TOKENS="300",
        KEEL_MAX_MESSAGES="3",
    )
    await keel_workers.start(settings)
    async with running_api(settings, client) as url:
        yield url


async def connect(url: str) -> RawConnection:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    return RawConnection(reader, writer)


def request_head(token: IssuedToken, *headers: str) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "Host: keel",
        "Content-Type: application/json",
        *(f"{name}: {value}" for name, value in bearer(token).items()),
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chat_body(content: str, messages: int = 1) -> bytes:
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": content}] * messages}
    ).encode()


async def count(table: type[object]) -> int:
    async with session_factory()() as db:
        return int((await db.execute(select(func.count()).select_from(table))).scalar_one())


def simulator_requests(simulator: SimServer) -> int:
    return int(simulator.stats()["totals"]["requests"])


# --- the HTTP body limit -------------------------------------------------------------------


async def test_a_declared_oversized_body_gets_413_before_a_byte_of_it_is_sent(
    limited_api: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    connection = await connect(limited_api)
    # Only the head: if keel waited for the 5 MB it was promised, this would hang.
    await connection.send(request_head(api_token, "Content-Length: 5000000"))
    response = await connection.response()
    assert response.status == 413 and response.headers["connection"] == "close"
    error = response.error()
    assert error["type"] == "invalid_request_error" and error["code"] == "request_too_large"
    assert "5,000,000 bytes" in str(error["message"])
    assert "KEEL_MAX_REQUEST_BODY_BYTES" in str(error["message"])
    assert await count(ChatSession) == 0 and simulator_requests(simulator) == 0


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    limited_api: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """No Content-Length to trust: the bytes are counted as they arrive, and the 413 comes
    while the body is still unfinished (its last chunk never sent)."""
    connection = await connect(limited_api)
    await connection.send(request_head(api_token, "Transfer-Encoding: chunked"))
    chunk = b"x" * 1024
    for _ in range(BODY_LIMIT // len(chunk) + 1):
        await connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    response = await connection.response()
    assert response.status == 413
    error = response.error()
    assert f"more than {BODY_LIMIT:,} bytes" in str(error["message"])
    assert await count(ChatSession) == 0 and simulator_requests(simulator) == 0


async def test_a_lying_content_length_cannot_smuggle_a_larger_body(
    limited_api: str, api_token: IssuedToken
) -> None:
    """A small declared length frames a small body: the bytes after it are the next request,
    which is itself limited, never part of this one."""
    connection = await connect(limited_api)
    body = chat_body("x" * 100)
    await connection.send(request_head(api_token, f"Content-Length: {len(body)}") + body)
    first = await connection.response()
    assert first.status == 200
    await connection.send(request_head(api_token, "Content-Length: 999999"))
    assert (await connection.response()).status == 413


async def test_bodies_within_the_limit_pass_whatever_their_framing(
    limited_api: str, api_token: IssuedToken
) -> None:
    connection = await connect(limited_api)
    body = chat_body("Name a river.")
    await connection.send(request_head(api_token, "Transfer-Encoding: chunked"))
    for start in range(0, len(body), 16):  # many small chunks, as a streaming client sends
        piece = body[start : start + 16]
        await connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    await connection.send(b"0\r\n\r\n")
    response = await connection.response()
    assert response.status == 200, response.body
    assert json.loads(response.body)["choices"][0]["message"]["content"]
    # Exactly at the limit is allowed: the JSON is wrong (400), the size is not (413).
    async with http_client(limited_api, api_token) as http:
        at_limit = await http.post(
            "/v1/chat/completions",
            content=b" " * BODY_LIMIT,
            headers={"content-type": "application/json"},
        )
    assert at_limit.status_code == 400


# --- prompts over the API ------------------------------------------------------------------


async def test_an_oversized_prompt_is_a_clear_400_through_the_openai_sdk(
    limited_api: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with openai_client(limited_api, api_token) as sdk:
        with pytest.raises(openai.BadRequestError) as chars:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a" * 1001}]
            )
        with pytest.raises(openai.BadRequestError) as messages:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}] * 4
            )
        with pytest.raises(openai.BadRequestError) as tokens:  # 700 chars, 1 token each
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "!?" * 350}]
            )
    assert chars.value.code == "prompt_too_large"
    assert isinstance(chars.value.body, dict)
    assert chars.value.body["message"] == (
        "the prompt (system, messages and tools) is 1,001 characters; the limit is 1,000 "
        "characters "
        "(raise it with KEEL_MAX_PROMPT_CHARS)"
    )
    assert "4 messages; the limit is 3 messages" in messages.value.message
    assert "KEEL_MAX_MESSAGES" in messages.value.message
    assert "(estimated) is 704 tokens; the limit is 300 tokens" in tokens.value.message
    assert "KEEL_MAX_PROMPT_TOKENS" in tokens.value.message
    # Refused before anything started: no session row, no model call.
    assert await count(ChatSession) == 0 and simulator_requests(simulator) == 0


async def test_text_keel_cannot_store_is_refused_with_its_location(
    limited_api: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with http_client(limited_api, api_token) as http:
        nul = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "a\u0000b"}]},
        )
        surrogate = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
            headers={"content-type": "application/json"},
        )
        model = await http.post(
            "/v1/chat/completions",
            json={"model": "m" * 201, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert nul.status_code == 400
    assert "messages[0].content contains a NUL character" in nul.json()["error"]["message"]
    assert surrogate.status_code == 400
    assert "unpaired surrogate (\\ud800)" in surrogate.json()["error"]["message"]
    assert model.status_code == 400 and model.json()["error"]["param"] == "model"
    assert await count(ChatSession) == 0 and simulator_requests(simulator) == 0


async def test_a_system_prompt_tools_and_tool_calls_count_toward_the_prompt_limit(
    limited_api: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """What a provider reads as the prompt is what is limited, whichever wire format carries
    it: Anthropic's ``system`` beside the messages, tool definitions and a tool call's
    arguments count as much as message text."""
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    async with anthropic.AsyncAnthropic(
        base_url=limited_api, api_key=api_token.secret, max_retries=0
    ) as claude:
        with pytest.raises(anthropic.BadRequestError) as system:
            await claude.messages.create(
                model="claude-3-5-haiku-latest",
                max_tokens=50,
                system="s" * 1000,
                messages=[{"role": "user", "content": "hi"}],
            )
        with pytest.raises(anthropic.BadRequestError) as system_blocks:
            await claude.messages.create(
                model="claude-3-5-haiku-latest",
                max_tokens=50,
                system=[{"type": "text", "text": "!?" * 200}],  # 400 tokens, 800 characters
                messages=[{"role": "user", "content": "hi"}],
            )
    async with openai_client(limited_api, api_token) as sdk:
        with pytest.raises(openai.BadRequestError) as tools:
            await sdk.chat.completions.create(
                model=MODEL,
                messages=question,
                tools=[
                    {
                        "type": "function",
                        "function": {"name": "lookup", "description": "d" * 1000},
                    }
                ],
            )
        with pytest.raises(openai.BadRequestError) as tool_call:
            await sdk.chat.completions.create(
                model=MODEL,
                messages=[
                    *question,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": "x" * 1000},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "found"},
                ],
            )
    assert system.value.status_code == 400
    assert "is 1,002 characters; the limit is 1,000" in system.value.message
    assert "KEEL_MAX_PROMPT_CHARS" in system.value.message
    assert "(estimated) is 409 tokens; the limit is 300" in system_blocks.value.message
    assert tools.value.code == "prompt_too_large" and "KEEL_MAX_PROMPT_CHARS" in tools.value.message
    assert tool_call.value.code == "prompt_too_large"
    assert "characters; the limit is 1,000" in tool_call.value.message
    # Refused before anything started: no session row, no model call.
    assert await count(ChatSession) == 0 and simulator_requests(simulator) == 0


async def test_an_oversized_job_prompt_starts_no_job(
    limited_api: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    async with http_client(limited_api, api_token) as http:
        refused = await http.post(
            "/v1/jobs", json={"kind": "ask", "input": {"prompt": "b" * 1001}, "id": "too-big"}
        )
        looked_up = await http.get("/v1/jobs/too-big")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "prompt_too_large" and error["param"] == "input.prompt"
    assert "KEEL_MAX_PROMPT_CHARS" in error["message"]
    assert looked_up.status_code == 404  # no workflow, no row
    assert await count(Job) == 0 and simulator_requests(simulator) == 0


# --- the CLI -------------------------------------------------------------------------------


async def run_keel(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        KEEL,
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.slow  # a real `keel` process
async def test_keel_ask_refuses_an_oversized_prompt_and_starts_nothing(
    client: Client, keel_settings: KeelSettings
) -> None:
    env = worker_environment(client, keel_settings, KEEL_MAX_PROMPT_CHARS="50", COLUMNS="200")
    workflow_id = f"ask-too-big-{uuid.uuid4().hex[:8]}"
    code, out = await run_keel(env, "ask", "x" * 51, "--id", workflow_id)
    assert code == 1
    assert "the prompt is 51 characters; the limit is 50 characters" in out
    assert "KEEL_MAX_PROMPT_CHARS" in out and "nothing was started" in out
    with pytest.raises(RPCError) as missing:
        await client.get_workflow_handle(workflow_id).describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND


@pytest.mark.slow  # a real `keel` process
async def test_keel_chat_refuses_an_oversized_message_and_sends_nothing(
    client: Client, keel_settings: KeelSettings, simulator: SimServer
) -> None:
    env = worker_environment(client, keel_settings, KEEL_MAX_PROMPT_CHARS="50", COLUMNS="200")
    code, out = await run_keel(env, "chat", "--message", "y" * 60)
    assert code == 1 and "the message is 60 characters; the limit is 50" in out
    assert await count(ChatSession) == 0 and simulator_requests(simulator) == 0


@pytest.mark.slow  # a real `keel` process
async def test_keel_review_refuses_an_oversized_document(
    client: Client, keel_settings: KeelSettings, tmp_path: Path
) -> None:
    document = tmp_path / "long.md"
    document.write_text("word " * 30)
    env = worker_environment(client, keel_settings, KEEL_MAX_PROMPT_CHARS="100", COLUMNS="200")
    code, out = await run_keel(env, "review", "start", str(document))
    assert code == 1 and "is 150 characters; the limit is 100 characters" in out


# --- batch files ---------------------------------------------------------------------------


def keel_line(custom_id: str, prompt: str) -> str:
    return json.dumps({"custom_id": custom_id, "prompt": prompt, "model": MODEL})


async def batch_rows(batch_id: str) -> list[BatchItem]:
    async with session_factory()() as db:
        result = await db.execute(
            select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(BatchItem.line_no)
        )
        return list(result.scalars())


@pytest.mark.slow  # a real `keel` process
async def test_a_batch_file_over_the_byte_limit_is_refused_whole(
    client: Client, keel_settings: KeelSettings, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(keel_line(f"q{n}", "Name a river.") for n in range(40)) + "\n")
    env = worker_environment(client, keel_settings, KEEL_MAX_BATCH_FILE_BYTES="1000", COLUMNS="300")
    code, out = await run_keel(env, "batch", "start", str(path), "--id", "too-big")
    size = path.stat().st_size
    assert code == 1
    assert f"the file is {size:,} bytes; the limit is 1,000 bytes" in out
    assert "KEEL_MAX_BATCH_FILE_BYTES" in out
    assert await count(Batch) == 0 and await count(BatchItem) == 0


@pytest.mark.slow  # a real `keel` process
async def test_a_batch_file_with_too_many_items_is_refused_whole(
    client: Client, keel_settings: KeelSettings, tmp_path: Path
) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(keel_line(f"q{n}", "Name a lake.") for n in range(6)) + "\n")
    env = worker_environment(client, keel_settings, KEEL_MAX_BATCH_ITEMS="5", COLUMNS="300")
    code, out = await run_keel(env, "batch", "start", str(path))
    assert code == 1 and "more than 5 items (line 6 is item 6)" in out
    assert "KEEL_MAX_BATCH_ITEMS" in out and await count(Batch) == 0


@pytest.mark.slow  # a real `keel` process
async def test_oversized_batch_lines_are_reported_by_number_and_the_rest_run(
    client: Client, keel_settings: KeelSettings, tmp_path: Path
) -> None:
    lines = [
        keel_line("ok-1", "Name a river."),
        keel_line("long-line", "z" * 600),  # over the line limit: the line is not even parsed
        keel_line("ok-2", "Name a lake."),
        keel_line("long-prompt", "w" * 250),  # fits the line, over the prompt limit
        "",
        keel_line("ok-3", "Name a sea."),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = worker_environment(
        client,
        keel_settings,
        KEEL_MAX_BATCH_LINE_BYTES="500",
        KEEL_MAX_PROMPT_CHARS="200",
        COLUMNS="300",
    )
    strict_code, strict_out = await run_keel(
        env, "batch", "start", str(path), "--strict", "--id", "strict"
    )
    assert strict_code == 1 and "2 malformed line(s) and --strict is set" in strict_out
    assert await count(Batch) == 0  # --strict: nothing written

    code, out = await run_keel(env, "batch", "start", str(path), "--id", "lenient")
    assert code == 0, out
    long_line = len(lines[1].encode())
    assert f"line 2: line is {long_line:,} bytes; the limit is 500 bytes" in out
    assert "KEEL_MAX_BATCH_LINE_BYTES" in out
    assert "line 4: the prompt is 250 characters; the limit is 200 characters" in out
    rows = await batch_rows("lenient")
    # Every non-blank line is exactly one item: 3 accepted + 2 rejected = 5 lines with content.
    assert [(r.line_no, r.status) for r in rows] == [
        (1, "pending"),
        (2, "failed"),
        (3, "pending"),
        (4, "failed"),
        (6, "pending"),
    ]
    assert {r.custom_id for r in rows if r.status == "failed"} == {"line-2", "long-prompt"}
    assert all(r.error_class == "invalid_request" for r in rows if r.status == "failed")


# --- the LLM activity: the last line of defence ----------------------------------------------


async def test_the_llm_activity_refuses_an_oversized_prompt_without_sending_or_retrying_it(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A workflow started straight on Temporal skips every door; the activity still refuses:
    one ledger row saying why, no provider request, no retry, no other model asked."""
    await keel_workers.start(reconfigure(monkeypatch, KEEL_MAX_PROMPT_TOKENS="100"))
    workflow_id = f"ask-{uuid.uuid4().hex[:10]}"
    with pytest.raises(WorkflowFailureError) as failed:
        await client.execute_workflow(
            AskWorkflow.run,
            AskInput(prompt="word " * 200, models=[MODEL, "claude-3-5-haiku-latest"]),
            id=workflow_id,
            task_queue=keel_settings.interactive_task_queue,
        )
    assert "prompt_too_large" in str(failed.value.cause)
    (row,) = await ledger_rows(workflow_id)
    assert (row.outcome, row.attempt, row.model) == ("prompt_too_large", 1, MODEL)
    assert row.error_class == "prompt_too_large" and row.cost_usd is None
    assert row.error_message is not None
    assert "is 204 tokens; the limit is 100 tokens" in row.error_message
    assert "KEEL_MAX_PROMPT_TOKENS" in row.error_message
    assert simulator_requests(simulator) == 0


async def test_a_chat_session_folds_its_history_to_stay_under_the_prompt_limit(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The activity's limit binds keel's own prompts too: a long conversation is folded into a
    summary before its context reaches KEEL_MAX_PROMPT_TOKENS, so no turn is ever refused."""
    limit = 400
    settings = reconfigure(
        monkeypatch,
        KEEL_MAX_PROMPT_TOKENS=str(limit),
        KEEL_SESSION_ANSWER_TOKENS="60",
        KEEL_ROUTES=f'{{"cheap": ["{MODEL}"], "balanced": ["{MODEL}"]}}',
    )
    await keel_workers.start(settings)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    outputs = [
        await run_turn(
            client,
            settings,
            TurnRequest(
                session_id=session_id,
                content=f"Question {n}: tell me about river number {n}, its delta and its towns.",
                models=[MODEL],
                stream=False,
            ),
        )
        for n in range(1, 13)
    ]
    rows = await ledger_rows(session_workflow_id(session_id))
    assert {row.outcome for row in rows} == {"ok"}  # nothing refused, nothing failed
    assert max(row.input_tokens for row in rows) <= limit  # the simulator's own count
    assert sum(o.summarized for o in outputs) >= 1  # the history was folded to fit


def test_the_fold_reserve_covers_what_a_summarization_prompt_adds() -> None:
    plan = FoldPlan(
        previous_summary="S",
        messages=[ChatMessage(role="user", content="")],
        through_seq=1,
        summary_route="cheap",
        summary_max_tokens=32,
    )
    added = count_message_tokens([m.content for m in summarization_prompt(plan)])
    assert added <= FOLD_INSTRUCTION_TOKENS


async def test_a_scheduled_batch_over_a_limit_is_recorded_as_refused_with_the_reason(
    keel_settings: KeelSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schedule reads its file on the worker, at run time: the refusal is the batch's
    status, and the load fails for good (re-reading cannot shrink the file)."""
    settings = reconfigure(monkeypatch, KEEL_MAX_BATCH_ITEMS="2")
    batch_items = BatchItemActivities(
        sessions_for(settings), BatchFileLimits.from_settings(settings)
    )
    path = tmp_path / "nightly.jsonl"
    path.write_text("\n".join(keel_line(f"q{n}", "Name a lake.") for n in range(3)) + "\n")
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            batch_items.load_batch_file,
            LoadFileInput(batch_id="nightly-1", path=str(path), options=BatchOptions()),
        )
    assert refused.value.type == "BatchFileRefused" and refused.value.non_retryable
    async with session_factory()() as db:
        batch = await db.get(Batch, "nightly-1")
    assert batch is not None and batch.status == "refused"
    assert "more than 2 items" in (batch.status_reason or "")
    assert "KEEL_MAX_BATCH_ITEMS" in (batch.status_reason or "")
    assert await count(BatchItem) == 0
