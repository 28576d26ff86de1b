"""Reading the circuit breakers, for assertions (the ledger and audit trail: tests/helpers.py)."""

from __future__ import annotations

from infra.database import session_factory
from infra.tables import CircuitBreaker


async def breaker(provider: str, model: str) -> CircuitBreaker | None:
    async with session_factory()() as session:
        return await session.get(CircuitBreaker, (provider, model))
