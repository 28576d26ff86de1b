"""The LLM call ledger: exactly one ``llm_calls`` row per attempt that really happened."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from activities.llm.models import Usage
from infra.tables import LlmCall


@dataclass(frozen=True)
class AttemptRecord:
    workflow_id: str
    run_id: str | None
    activity_id: str
    attempt: int
    tenant: str
    route: str | None
    provider: str
    model: str
    prompt_hash: str
    usage: Usage
    cost_usd: Decimal | None
    latency_ms: int
    first_token_ms: int | None
    streamed: bool
    outcome: str
    error_class: str | None = None
    error_message: str | None = None


async def record_attempt(session: AsyncSession, record: AttemptRecord) -> None:
    """Insert the attempt; a replay of the same attempt (same workflow, activity, attempt) is a
    no-op, so a retried write never double-counts tokens or cost."""
    statement = (
        insert(LlmCall)
        .values(
            workflow_id=record.workflow_id,
            run_id=record.run_id,
            activity_id=record.activity_id,
            attempt=record.attempt,
            tenant=record.tenant,
            route=record.route,
            provider=record.provider,
            model=record.model,
            prompt_hash=record.prompt_hash,
            input_tokens=record.usage.input_tokens,
            output_tokens=record.usage.output_tokens,
            cached_tokens=record.usage.cached_tokens,
            reasoning_tokens=record.usage.reasoning_tokens,
            cost_usd=record.cost_usd,
            latency_ms=record.latency_ms,
            first_token_ms=record.first_token_ms,
            streamed=record.streamed,
            outcome=record.outcome,
            error_class=record.error_class,
            error_message=record.error_message,
        )
        .on_conflict_do_nothing(index_elements=["workflow_id", "activity_id", "attempt"])
    )
    await session.execute(statement)
