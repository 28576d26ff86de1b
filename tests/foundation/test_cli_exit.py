"""Every ``keel`` command leaves with its documented exit code and a message: never a traceback,
never an abort on the way out. The real CLI, as subprocesses, against the suite's Temporal,
Postgres, simulator and an in-process worker.

The abort this guards against (infra/process_exit.py): a Temporal core thread still handing an
RPC result to asyncio when the interpreter finalizes. It is a race, lost by about one command in
six; every command here runs with that race's window widened (``WIDEN_THE_EXIT_RACE``), so a
command that still finalizes aborts on every run instead of now and then.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.worker_processes import REPO_ROOT, worker_environment

KEEL = str(Path(sys.executable).with_name("keel"))

# sitecustomize for the CLI's processes. After a Temporal core (tokio) thread has woken the event
# loop with a result it needs the GIL once more; here it asks for it every 5 ms for a second (as
# a thread starved of the GIL under load would) instead of once. A process that finalizes in that
# second aborts ("Fatal Python error: PyGILState_Release ... finalizing", SIGABRT), whatever the
# load; one that leaves through os._exit ends first.
WIDEN_THE_EXIT_RACE = """
import asyncio.selector_events
import threading
import time

_write_to_self = asyncio.selector_events.BaseSelectorEventLoop._write_to_self


def _write_to_self_then_linger(loop):
    _write_to_self(loop)
    # Threads Python did not start (tokio's) show up as dummy threads.
    if isinstance(threading.current_thread(), threading._DummyThread):
        for _ in range(200):
            time.sleep(0.005)  # lets the GIL go, then takes it back


