"""What a person asks about a chat session: its turns, summary, tokens and cost (read-only).

Shared by ``keel session show`` and ``GET /v1/sessions/{id}``. Cost comes from the ledger, so it
includes summarization calls and failed attempts, not only the answers.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select

from contracts.sessions import session_workflow_id
from infra.database import session_factory
from infra.tables import ChatSession, LlmCall, Message


class TurnReport(BaseModel):
    turn_id: str
    question: str | None = None
    answer: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None
    summarized: bool = False
    seeded: bool = False
    asked_at: datetime | None = None


class SessionReport(BaseModel):
    session_id: str
    tenant: str
    workflow_id: str | None
    system_prompt: str | None
    route: str | None
    models: list[Any] | None
    summary: str | None
    summary_tokens: int
    summarized_through_seq: int
    turns: list[TurnReport] = Field(default_factory=list)
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None
    created_at: datetime
    updated_at: datetime


async def session_report(session_id: str, tenant: str | None = None) -> SessionReport | None:
    """The session's report, or None if it does not exist (or belongs to another tenant)."""
    async with session_factory()() as db:
        session = await db.get(ChatSession, session_id)
        if session is None or (tenant is not None and session.tenant != tenant):
            return None
        messages = (
            await db.execute(
                select(Message).where(Message.session_id == session_id).order_by(Message.seq)
            )
        ).scalars()
        ledger = (
            await db.execute(
                select(
                    func.count(LlmCall.id),
                    func.coalesce(func.sum(LlmCall.input_tokens), 0),
                    func.coalesce(func.sum(LlmCall.output_tokens), 0),
                    func.sum(LlmCall.cost_usd),
                ).where(LlmCall.workflow_id == session_workflow_id(session_id))
            )
        ).one()
        turns: dict[str, TurnReport] = {}
        for message in messages:
            turn = turns.setdefault(
                message.turn_id,
                TurnReport(turn_id=message.turn_id, seeded="#seed" in message.turn_id),
            )
            turn.summarized = turn.summarized or message.summarized
            if message.role == "user":
                turn.question, turn.asked_at = message.content, message.created_at
            else:
                turn.answer, turn.model = message.content, message.model
                turn.input_tokens, turn.output_tokens = message.input_tokens, message.tokens
                turn.cost_usd = message.cost_usd
        return SessionReport(
            session_id=session.id,
            tenant=session.tenant,
            workflow_id=session.workflow_id,
            system_prompt=session.system_prompt,
            route=session.model_route,
            models=session.models,
            summary=session.summary,
            summary_tokens=session.summary_tokens,
            summarized_through_seq=session.summarized_through_seq,
            turns=list(turns.values()),
            llm_calls=int(ledger[0]),
            input_tokens=int(ledger[1]),
            output_tokens=int(ledger[2]),
            cost_usd=ledger[3],
            created_at=session.created_at,
            updated_at=session.updated_at,
        )


async def session_tenant(session_id: str) -> str | None:
    """The tenant a session belongs to, or None if it does not exist (yet)."""
    async with session_factory()() as db:
        result = await db.execute(select(ChatSession.tenant).where(ChatSession.id == session_id))
        return result.scalar_one_or_none()
