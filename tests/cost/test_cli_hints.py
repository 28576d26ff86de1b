"""What the CLI tells a person about an ask says what is true and what to do next: a call paused
on its budget, the fix command in the audit trail, the summary of a call that fell back, and
where to follow an ask started with --no-wait. The real ``keel`` in a subprocess, against a
real Temporal dev server, Postgres and the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from starters.budget import change_budget
from tests.cost.support import CHEAP, audit_types, keel_cli, start_ask
from workflows.ask import AskOutput, AskWorkflow

RELEASE = "keel budget set broke --usd AMOUNT --period day"


@pytest.fixture
async def paused_ask(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> AsyncIterator[WorkflowHandle[AskWorkflow, AskOutput]]:
    """An ask whose call waits on tenant broke's empty daily budget (policy pause)."""
    await change_budget("broke", "day", Decimal("0"), "test")
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
