"""What a call cost, from the maintained price table (pydantic's genai-prices).

An unknown model is recorded with its tokens and a null cost, never a guess, and warned about once.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

import structlog
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from contracts.llm import Usage

log = structlog.get_logger(__name__)
_warned: set[tuple[str, str]] = set()


@lru_cache(maxsize=512)
def _known(provider: str, model: str) -> bool:
    try:
        calc_price(
            PriceUsage(input_tokens=0, output_tokens=0),
            model_ref=model,
            provider_id=provider,
        )
    except LookupError:
        return False
    return True


def price_usd(provider: str, model: str, usage: Usage) -> Decimal | None:
    if not _known(provider, model):
        if (provider, model) not in _warned:
            _warned.add((provider, model))
            log.warning(
                "llm.price_unknown",
                provider=provider,
                model=model,
                hint="tokens are recorded with a null cost; upgrade genai-prices or use a "
                "model it knows",
            )
        return None
    # genai-prices counts cache reads inside input_tokens, as both providers report them.
    calculation = calc_price(
        PriceUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cached_tokens or None,
        ),
        model_ref=model,
        provider_id=provider,
    )
    return Decimal(calculation.total_price).quantize(Decimal("0.00000001"))


def price_per_million(provider: str, model: str) -> tuple[Decimal, Decimal] | None:
    """Dollars per million input and output tokens at the base tier (None: unknown model)."""
    if not _known(provider, model):
        return None
    # Priced on a thousand tokens, so long-context tiers do not leak into the list price.
    per_thousand = [
        calc_price(
            PriceUsage(input_tokens=tokens_in, output_tokens=tokens_out),
            model_ref=model,
            provider_id=provider,
        ).total_price
        for tokens_in, tokens_out in ((1000, 0), (0, 1000))
    ]
    return Decimal(per_thousand[0]) * 1000, Decimal(per_thousand[1]) * 1000


# --- Provider batch prices ----------------------------------------------------------------------

PROVIDER_BATCH_DISCOUNT: dict[str, Decimal] = {
    "openai": Decimal("0.5"),
    "anthropic": Decimal("0.5"),
}
"""The share of the live price each provider's batch API charges, as they document it (OpenAI
Batch API: 50 % off; Anthropic Message Batches: 50 % off). Used only where genai-prices has no
batch price of its own for the model; the one place keel states it (``keel routes`` shows it)."""

BATCH_PRICE_CONTEXT = {"processing": "batch"}


@lru_cache(maxsize=512)
def batch_price_source(provider: str, model: str) -> str | None:
    """Where a model's batch price comes from: ``genai-prices`` when its table has a batch price
    for the model (cheaper than live), ``documented discount`` otherwise; None: unknown model."""
    if not _known(provider, model):
        return None
    probe = PriceUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    live = calc_price(probe, model_ref=model, provider_id=provider).total_price
    batch = calc_price(
        probe, model_ref=model, provider_id=provider, price_context=BATCH_PRICE_CONTEXT
    ).total_price
    return "genai-prices" if batch < live else "documented discount"


def batch_price_usd(provider: str, model: str, usage: Usage) -> Decimal | None:
    """What a provider batch line cost: genai-prices' batch price, else the live price times the
    provider's documented discount (None: unknown model, as for live calls)."""
    source = batch_price_source(provider, model)
    if source is None:
        return price_usd(provider, model, usage)
    if source == "genai-prices":
        calculation = calc_price(
            PriceUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cached_tokens or None,
            ),
            model_ref=model,
            provider_id=provider,
            price_context=BATCH_PRICE_CONTEXT,
        )
        return Decimal(calculation.total_price).quantize(Decimal("0.00000001"))
    live = price_usd(provider, model, usage)
    if live is None:
        return None
    discount = PROVIDER_BATCH_DISCOUNT.get(provider, Decimal(1))
    return (live * discount).quantize(Decimal("0.00000001"))


def batch_price_per_million(provider: str, model: str) -> tuple[Decimal, Decimal, str] | None:
    """Batch dollars per million input and output tokens, and where the price comes from."""
    source = batch_price_source(provider, model)
    if source is None:
        return None
    per_thousand = [
        batch_price_usd(provider, model, Usage(input_tokens=tokens_in, output_tokens=tokens_out))
        or Decimal(0)
        for tokens_in, tokens_out in ((1000, 0), (0, 1000))
    ]
    return per_thousand[0] * 1000, per_thousand[1] * 1000, source
