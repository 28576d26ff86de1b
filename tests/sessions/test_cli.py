"""`keel chat` streams a turn in the terminal and `keel session show` reports it: the real CLI,
as a subprocess, against the test's Temporal, Postgres and worker."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.helpers import KeelCli
from tests.sessions.conftest import stored_messages


async def keel(client: Client, settings: KeelSettings, *args: str) -> tuple[int, str, str]:
    result = await KeelCli(client, settings, columns=200)(*args, timeout=60)
    return result.code, result.out, result.err


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
