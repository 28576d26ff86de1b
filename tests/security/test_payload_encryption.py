"""Prompts and answers are ciphertext in Temporal's history; only key holders (keel) read them.

Real parts throughout: the dev server, a real worker process for the end-to-end check, the codec
server over HTTP and the `temporal` CLI. "Raw" means what the server hands any client without
keel's key: the history fetched by a client with no codec.
"""

from __future__ import annotations

import asyncio
import base64
import stat
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Replayer, Worker
from typer.testing import CliRunner

from api.server import serving
from infra.codec_server import create_codec_app, uvicorn_config
from infra.payload_codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    EncryptionKey,
    EncryptionKeysError,
    PayloadDecryptionError,
    codec_from_settings,
    configured_keys,
    new_key,
    parse_keys,
)
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import KeelPlugin, connect, keel_data_converter
from llmsim import SimServer
from starters.encryption_keys import encryption_keys_app
from tests.conftest import TEMPORAL_CLI, reconfigure
from tests.helpers import KeelCli, codec_server_process
from tests.security.codec_workflows import RefusingWorkflow, RelayWorkflow, refuse, shout
from tests.security.history_payloads import history_payloads, payloads_in, raw_bytes
from tests.worker_processes import WorkerProcess, worker_environment, worker_processes
from workflows.ask import AskInput, AskWorkflow

SUITE_KEY_ID = b"keel-test-suite"  # tests/conftest.py sets this key for the whole suite


async def raw_client(client: Client) -> Client:
    """A client of the same server with Temporal's default converter: no key, no codec."""
    return await Client.connect(
        client.service_client.config.target_host, namespace=client.namespace
    )


async def keel_client(client: Client, settings: KeelSettings) -> Client:
    """A client of the same server encoding as a keel process with ``settings`` does."""
    return await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        plugins=[KeelPlugin(settings)],
    )


@asynccontextmanager
async def relay_worker(client: Client, queue: str) -> AsyncIterator[Worker]:
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[RelayWorkflow, RefusingWorkflow],
        activities=[shout, refuse],
    )
    async with worker:
        yield worker


def relay_run(kind: str) -> tuple[str, str, str]:
    """A secret text, and a workflow id and task queue that do not contain it (ids are never
    encrypted)."""
    run = uuid.uuid4().hex[:12]
    return f"Confidential-{uuid.uuid4().hex}", f"{kind}-{run}", f"relay-{run}"


def key_ids(payloads: Sequence[Payload]) -> set[bytes]:
    return {payload.metadata[KEY_ID_METADATA] for payload in payloads}


def event_payloads(events: Sequence[HistoryEvent], attribute: str) -> list[Payload]:
    """The payloads of the events that have ``attribute`` (e.g. the signaled events')."""
    return [
        payload
        for event in events
        if event.WhichOneof("attributes") == attribute
        for payload in payloads_in(getattr(event, attribute))
    ]


# --- End to end: a real worker process, the raw history, the codec server, the CLI ------------


@pytest.mark.slow  # a real worker process
async def test_prompt_and_answer_are_ciphertext_in_history_and_keel_reads_them(
    client: Client, keel_settings: KeelSettings, simulator: SimServer, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex[:12]
    prompt = f"Summarise memo {marker}-PROMPT about Project Nightjar's launch date."
    answer = f"Memo {marker}-ANSWER: Nightjar launches in May."
    simulator.add_canned_response(f"{marker}-PROMPT", answer)
    queue = keel_settings.interactive_task_queue
    workflow_id = f"encrypted-ask-{uuid.uuid4().hex[:12]}"
    worker = WorkerProcess(queue, worker_environment(client, keel_settings), tmp_path / "w.log")
    with worker_processes(worker.start()):
        await worker.wait_until_polling()
        result = await client.execute_workflow(
            AskWorkflow.run,
            AskInput(prompt=prompt, models=["gpt-4o-mini"]),
            id=workflow_id,
            task_queue=queue,
        )
    assert result.answer.text == answer  # keel's client decrypts

    raw = await raw_client(client)
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    stored = raw_bytes(history)
    for secret in (f"{marker}-PROMPT", f"{marker}-ANSWER", "Nightjar"):
        assert secret.encode() not in stored, f"{secret!r} is readable in the raw history"
    payloads = history_payloads(history)
    assert len(payloads) >= 4  # input, activity inputs and results, the result
    assert {p.metadata["encoding"] for p in payloads} == {ENCRYPTED_ENCODING}
    assert key_ids(payloads) == {SUITE_KEY_ID}
    with pytest.raises(Exception, match="binary/encrypted"):
        await raw.get_workflow_handle(workflow_id).result()  # no key, no answer

    # Whoever holds the key reads it back through `keel codec-server`, over HTTP.
    codec = codec_from_settings(keel_settings)
    app = create_codec_app(codec, allowed_origins=[])
    body = json_format.MessageToJson(Payloads(payloads=payloads))
    async with serving(uvicorn_config(app)) as url, httpx2.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/default/decode", content=body, headers={"X-Namespace": "default"}
        )
    assert response.status_code == 200, response.text
    decoded = json_format.Parse(response.text, Payloads()).payloads
    assert len(decoded) == len(payloads)
    assert ENCRYPTED_ENCODING not in {p.metadata["encoding"] for p in decoded}
    plain = b"".join(p.data for p in decoded)
    assert f"{marker}-PROMPT".encode() in plain and f"{marker}-ANSWER".encode() in plain


