"""How traffic is shaped, as configured: canary chains and downgrades per route, rate limits per
provider, and what a caller does when its tenant's budget runs out.

Plain pydantic models, no I/O: the settings class and the workflow sandbox both import them.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BudgetPolicy(StrEnum):
    """What a call does when its tenant's budget cannot cover it."""

    # Fail at once with a non-retryable ``LlmBudgetExceeded`` naming the budget.
    REFUSE = "refuse"
    # Re-plan on the route's ``downgrade_to`` (a cheaper chain); refuse when there is none.
    DOWNGRADE = "downgrade"
    # Wait durably (timers, no worker slot held) until the budget has room again: someone
    # raised it (`keel budget set`) or a new period began; refuse after the pause limit.
    # For workflows making one call at a time: each waiting call polls on its own timer, so a
    # batch with hundreds of calls in flight pauses once, at its own gate, instead (REFUSE).
    PAUSE = "pause"


class WeightedChain(BaseModel):
    """An alternative model chain that takes ``weight`` percent of a route's traffic."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    weight: float = Field(gt=0, le=100, description="Percent of the route's calls.")
    label: str = Field(default="canary", min_length=1, max_length=50)


class RoutePolicy(BaseModel):
    """Traffic shaping for one named route (its primary chain stays in ``settings.routes``)."""

    model_config = ConfigDict(extra="forbid")

    canaries: list[WeightedChain] = Field(
        default_factory=list,
        description="Chains that take a share of the traffic; the primary chain takes the rest.",
    )
    downgrade_to: str | None = Field(
        default=None,
        description="A cheaper route, used when the tenant's budget runs low or out.",
    )
    downgrade_purposes: list[str] = Field(
        default_factory=list,
        description="Task classes (request purposes) always served by `downgrade_to`.",
    )

    @model_validator(mode="after")
    def _weights_fit(self) -> RoutePolicy:
        total = sum(chain.weight for chain in self.canaries)
        if total >= 100:
            raise ValueError(
                f"canary weights add up to {total}%: the primary chain needs some traffic left"
            )
        if self.downgrade_purposes and self.downgrade_to is None:
            raise ValueError("downgrade_purposes needs downgrade_to: the route to send them to")
        return self


class RateLimit(BaseModel):
    """Requests and tokens per minute for one provider (``openai``) or one provider's model
    (``openai:gpt-4o``), shared by every worker process through Postgres."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    burst_seconds: float = Field(
        default=60,
        gt=0,
        le=600,
        description="How much unused capacity may accumulate, in seconds of the rate: 60 lets "
        "a whole minute's allowance go at once (as providers allow); 1 smooths to the rate.",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimit:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("a rate limit needs requests_per_minute, tokens_per_minute or both")
        return self
