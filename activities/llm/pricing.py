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


def price_usd(provider: str, model: str, usage: Usage, *, batch: bool = False) -> Decimal | None:
    """What a call cost; ``batch``: a line of a provider batch (``keel batch start --via
    provider``), at genai-prices' batch price, else the live price times the provider's
    documented discount. None: a model the price table does not know (warned about once)."""
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
    priced = PriceUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_tokens or None,
    )
    if batch and batch_price_source(provider, model) == GENAI_PRICES:
        return _quantized(_total(provider, model, priced, BATCH_PRICE_CONTEXT))
    live = _quantized(_total(provider, model, priced))
    return _quantized(live * _discount(provider)) if batch else live


def price_per_million(
    provider: str, model: str, *, batch: bool = False
) -> tuple[Decimal, Decimal] | None:
    """Dollars per million input and output tokens at the base tier (None: unknown model);
    ``batch``: at provider batch prices (where from: ``batch_price_source``)."""
    if not _known(provider, model):
        return None
    context = (
        BATCH_PRICE_CONTEXT
        if batch and batch_price_source(provider, model) == GENAI_PRICES
        else None
    )
    share = _discount(provider) if batch and context is None else Decimal(1)
    # Priced on a thousand tokens, so long-context tiers do not leak into the list price.
    per_thousand = [
        _total(
            provider, model, PriceUsage(input_tokens=tokens_in, output_tokens=tokens_out), context
        )
        * share
        for tokens_in, tokens_out in ((1000, 0), (0, 1000))
    ]
    return per_thousand[0] * 1000, per_thousand[1] * 1000


def _total(
    provider: str, model: str, usage: PriceUsage, context: dict[str, str] | None = None
) -> Decimal:
    calculation = calc_price(usage, model_ref=model, provider_id=provider, price_context=context)
    return Decimal(calculation.total_price)


def _quantized(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.00000001"))


# --- Provider batch prices ----------------------------------------------------------------------

PROVIDER_BATCH_DISCOUNT: dict[str, Decimal] = {
    "openai": Decimal("0.5"),
    "anthropic": Decimal("0.5"),
}
"""The share of the live price each provider's batch API charges, as they document it (OpenAI
Batch API: 50 % off; Anthropic Message Batches: 50 % off). Used only where genai-prices has no
batch price of its own for the model; the one place keel states it (``keel routes`` shows it)."""

BATCH_PRICE_CONTEXT = {"processing": "batch"}


GENAI_PRICES, DOCUMENTED_DISCOUNT = "genai-prices", "documented discount"


def _discount(provider: str) -> Decimal:
    return PROVIDER_BATCH_DISCOUNT.get(provider, Decimal(1))


@lru_cache(maxsize=512)
def batch_price_source(provider: str, model: str) -> str | None:
    """Where a model's batch price comes from: ``genai-prices`` when its table has a batch price
    for the model (cheaper than live), ``documented discount`` otherwise; None: unknown model."""
    if not _known(provider, model):
        return None
    probe = PriceUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    live = _total(provider, model, probe)
    batch = _total(provider, model, probe, BATCH_PRICE_CONTEXT)
    return GENAI_PRICES if batch < live else DOCUMENTED_DISCOUNT