async def test_the_same_check_sees_the_prompt_when_encryption_is_off(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detector above can fail: with KEEL_ENCRYPTION=off the text is right there. Such a
    plaintext history still reads with the (encrypting) keel client."""
    secret, workflow_id, queue = relay_run("plain")
    plain_client = await keel_client(client, reconfigure(monkeypatch, KEEL_ENCRYPTION="off"))
    async with relay_worker(plain_client, queue):
        handle = await plain_client.start_workflow(
            RelayWorkflow.run, secret, id=workflow_id, task_queue=queue
        )
        await handle.signal(RelayWorkflow.send_reply, "ok")
        await handle.result()
    history = await (await raw_client(client)).get_workflow_handle(workflow_id).fetch_history()
    assert secret.encode() in raw_bytes(history)
    assert ENCRYPTED_ENCODING not in {p.metadata["encoding"] for p in history_payloads(history)}
    assert await client.get_workflow_handle(workflow_id).result() == f"{secret.upper()} / ok"


async def test_failure_messages_are_encrypted_too(client: Client) -> None:
    secret, workflow_id, queue = relay_run("refused")
    async with relay_worker(client, queue):
        with pytest.raises(WorkflowFailureError) as failed:
            await client.execute_workflow(
                RefusingWorkflow.run, secret, id=workflow_id, task_queue=queue
            )
    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    assert isinstance(activity_error.cause, ApplicationError)
    assert secret in activity_error.cause.message  # keel reads the real message

    history = await (await raw_client(client)).get_workflow_handle(workflow_id).fetch_history()
    assert secret.encode() not in raw_bytes(history)
    failures = [
        event.activity_task_failed_event_attributes.failure
        for event in history.events
        if event.HasField("activity_task_failed_event_attributes")
    ]
    assert [failure.message for failure in failures] == ["Encoded failure"]
    assert failures[0].encoded_attributes.metadata["encoding"] == ENCRYPTED_ENCODING


async def test_an_encrypted_history_replays_with_keels_converter(client: Client) -> None:
    secret, workflow_id, queue = relay_run("replay")
    async with relay_worker(client, queue):
        handle = await client.start_workflow(
            RelayWorkflow.run, secret, id=workflow_id, task_queue=queue
        )
        await handle.signal(RelayWorkflow.send_reply, "done")
        await handle.result()
    history = await handle.fetch_history()

    await Replayer(workflows=[RelayWorkflow], plugins=[KeelPlugin(get_settings())]).replay_workflow(
        history
    )
    # Without the codec the replayer cannot even read the input.
    with pytest.raises(RuntimeError, match="Failed decoding arguments"):
        await Replayer(
            workflows=[RelayWorkflow], data_converter=pydantic_data_converter
        ).replay_workflow(history)


# --- Rotation ---------------------------------------------------------------------------------


async def test_rotation_new_key_encrypts_old_key_still_decrypts(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_a, key_b = new_key("key-a"), new_key("key-b")
    secret, workflow_id, queue = relay_run("rotate")

    client_a = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=key_a.entry())
    )
    async with relay_worker(client_a, queue):
        await client_a.start_workflow(RelayWorkflow.run, secret, id=workflow_id, task_queue=queue)

    # Rotated: B first (encrypts), A after it (still decrypts). A new worker picks up the
    # running workflow, replays its A-encrypted start and finishes it under B.
    rotated = reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=f"{key_b.entry()},{key_a.entry()}")
    client_ba = await keel_client(client, rotated)
    handle = client_ba.get_workflow_handle(workflow_id)
    async with relay_worker(client_ba, queue):
        await handle.signal(RelayWorkflow.send_reply, "after rotation")
        assert await handle.result() == f"{secret.upper()} / after rotation"

    events = (await handle.fetch_history()).events
    assert key_ids(event_payloads(events, "workflow_execution_started_event_attributes")) == {
        b"key-a"
    }
    for attribute in (
        "workflow_execution_signaled_event_attributes",
        "workflow_execution_completed_event_attributes",
    ):
        assert key_ids(event_payloads(events, attribute)) == {b"key-b"}, attribute

    # A process that was not given B cannot read what B encrypted, and says which key it needs.
    with pytest.raises(PayloadDecryptionError) as refused:
        await client_a.get_workflow_handle(workflow_id).result()
    message = str(refused.value)
    assert "'key-b'" in message and "KEEL_ENCRYPTION_KEYS" in message and "'key-a'" in message
    for key in (key_a, key_b):
        assert base64.b64encode(key.secret).decode() not in message


# --- A process without the key: the workflow fails, naming the key, instead of hanging ---------

# Generous for a loaded machine; a workflow that hangs never ends, so any bound tells them apart.
UNDECODABLE_FAILS_WITHIN_S = 30


async def test_a_worker_without_the_clients_key_fails_the_workflow_naming_that_key(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_a, key_b = new_key("key-a"), new_key("key-b")
    secret, workflow_id, queue = relay_run("wrong-key")
    client_a = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=key_a.entry())
    )
    client_b = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=key_b.entry())
    )
    async with relay_worker(client_b, queue):  # holds only key B
        handle = await client_a.start_workflow(
            RelayWorkflow.run, secret, id=workflow_id, task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(handle.result(), UNDECODABLE_FAILS_WITHIN_S)

    # The client with key A reads why: the message is not encrypted with the worker's key B.
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "PayloadDecryptionError"
    assert "key id 'key-a'" in cause.message and "its keys: 'key-b'" in cause.message
    assert secret not in cause.message
    for key in (key_a, key_b):
        assert base64.b64encode(key.secret).decode() not in cause.message
    raw_history = await (await raw_client(client)).get_workflow_handle(workflow_id).fetch_history()
    assert secret.encode() not in raw_bytes(raw_history)


@pytest.mark.slow  # a real worker process and real `keel` processes
async def test_keel_ask_against_a_worker_with_another_key_fails_fast_and_keel_show_says_why(
    client: Client, keel_settings: KeelSettings, simulator: SimServer, tmp_path: Path
) -> None:
    """The story of a second key: the stack's worker holds key B, `keel ask` encrypts with A."""
    key_a, key_b = new_key("key-a"), new_key("key-b")
    queue = keel_settings.interactive_task_queue
    worker = WorkerProcess(
        queue,
        worker_environment(client, keel_settings, KEEL_ENCRYPTION_KEYS=key_b.entry()),
        tmp_path / "worker.log",
    )
    keel = KeelCli(client, keel_settings, KEEL_ENCRYPTION_KEYS=key_a.entry())
    workflow_id = f"wrong-key-ask-{uuid.uuid4().hex[:12]}"
    with worker_processes(worker.start()):
        await worker.wait_until_polling()
        asked = await keel(
            "ask", "What is on the menu?", "--id", workflow_id, timeout=UNDECODABLE_FAILS_WITHIN_S
        )
    assert asked.code == 1, asked.text
    assert "Traceback" not in asked.text
    assert "key id 'key-a'" in asked.err and "KEEL_HOME" in asked.err

    shown = await keel("show", workflow_id)
    assert shown.code == 0, shown.text
    assert "FAILED" in shown.out
    assert "failed:" in shown.out and "key id 'key-a'" in shown.out
    assert "the workflow is working" not in shown.out


async def test_an_update_the_worker_cannot_read_is_rejected_and_the_workflow_goes_on(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misconfigured client (another key) must neither wedge nor fail a running workflow."""
    key_a, key_b = new_key("key-a"), new_key("key-b")
    secret, workflow_id, queue = relay_run("wrong-key-update")
    client_a = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=key_a.entry())
    )
    client_b = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=key_b.entry())
    )
    async with relay_worker(client_a, queue):
        handle = await client_a.start_workflow(
            RelayWorkflow.run, secret, id=workflow_id, task_queue=queue
        )
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await asyncio.wait_for(
                client_b.get_workflow_handle(workflow_id).execute_update(
                    RelayWorkflow.echo, "from the wrong key"
                ),
                UNDECODABLE_FAILS_WITHIN_S,
            )
        cause = rejected.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "PayloadDecryptionError"
        assert "key id 'key-b'" in cause.message

        echoed = await asyncio.wait_for(
            handle.execute_update(RelayWorkflow.echo, "still here"), UNDECODABLE_FAILS_WITHIN_S
        )
        assert echoed == "STILL HERE"
        await handle.signal(RelayWorkflow.send_reply, "done")
        assert await handle.result() == f"{secret.upper()} / done"


async def test_an_activity_without_the_workflows_key_fails_for_good_naming_that_key(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RelayWorkflow's activity retries without limit: only a non-retryable failure ends it."""
    key_a, key_b = new_key("key-a"), new_key("key-b")
    secret, workflow_id, queue = relay_run("wrong-key-activity")
    client_a = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=key_a.entry())
    )
    client_ba = await keel_client(
        client, reconfigure(monkeypatch, KEEL_ENCRYPTION_KEYS=f"{key_b.entry()},{key_a.entry()}")
    )
    workflows = Worker(client_ba, task_queue=queue, workflows=[RelayWorkflow])
    activities = Worker(client_a, task_queue=queue, activities=[shout])  # lacks key B
    async with workflows, activities:
        handle = await client_ba.start_workflow(
            RelayWorkflow.run, secret, id=workflow_id, task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(handle.result(), UNDECODABLE_FAILS_WITHIN_S)

    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    decoding = activity_error.cause
    assert isinstance(decoding, ApplicationError) and decoding.non_retryable
    assert isinstance(decoding.cause, ApplicationError)
    assert "key id 'key-b'" in decoding.cause.message
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in (await handle.fetch_history()).events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert attempts == [1]


# --- The codec ----------------------------------------------------------------------------------


def codec_of(*keys: EncryptionKey, encrypt: bool = True) -> EncryptionCodec:
    return EncryptionCodec(keys, source="KEEL_ENCRYPTION_KEYS", encrypt=encrypt)


def plain_payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


async def test_each_payload_gets_its_own_nonce_and_decrypts_to_the_original() -> None:
    codec = codec_of(new_key("k1"))
    original = plain_payload("same text")
    first, second = await codec.encode([original, original])
    assert first.data != second.data  # a fresh 96-bit nonce per payload
    assert first.data[:12] != second.data[:12]
    assert await codec.decode([first, second]) == [original, original]


async def test_unencrypted_payloads_pass_through_decode_unchanged() -> None:
    original = plain_payload("from before encryption was turned on")
    assert await codec_of(new_key("k1")).decode([original]) == [original]


async def test_altered_ciphertext_or_a_relabelled_key_id_fails_authentication() -> None:
    key_1, key_2 = new_key("k1"), new_key("k2")
    (sealed,) = await codec_of(key_1).encode([plain_payload("do not touch")])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec_of(key_1).decode([tampered])
    # The key id is bound into the associated data: the payload cannot be passed off as
    # another key's, even to a codec holding that other key under the first one's id.
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_METADATA] = b"k2"
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec_of(EncryptionKey("k2", key_1.secret)).decode([relabelled])
    with pytest.raises(PayloadDecryptionError, match="'k1'"):
        await codec_of(key_2).decode([sealed])


