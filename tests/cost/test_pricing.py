"""Live and provider batch prices come from one function: genai-prices' batch price where its
table has one, else the live price times the provider's documented discount; an unknown model has
no price in either."""

from __future__ import annotations

from decimal import Decimal

import pytest

from activities.llm.pricing import batch_price_source, price_per_million, price_usd
from contracts.llm import Usage

USAGE = Usage(input_tokens=1234, output_tokens=567, cached_tokens=100)


@pytest.mark.parametrize(
    ("provider", "model", "source", "live", "batch"),
    [
        ("openai", "gpt-4o-mini", "genai-prices", "0.00051780", "0.00026265"),
        ("anthropic", "claude-3-5-haiku-latest", "documented discount", "0.00318320", "0.00159160"),
    ],
)
def test_a_batch_line_costs_the_batch_price(
    provider: str, model: str, source: str, live: str, batch: str
) -> None:
    assert batch_price_source(provider, model) == source
    assert price_usd(provider, model, USAGE) == Decimal(live)
    assert price_usd(provider, model, USAGE, batch=True) == Decimal(batch)


def test_per_million_prices_live_and_batch() -> None:
    assert price_per_million("openai", "gpt-4o-mini") == (Decimal("0.15"), Decimal("0.6"))
    assert price_per_million("openai", "gpt-4o-mini", batch=True) == (
        Decimal("0.075"),
        Decimal("0.3"),
    )
    assert price_per_million("anthropic", "claude-3-5-haiku-latest", batch=True) == (
        Decimal("0.4"),
        Decimal("2"),
    )


def test_an_unknown_model_has_no_price_live_or_batch() -> None:
    assert price_usd("openai", "no-such-model", USAGE) is None
    assert price_usd("openai", "no-such-model", USAGE, batch=True) is None
    assert price_per_million("openai", "no-such-model", batch=True) is None
    assert batch_price_source("openai", "no-such-model") is None
