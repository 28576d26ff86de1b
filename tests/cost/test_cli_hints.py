"""What the CLI tells a person about an ask says what is true and what to do next: a call paused
on its budget, the fix command in the audit trail, the summary of a call that fell back, and
where to follow an ask started with --no-wait. The real ``keel`` in a subprocess, against a
real Temporal dev server, Postgres and the simulator."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import AuditEvent
from llmsim import SimServer
from services.budgets import change_budget
from starters.show import budget_pause
from tests.conftest import TEMPORAL_CLI
from tests.cost.support import CHEAP, audit_types, keel_cli, start_ask
from tests.helpers import audit_events, codec_server_process, ledger_rows
from workflows.ask import AskOutput, AskWorkflow

BACKUP = "claude-3-5-haiku-latest"
RELEASE = "keel budget set broke --usd AMOUNT --period day"


@pytest.fixture
async def paused_ask(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> AsyncIterator[WorkflowHandle[AskWorkflow, AskOutput]]:
    """An ask whose call waits on tenant broke's empty daily budget (policy pause)."""
    await change_budget(session_factory(), "broke", "day", Decimal("0"), "test")
    handle = await start_ask(
        client, keel_settings, models=[CHEAP], tenant="broke", budget_policy="pause"
    )
    for _ in range(400):
        if "llm.budget_paused" in await audit_types(handle.id):
            break
        await asyncio.sleep(0.05)
    assert "llm.budget_paused" in await audit_types(handle.id)
    yield handle
    await handle.terminate("test over")


@pytest.mark.slow  # a real `keel` process
async def test_show_says_the_call_is_paused_on_which_budget_and_how_to_release_it(
    client: Client,
    keel_settings: KeelSettings,
    paused_ask: WorkflowHandle[AskWorkflow, AskOutput],
) -> None:
    shown = await keel_cli(client, keel_settings, "show", paused_ask.id)
    assert shown.code == 0, shown.err
    assert "RUNNING" in shown.out
    assert "the workflow is working" not in shown.out
    assert "paused on budget broke/day" in shown.out
    assert f"release: {RELEASE}" in shown.out


@pytest.mark.slow  # a real `keel` process
async def test_the_audit_table_keeps_the_fix_command_whole_on_a_narrow_terminal(
    client: Client,
    keel_settings: KeelSettings,
    paused_ask: WorkflowHandle[AskWorkflow, AskOutput],
) -> None:
    trail = await keel_cli(client, keel_settings, "audit", paused_ask.id, columns=80)
    assert trail.code == 0, trail.err
    assert "llm.budget_paused" in trail.out
    assert max(len(line) for line in trail.out.splitlines()) <= 80, trail.out
    # Whole, on a line of its own, as a person copies it.
    lines = [line.strip() for line in trail.out.splitlines()]
    assert "keel budget set broke --usd <amount> --period day" in lines, trail.out


@pytest.fixture
async def codec_server_url() -> AsyncIterator[str]:
    """The real `keel codec-server` process, with the suite's keys, on a free port."""
    async with codec_server_process() as url:
        yield url


@pytest.mark.slow  # real `keel` processes
async def test_ask_no_wait_suggests_commands_that_show_the_answer_in_plain_text(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    codec_server_url: str,
) -> None:
    port = codec_server_url.rsplit(":", 1)[1]
    started = await keel_cli(
        client,
        keel_settings,
        "ask", "Name a river.", "-m", CHEAP, "--no-wait",
        KEEL_CODEC_SERVER_PORT=port,
    )  # fmt: skip
    assert started.code == 0, started.err
    workflow_id = re.search(r"workflow (ask-[0-9a-f]+)", started.out)
    assert workflow_id is not None, started.out
    handle = client.get_workflow_handle(workflow_id.group(1), result_type=AskOutput)
    answer = (await handle.result()).answer
    hints = dict(line.strip().split(": ", 1) for line in started.out.splitlines() if ": " in line)
    assert hints["follow"].startswith(f"keel show {handle.id}")

    # The suggested command, run as printed, shows the answer, not ciphertext.
    command = shlex.split(hints["answer"])
    assert command[:2] == ["temporal", "workflow"] and "--codec-endpoint" in command
    printed = await asyncio.create_subprocess_exec(
        str(TEMPORAL_CLI), *command[1:], "--disable-config-file", "--disable-config-env",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await asyncio.wait_for(printed.communicate(), 60))[0].decode()
    assert printed.returncode == 0, out
    assert "binary/encrypted" not in out and answer.model in out, out
    assert json.dumps(answer.text)[1:30] in out, out

    followed = await keel_cli(client, keel_settings, "show", handle.id)
    assert followed.code == 0 and "COMPLETED" in followed.out, followed.err


@pytest.mark.slow  # a real `keel` process
async def test_the_summary_of_a_call_that_fell_back_counts_every_attempt(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    """The first model refuses the prompt once (no retry), the second fails once then answers:
    three ledger rows, answered by the second model."""
    simulator.add_faults("context_window", model=CHEAP, count=1)
    simulator.add_faults("server_error", model=BACKUP, count=1)
    asked = await keel_cli(client, keel_settings, "ask", "Name a river.", "-m", CHEAP, "-m", BACKUP)
    assert asked.code == 0, asked.err
    workflow_id = re.search(r"workflow (ask-[0-9a-f]+)", asked.out)
    assert workflow_id is not None, asked.out
    rows = await ledger_rows(workflow_id=workflow_id.group(1))
    assert [(row.model, row.outcome) for row in rows] == [
        (CHEAP, "error"),
        (BACKUP, "error"),
        (BACKUP, "ok"),
    ]
    summary = next(line for line in asked.out.splitlines() if line.startswith(f"model {BACKUP}"))
    assert "attempts 3 over 2 models" in summary and "fallback used" in summary, summary
    assert "FALLBACK RESPONSE" not in summary
    assert f"fell back from {CHEAP}: context_window" in asked.out

    (completed,) = [
        e for e in await audit_events(workflow_id.group(1)) if e.event_type == "ask.completed"
    ]
    assert completed.payload["fallback_used"] is True
    assert completed.payload["fallback_response"] is False
    assert completed.payload["model"] == BACKUP


def test_a_pause_recorded_before_the_budget_was_in_its_payload_is_read_from_its_reason() -> None:
    """Asks paused by an older worker recorded only the reason; it names the budget."""
    reason = (
        "budget acme/month: $1.0000 spent + $0.0000 reserved by calls in flight, of $1.0000; "
        "this call on gpt-4o needs up to $0.005155. Raise it with: keel budget set acme "
        "--usd <amount> --period month"
    )

    def event(event_type: str, payload: dict[str, object]) -> AuditEvent:
        return AuditEvent(
            event_type=event_type, run_id="r1", payload=payload, occurred_at=datetime.now(UTC)
        )

    paused = event("llm.budget_paused", {"purpose": "ask", "reason": reason})
    pause = budget_pause([event("ask.started", {}), paused], "r1")
    assert pause is not None
    assert pause.release_command == "keel budget set acme --usd AMOUNT --period month"
    # Resumed, or paused in another run: not paused now.
    assert budget_pause([paused, event("llm.budget_resumed", {})], "r1") is None
    assert budget_pause([paused], "r2") is None