async def test_encryption_off_stores_plaintext_but_still_decrypts_old_payloads() -> None:
    key = new_key("k1")
    (sealed,) = await codec_of(key).encode([plain_payload("older")])
    off = codec_of(key, encrypt=False)
    assert await off.encode([plain_payload("newer")]) == [plain_payload("newer")]
    assert await off.decode([sealed]) == [plain_payload("older")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no-separator", "entry 1 in KEEL_ENCRYPTION_KEYS is not `id:base64key`"),
        ("ok:" + base64.b64encode(b"x" * 32).decode() + ",bad id:AAAA", "entry 2"),
        (
            "short:" + base64.b64encode(b"x" * 16).decode(),
            "'short' (entry 1) in KEEL_ENCRYPTION_KEYS is 16 bytes; AES-256 needs exactly 32",
        ),
        ("nob64:not*base64!", "'nob64' (entry 1) in KEEL_ENCRYPTION_KEYS is not valid base64"),
        (
            "twice:"
            + base64.b64encode(b"x" * 32).decode()
            + ",twice:"
            + base64.b64encode(b"y" * 32).decode(),
            "key id 'twice' appears twice",
        ),
    ],
    ids=["no-separator", "bad-id", "short", "not-base64", "duplicate"],
)
def test_bad_keys_are_refused_with_what_is_wrong_and_no_key_material(
    text: str, expected: str
) -> None:
    with pytest.raises(EncryptionKeysError) as refused:
        parse_keys(text, "KEEL_ENCRYPTION_KEYS")
    assert expected in str(refused.value)
    secret_parts = [entry.partition(":")[2] for entry in text.split(",")]
    for secret in filter(None, secret_parts):
        assert secret not in str(refused.value)


