"""`keel chat` streams a turn in the terminal and `keel session show` reports it: the real CLI,
as a subprocess, against the test's Temporal, Postgres and worker."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.sessions.conftest import stored_messages
from tests.worker_processes import REPO_ROOT, worker_environment

KEEL = str(Path(sys.executable).with_name("keel"))


async def keel(client: Client, settings: KeelSettings, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        KEEL,
        *args,
        cwd=REPO_ROOT,
        env={**worker_environment(client, settings), "COLUMNS": "200", "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.slow  # real `keel` processes
async def test_keel_chat_streams_a_turn_and_session_show_reports_it(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    code, out, err = await keel(
        client, keel_settings, "chat", "--session", session_id, "-m", "gpt-4o-mini",
        "--message", "Name two oceans.",
    )  # fmt: skip
    assert code == 0, err
    (answer,) = [m for m in await stored_messages(session_id) if m.role == "assistant"]
    assert answer.content and answer.content in out.replace("\n", "")
    assert f"keel session show {session_id}" in out and "gpt-4o-mini" in out

    code, out, err = await keel(client, keel_settings, "session", "show", session_id)
    assert code == 0, err
    assert "Name two oceans." in out and "1 LLM calls" in out and "cost $" in out

    code, _, err = await keel(client, keel_settings, "session", "show", "s-no-such-session")
    assert code != 0 and "no session" in err