asyncio.selector_events.BaseSelectorEventLoop._write_to_self = _write_to_self_then_linger
"""


@dataclass
class Run:
    code: int
    out: str
    err: str


def assert_clean(run: Run, code: int) -> None:
    assert run.code == code, (
        f"exit {run.code}, expected {code}\nstdout:\n{run.out}\nstderr:\n{run.err}"
    )
    assert "Fatal Python error" not in run.err, run.err
    assert "Traceback" not in run.err and "Traceback" not in run.out, run.err


@pytest.fixture
def widened_race(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WIDEN_THE_EXIT_RACE)
    return site


@pytest.fixture
def keel_env(client: Client, keel_settings: KeelSettings, widened_race: Path) -> dict[str, str]:
    return worker_environment(
        client, keel_settings, COLUMNS="250", NO_COLOR="1", PYTHONPATH=str(widened_race)
    )


async def keel(env: dict[str, str], *args: str, cwd: Path = REPO_ROOT) -> Run:
    process = await asyncio.create_subprocess_exec(
        KEEL,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port nobody listens on: bound (so no one else takes it) but never listening."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield reserved.getsockname()[1]


# --- Temporal's answers, good and bad ---------------------------------------------------------


async def test_ask_answered_and_ask_with_every_model_failing_exit_cleanly(
    keel_env: dict[str, str], interactive_worker: Worker, simulator: SimServer
) -> None:
    answered = await keel(keel_env, "ask", "Name a colour.", "-m", "gpt-4o-mini")
    assert_clean(answered, 0)
    assert "model gpt-4o-mini" in answered.out

    failed = await keel(keel_env, "ask", "Name a colour.", "-m", "no-such-model")
    assert_clean(failed, 1)
    assert "every model in route explicit failed" in failed.err
    assert "keel audit ask-" in failed.err


async def test_decisions_show_and_audit_of_an_unknown_workflow_exit_cleanly(
    keel_env: dict[str, str],
) -> None:
    unknown = f"no-such-{uuid.uuid4().hex[:8]}"
    for args in (
        ("approve", unknown, "--reviewer", "alice"),
        ("reject", unknown, "--reviewer", "alice", "--reason", "no"),
        ("show", unknown),
    ):
        run = await keel(keel_env, *args)
        assert_clean(run, 3)  # starters/approvals.py: 3 no such workflow
        assert f"no such workflow: '{unknown}'" in run.err

    audit = await keel(keel_env, "audit", unknown)
    assert_clean(audit, 1)
    assert f"no audit trail for workflow '{unknown}'" in audit.err


# --- Files that cannot run ----------------------------------------------------------------------


async def test_batch_start_of_a_missing_empty_or_all_malformed_file_starts_nothing(
    keel_env: dict[str, str], tmp_path: Path
) -> None:
    missing = await keel(keel_env, "batch", "start", str(tmp_path / "missing.jsonl"))
    assert_clean(missing, 1)
    assert "no such file:" in missing.err and "missing.jsonl" in missing.err

    empty, garbage = tmp_path / "empty.jsonl", tmp_path / "garbage.jsonl"
    empty.write_text("\n \n")
    garbage.write_bytes(b"\x9e\xff not json\n[1, 2]\n{}\n\xf0\x28\x8c\x28\n")
    refused_empty = await keel(keel_env, "batch", "start", str(empty), "--id", "b-empty")
    refused_garbage = await keel(keel_env, "batch", "start", str(garbage), "--id", "b-garbage")
    assert_clean(refused_empty, 1)
    assert_clean(refused_garbage, 1)
    # The same refusal, naming the file; the malformed one counts and quotes its problems.
    assert f"error: refused {empty}: the file has no valid items: 0 line(s)" in refused_empty.err
    assert (
        f"error: refused {garbage}: the file has no valid items: 4 line(s), 4 malformed "
        "(line 1: not UTF-8" in refused_garbage.err
    )
    assert "; line 2: " in refused_garbage.err and "; and 1 more)" in refused_garbage.err
    for batch_id in ("b-empty", "b-garbage"):
        status = await keel(keel_env, "batch", "status", batch_id)
        assert_clean(status, 1)
        assert f"no batch '{batch_id}'" in status.err


async def test_batch_schedule_of_a_taken_id_names_it_and_the_way_out(
    keel_env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    schedule_id = f"nightly-{uuid.uuid4().hex[:8]}"
    file = tmp_path / "nightly.jsonl"
    file.write_text('{"custom_id": "a", "prompt": "hi"}\n')
    args = ("batch", "schedule", str(file), "--cron", "0 3 1 1 *", "--id", schedule_id)
    try:
        assert_clean(await keel(keel_env, *args), 0)
        again = await keel(keel_env, *args)
    finally:
        await client.get_schedule_handle(schedule_id).delete()
    assert_clean(again, 1)
    assert f"schedule {schedule_id} already exists; nothing was changed" in again.err
    assert f"keel batch schedule-delete {schedule_id}" in again.err
    assert "keel batch schedule-list" in again.err and "--id" in again.err


# --- Nothing there to talk to -------------------------------------------------------------------


async def test_chat_and_ask_with_the_stack_stopped_say_where_they_looked(
    keel_env: dict[str, str], free_port: int
) -> None:
    stopped = {**keel_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port}"}
    for args in (("chat", "--message", "hello"), ("ask", "hello")):
        run = await keel(stopped, *args)
        assert_clean(run, 1)
        assert f"cannot reach Temporal at 127.0.0.1:{free_port}" in run.err
        assert "TEMPORAL_ADDRESS" in run.err


async def test_commands_reading_postgres_with_it_stopped_say_where_they_looked(
    keel_env: dict[str, str], free_port: int
) -> None:
    stopped = {**keel_env, "DATABASE_URL": f"postgresql://keel@127.0.0.1:{free_port}/keel"}
    for args in (("token", "list"), ("batch", "list"), ("audit", "verify", "--all")):
        run = await keel(stopped, *args)
        assert_clean(run, 1)
        assert f"cannot reach Postgres at 127.0.0.1:{free_port}/keel" in run.err
        assert "DATABASE_URL" in run.err


async def test_sim_on_a_taken_port_names_it_and_port(keel_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await keel(keel_env, "sim", "--port", str(port))
    assert_clean(run, 1)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in run.err
    assert "--port" in run.err


# --- What the sweep of every command found ------------------------------------------------------


async def test_an_invalid_setting_names_its_variable_and_never_echoes_the_value(
    keel_env: dict[str, str],
) -> None:
    env = {**keel_env, "KEEL_SIMULATOR_PORT": "not-a-port-s3cret"}
    for args in (("config", "show"), ("ask", "hello")):
        run = await keel(env, *args)
        assert_clean(run, 1)
        assert "error: invalid setting: KEEL_SIMULATOR_PORT: Input should be a valid" in run.err
        assert "s3cret" not in run.err + run.out


async def test_a_workflow_id_in_use_and_an_unwritable_output_are_messages(
    keel_env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    # No worker polls this test's queue: the first ask stays running, the second finds it.
    workflow_id = f"ask-taken-{uuid.uuid4().hex[:8]}"
    try:
        assert_clean(await keel(keel_env, "ask", "hello", "--id", workflow_id, "--no-wait"), 0)
        taken = await keel(keel_env, "ask", "hello", "--id", workflow_id)
    finally:
        await client.get_workflow_handle(workflow_id).terminate("test over")
    assert_clean(taken, 1)
    assert f"a workflow with id '{workflow_id}' already exists" in taken.err
    assert f"keel show {workflow_id}" in taken.err

    nowhere = tmp_path / "no-such-dir" / "pairs.jsonl"
    export = await keel(keel_env, "approvals", "export", "-o", str(nowhere))
    assert_clean(export, 1)
    assert f"error: {nowhere}: No such file or directory" in export.err


async def test_audit_verify_of_an_empty_tenant_and_edit_with_a_binary_file_are_messages(
    keel_env: dict[str, str], tmp_path: Path
) -> None:
    tenant = f"nobody-{uuid.uuid4().hex[:6]}"
    verify = await keel(keel_env, "audit", "verify", "--tenant", tenant)
    assert_clean(verify, 1)
    assert f"no audit trail for tenant '{tenant}'" in verify.err

    binary = tmp_path / "draft.bin"
    binary.write_bytes(b"\x9e\xff\x00draft")
    edit = await keel(keel_env, "edit", "any-id", "--reviewer", "alice", "--file", str(binary))
    assert_clean(edit, 1)
    assert f"{binary} is not UTF-8 text" in edit.err and "nothing was sent" in edit.err


async def test_sim_with_a_broken_profile_file_says_what_is_wrong(
    keel_env: dict[str, str], tmp_path: Path
) -> None:
    wrong_shape, not_text = tmp_path / "faults.json", tmp_path / "faults.bin"
    wrong_shape.write_text('{"scripted": 5}')
    not_text.write_bytes(b"\x9e\xff")
    shape = await keel(keel_env, "sim", "--port", "0", "--profile-file", str(wrong_shape))
    assert_clean(shape, 1)
    assert f"--profile-file {wrong_shape}: scripted: Input should be a valid list" in shape.err
    binary = await keel(keel_env, "sim", "--port", "0", "--profile-file", str(not_text))
    assert_clean(binary, 1)
    assert f"--profile-file {not_text} is not a fault profile" in binary.err


# --- The exit path itself -----------------------------------------------------------------------

SKIPPING_FINALIZATION = """
import atexit, sys, threading, time
from infra.process_exit import exit_process

atexit.register(lambda: print("atexit ran", flush=False))
results = []
worker = threading.Thread(target=lambda: (time.sleep(0.3), results.append("thread done")))
worker.start()
atexit.register(lambda: print(*results))
print("buffered, never flushed by hand", end=" ")
sys.stderr.write("to stderr ")
exit_process(7)
print("not reached")
"""


def test_exit_process_does_what_finalization_would_then_exits_with_the_code() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SKIPPING_FINALIZATION],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 7
    # Non-daemon threads joined first, then atexit handlers (last registered first), then stdio
    # flushed: nothing a normal exit would have written is lost.
    assert done.stdout == "buffered, never flushed by hand thread done\natexit ran\n"
    assert done.stderr == "to stderr "