def test_keys_parse_newest_first_from_commas_or_lines_with_comments() -> None:
    a, b = new_key("a"), new_key("b")
    urlsafe_b = "b:" + base64.urlsafe_b64encode(b.secret).decode().rstrip("=")
    assert parse_keys(f"{a.entry()}, {urlsafe_b}", "x") == (a, b)
    assert parse_keys(f"# newest first\n{a.entry()}\n\n{b.entry()}\n", "x") == (a, b)


async def test_no_key_means_no_client_until_one_is_set_or_encryption_is_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KEEL_ENCRYPTION_KEYS")
    settings = reconfigure(monkeypatch, KEEL_HOME=str(tmp_path))
    with pytest.raises(ConnectionError) as refused:
        await connect(settings)
    message = str(refused.value)
    assert "payload encryption is on but no key is configured" in message
    assert "KEEL_ENCRYPTION_KEYS" in message and str(tmp_path / "encryption-keys") in message
    assert "KEEL_ENCRYPTION=off" in message
    assert keel_data_converter(reconfigure(monkeypatch, KEEL_ENCRYPTION="off")).payload_codec


# --- `keel encryption-keys` -------------------------------------------------------------------


def run_keys_command(*args: str) -> tuple[int, str]:
    get_settings.cache_clear()
    result = CliRunner().invoke(encryption_keys_app, list(args))
    get_settings.cache_clear()
    return result.exit_code, result.output


