"""The models the simulator knows: context windows, output limits and a latency model each.

Latencies are rough public medians so benchmarks see realistic ratios between models
(a reasoning model is slow to first token, a mini model streams fast). Every model is
served on both the OpenAI and the Anthropic endpoint; ``provider`` only says whose it is
and how ``/v1/models`` lists it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    provider: Literal["openai", "anthropic", "sim"] = "sim"
    context_window: int = Field(gt=0, description="Max prompt + completion tokens.")
    max_output_tokens: int = Field(gt=0, description="Largest max_tokens accepted.")
    ttft_s: float = Field(default=0.3, ge=0, description="Time to first token, seconds.")
    tokens_per_s: float = Field(default=80.0, gt=0, description="Streaming speed.")
    reasoning: bool = Field(
        default=False, description="Spends hidden reasoning tokens before answering."
    )
    created: int = 1_715_000_000
    display_name: str | None = None


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    # OpenAI
    ModelSpec(
        id="gpt-4o-mini",
        provider="openai",
        context_window=128_000,
        max_output_tokens=16_384,
        ttft_s=0.35,
        tokens_per_s=90,
    ),
    ModelSpec(
        id="gpt-4o",
        provider="openai",
        context_window=128_000,
        max_output_tokens=16_384,
        ttft_s=0.5,
        tokens_per_s=60,
    ),
    ModelSpec(
        id="gpt-4.1",
        provider="openai",
        context_window=1_047_576,
        max_output_tokens=32_768,
        ttft_s=0.55,
        tokens_per_s=55,
    ),
    ModelSpec(
        id="gpt-4.1-mini",
        provider="openai",
        context_window=1_047_576,
        max_output_tokens=32_768,
        ttft_s=0.4,
        tokens_per_s=80,
    ),
    ModelSpec(
        id="gpt-4.1-nano",
        provider="openai",
        context_window=1_047_576,
        max_output_tokens=32_768,
        ttft_s=0.3,
        tokens_per_s=120,
    ),
    ModelSpec(
        id="o4-mini",
        provider="openai",
        context_window=200_000,
        max_output_tokens=100_000,
        ttft_s=1.2,
        tokens_per_s=90,
        reasoning=True,
    ),
    ModelSpec(
        id="gpt-5",
        provider="openai",
        context_window=400_000,
        max_output_tokens=128_000,
        ttft_s=1.5,
        tokens_per_s=50,
        reasoning=True,
    ),
    ModelSpec(
        id="gpt-5-mini",
        provider="openai",
        context_window=400_000,
        max_output_tokens=128_000,
        ttft_s=1.0,
        tokens_per_s=80,
        reasoning=True,
    ),
    # Anthropic
    ModelSpec(
        id="claude-3-5-haiku-latest",
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=8_192,
        ttft_s=0.6,
        tokens_per_s=65,
        display_name="Claude Haiku 3.5",
    ),
    ModelSpec(
        id="claude-3-5-haiku-20241022",
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=8_192,
        ttft_s=0.6,
        tokens_per_s=65,
        display_name="Claude Haiku 3.5",
    ),
    ModelSpec(
        id="claude-haiku-4-5",
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=64_000,
        ttft_s=0.5,
        tokens_per_s=100,
        display_name="Claude Haiku 4.5",
    ),
    ModelSpec(
        id="claude-sonnet-4-5",
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=64_000,
        ttft_s=0.9,
        tokens_per_s=60,
        display_name="Claude Sonnet 4.5",
    ),
    ModelSpec(
        id="claude-sonnet-4-5-20250929",
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=64_000,
        ttft_s=0.9,
        tokens_per_s=60,
        display_name="Claude Sonnet 4.5",
    ),
    ModelSpec(
        id="claude-opus-4-1",
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=32_000,
        ttft_s=1.4,
        tokens_per_s=35,
        display_name="Claude Opus 4.1",
    ),
    # Test models: tiny windows make context-limit paths cheap to reach.
    ModelSpec(
        id="sim-tiny",
        provider="sim",
        context_window=2_048,
        max_output_tokens=1_024,
        ttft_s=0.05,
        tokens_per_s=400,
    ),
    ModelSpec(
        id="sim-small",
        provider="sim",
        context_window=8_192,
        max_output_tokens=4_096,
        ttft_s=0.1,
        tokens_per_s=250,
    ),
)


def build_catalog(extra: list[ModelSpec] | tuple[ModelSpec, ...] = ()) -> dict[str, ModelSpec]:
    """The default models plus ``extra`` (which replace defaults of the same id)."""
    catalog = {m.id: m for m in DEFAULT_MODELS}
    catalog.update({m.id: m for m in extra})
    return catalog
