"""One question to an LLM as a durable workflow (``keel ask``, the demos): start it, and read
what the ledger metered for it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowHandle

from contracts.llm import LedgerOutcome
from contracts.search_attributes import tenant_search_attributes
from infra.settings import KeelSettings
from infra.tables import LlmCall
from infra.temporal_tuning import REQUEST_EAGER_WORKFLOW_START
from workflows.ask import AskInput, AskOutput, AskWorkflow


async def start_ask(
    client: Client, settings: KeelSettings, params: AskInput, workflow_id: str
) -> WorkflowHandle[AskWorkflow, AskOutput]:
    """Start AskWorkflow on the interactive queue with the tenant's search attributes."""
    return await client.start_workflow(
        AskWorkflow.run,
        params,
        id=workflow_id,
        task_queue=settings.interactive_task_queue,
        search_attributes=tenant_search_attributes(params.tenant, "ask"),
        static_summary=ask_summary(params),
        static_details=ask_details(params),
        # The first workflow task comes back with the start when this client's process runs an
        # interactive worker (infra/temporal_tuning.py); an ordinary start otherwise.
        request_eager_start=REQUEST_EAGER_WORKFLOW_START,
    )


def ask_summary(params: AskInput) -> str:
    """What the Web UI lists the run as: what was asked of which models, for whom (never the
    prompt: it may hold what only the tenant should read)."""
    return f"ask · {_asked_of(params)} · tenant {params.tenant}"


def _asked_of(params: AskInput) -> str:
    if params.route:
        return f"route {params.route}"
    return ", ".join(params.models) if params.models else "the default route"


def ask_details(params: AskInput) -> str:
    lines = [f"Up to {params.max_tokens} tokens, from {_asked_of(params)}."]
    if params.fallback_policy is not None:
        lines.append(f"Fallback policy: {params.fallback_policy.value}.")
    if params.budget_policy is not None:
        lines.append(f"Over budget: {params.budget_policy.value}.")
    if params.use_cache:
        lines.append("Answers may come from the response cache.")
    return "\n".join(lines)


@dataclass(frozen=True)
class LedgerAttempts:
    """What the ledger metered for one run: every attempt, of every model asked."""

    attempts: int
    models: list[str]


async def ledger_attempts(
    sessions: async_sessionmaker[AsyncSession], workflow_id: str, run_id: str | None
) -> LedgerAttempts | None:
    """The run's ledger rows (None when the database cannot be read: the answer still
    prints, with the answering model's own attempt count)."""
    statement = (
        select(LlmCall.model)
        .where(
            LlmCall.workflow_id == workflow_id,
            LlmCall.outcome != LedgerOutcome.IN_FLIGHT.value,
        )
        .order_by(LlmCall.id)
    )
    if run_id is not None:
        statement = statement.where(LlmCall.run_id == run_id)
    try:
        async with sessions() as session:
            models = list((await session.execute(statement)).scalars())
    except (OSError, SQLAlchemyError):
        return None
    return LedgerAttempts(len(models), list(dict.fromkeys(models)))