def test_rotate_creates_then_prepends_and_retire_removes_an_old_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KEEL_ENCRYPTION_KEYS")
    monkeypatch.setenv("KEEL_HOME", str(tmp_path))
    key_file = tmp_path / "encryption-keys"

    assert run_keys_command("rotate", "--id", "first")[0] == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    code, output = run_keys_command("rotate", "--id", "second")
    assert code == 0 and "older keys still decrypt: first" in output
    ring = configured_keys(get_settings())
    assert ring.key_ids == ["second", "first"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    code, output = run_keys_command("list")
    assert code == 0 and "second  encrypts and decrypts" in output and "first  decrypts" in output
    for key in ring.keys:
        assert base64.b64encode(key.secret).decode() not in output

    code, output = run_keys_command("retire", "second", "--yes")
    assert code == 1 and "is the key that encrypts new payloads" in output
    code, output = run_keys_command("retire", "first", "--yes")
    assert code == 0 and "remaining keys: second" in output
    assert configured_keys(get_settings()).keys == ring.keys[:1]


def test_rotate_refuses_to_edit_keys_that_live_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEEL_HOME", str(tmp_path))
    code, output = run_keys_command("rotate")
    assert code == 1 and "the keys come from KEEL_ENCRYPTION_KEYS" in output
    assert not (tmp_path / "encryption-keys").exists()
    code, output = run_keys_command("generate", "--id", "fresh")
    (fresh,) = parse_keys(output.splitlines()[0], "output")
    assert code == 0 and fresh.key_id == "fresh" and len(fresh.secret) == 32


@pytest.mark.slow  # the temporal CLI and a codec server process
async def test_temporal_cli_shows_plaintext_only_through_the_codec_server(
    client: Client, tmp_path: Path
) -> None:
    """`temporal workflow show --codec-endpoint` against the real `keel codec-server` process."""
    secret, workflow_id, queue = relay_run("cli")
    async with relay_worker(client, queue):
        handle = await client.start_workflow(
            RelayWorkflow.run, secret, id=workflow_id, task_queue=queue
        )
        await handle.signal(RelayWorkflow.send_reply, "shown")
        await handle.result()

    async with codec_server_process() as url:

        async def show(*extra: str) -> str:
            cli = await asyncio.create_subprocess_exec(
                str(TEMPORAL_CLI), "workflow", "show", "-w", workflow_id,
                "--address", client.service_client.config.target_host,
                "--namespace", client.namespace, "--disable-config-file", "--disable-config-env",
                *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(cli.communicate(), 60)
            assert cli.returncode == 0, out.decode()
            return out.decode()

        without_codec = await show()
        assert secret.upper() not in without_codec and "binary/encrypted" in without_codec
        decoded = await show("--codec-endpoint", url)
        assert f'"{secret.upper()} / shown"' in decoded and "json/plain" in decoded
