"""Opt-in response cache: identical temperature-0 calls are answered from Postgres for free."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.llm import LlmRequest
from infra.tables import CachedResponse


def cacheable(request: LlmRequest) -> bool:
    # The cache keeps an answer's text only: a call offering tools is never answered from it.
    return (
        request.use_cache and request.parameters.temperature == 0 and not request.parameters.tools
    )


async def lookup(session: AsyncSession, prompt_hash: str) -> CachedResponse | None:
    result = await session.execute(
        select(CachedResponse).where(CachedResponse.prompt_hash == prompt_hash)
    )
    return result.scalar_one_or_none()


async def store(
    session: AsyncSession,
    prompt_hash: str,
    provider: str,
    model: str,
    text: str,
    finish_reason: str | None,
    input_tokens: int,
    output_tokens: int,
) -> None:
    await session.execute(
        insert(CachedResponse)
        .values(
            prompt_hash=prompt_hash,
            provider=provider,
            model=model,
            text=text,
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        .on_conflict_do_nothing(index_elements=["prompt_hash"])
    )
