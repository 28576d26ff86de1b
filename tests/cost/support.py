"""Helpers of the cost and traffic tests: asking through AskWorkflow, reading the ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from temporalio.client import Client, WorkflowHandle

from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import AuditEvent, LlmCall, TenantDailySpend
from llmsim import SimServer
from tests.helpers import CliResult, KeelCli
from workflows.ask import AskInput, AskOutput, AskWorkflow

CHEAP = "gpt-4o-mini"
PRICEY = "gpt-4o"


async def start_ask(
    client: Client, settings: KeelSettings, **fields: Any
) -> WorkflowHandle[AskWorkflow, AskOutput]:
    params = AskInput.model_validate({"prompt": "Name three rivers in Europe.", **fields})
    return await client.start_workflow(
        AskWorkflow.run,
        params,
        id=f"ask-{uuid.uuid4().hex[:10]}",
        task_queue=settings.interactive_task_queue,
    )


async def ask(client: Client, settings: KeelSettings, **fields: Any) -> tuple[str, AskOutput]:
    handle = await start_ask(client, settings, **fields)
    return handle.id, await handle.result()


async def metered_spend(tenant: str) -> Decimal:
    """What the ledger says the tenant was billed, straight from the rows."""
    async with session_factory()() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(LlmCall.cost_usd), 0)).where(LlmCall.tenant == tenant)
        )
    return Decimal(total or 0)


async def counted_spend(tenant: str) -> Decimal:
    """What the budget check reads: the per-day spend counters."""
    async with session_factory()() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(TenantDailySpend.spent_usd), 0)).where(
                TenantDailySpend.tenant == tenant
            )
        )
    return Decimal(total or 0)


async def audit_types(workflow_id: str) -> list[str]:
    async with session_factory()() as session:
        result = await session.execute(
            select(AuditEvent.event_type)
            .where(AuditEvent.workflow_id == workflow_id)
            .order_by(AuditEvent.id)
        )
        return list(result.scalars())


def requests_to(simulator: SimServer, model: str) -> int:
    return int(simulator.stats()["models"].get(model, {}).get("requests", 0))


@contextmanager
def simulator_latency(simulator: SimServer, seconds: float) -> Iterator[None]:
    """Every successful simulated call takes ``seconds`` (the simulator is shared: restored)."""
    before = simulator.state.config.fixed_latency_s
    simulator.configure(fixed_latency_s=seconds)
    try:
        yield
    finally:
        simulator.configure(fixed_latency_s=before)


async def keel_cli(
    client: Client,
    settings: KeelSettings,
    *args: str,
    timeout: float = 120,
    columns: int = 200,
    **extra_env: str,
) -> CliResult:
    """The real ``keel`` command in a subprocess, pointed at the test's servers."""
    return await KeelCli(client, settings, columns=columns, **extra_env)(*args, timeout=timeout)
