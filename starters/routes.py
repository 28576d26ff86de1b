"""``keel routes``: each route, its chains and models, their prices and their breakers' state.

Prices are genai-prices' list prices per million tokens; breaker states are read from Postgres,
where every worker shares them. Rate limits are listed below the routes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.table import Table
from sqlalchemy import select

from activities.llm.pricing import (
    GENAI_PRICES,
    PROVIDER_BATCH_DISCOUNT,
    batch_price_source,
    price_per_million,
)
from activities.llm.routing import PRIMARY, route_policy
from contracts.llm import CircuitState, provider_for_model
from infra.database import dispose_engines, session_factory
from infra.settings import KeelSettings, get_settings
from infra.tables import CircuitBreaker
from starters.output import console, fail


@dataclass(frozen=True)
class RouteModelRow:
    route: str
    chain: str
    weight: float
    position: int
    model: str
    provider: str
    input_per_million: str
    output_per_million: str
    breaker: str
    # Provider batch mode's prices (keel batch start --via provider), "in/out".
    batch_per_million: str = "unknown"


async def _breakers(settings: KeelSettings) -> dict[tuple[str, str], str]:
    async with session_factory()() as session:
        rows = (await session.execute(select(CircuitBreaker))).scalars()
        states: dict[tuple[str, str], str] = {}
        for row in rows:
            state = row.state
            if state == CircuitState.OPEN and row.opened_at is not None:
                state = f"open since {row.opened_at:%H:%M:%S} ({row.last_error_class})"
            elif state == CircuitState.CLOSED and row.failures:
                state = f"closed ({row.failures} recent failures)"
            states[(row.provider, row.model)] = state
        return states


async def route_rows(settings: KeelSettings) -> list[RouteModelRow]:
    breakers = await _breakers(settings)
    rows: list[RouteModelRow] = []
    for route, primary in settings.routes.items():
        policy = route_policy(route, settings)
        canary_share = sum(c.weight for c in policy.canaries)
        chains = [(PRIMARY, 100 - canary_share, primary)] + [
            (c.label, c.weight, c.models) for c in policy.canaries
        ]
        for chain, weight, models in chains:
            for position, model in enumerate(models, start=1):
                provider, name = provider_for_model(model)
                prices = price_per_million(provider, name)
                batch = price_per_million(provider, name, batch=True)
                batch_source = batch_price_source(provider, name)
                rows.append(
                    RouteModelRow(
                        route=route,
                        chain=chain,
                        weight=weight,
                        position=position,
                        model=model,
                        provider=provider,
                        input_per_million=f"{prices[0]:.2f}" if prices else "unknown",
                        output_per_million=f"{prices[1]:.2f}" if prices else "unknown",
                        breaker=breakers.get((provider, model), "closed"),
                        batch_per_million=f"{batch[0]:.3f}/{batch[1]:.3f}"
                        + (" *" if batch_source != GENAI_PRICES else "")
                        if batch
                        else "unknown",
                    )
                )
    return rows


def print_routes(settings: KeelSettings, rows: list[RouteModelRow]) -> None:
    table = Table(
        title="routes (a request names a route; models are tried in order)", title_justify="left"
    )
    for column in ("route", "chain", "share", "#", "model", "provider"):
        table.add_column(column)
    table.add_column("$/1M in", justify="right")
    table.add_column("$/1M out", justify="right")
    table.add_column("batch in/out", justify="right")
    table.add_column("breaker")
    previous_route = None
    for row in rows:
        first = row.route != previous_route
        default = " (default)" if row.route == settings.default_route else ""
        breaker = row.breaker if row.breaker == CircuitState.CLOSED else f"[red]{row.breaker}[/]"
        table.add_row(
            f"[bold]{row.route}[/]{default}" if first else "",
            row.chain if row.position == 1 else "",
            f"{row.weight:g}%" if row.position == 1 else "",
            str(row.position),
            row.model,
            row.provider,
            row.input_per_million,
            row.output_per_million,
            row.batch_per_million,
            breaker,
            end_section=False,
        )
        previous_route = row.route
    console.print(table)
    for route in settings.routes:
        policy = route_policy(route, settings)
        if policy.downgrade_to:
            purposes = (
                f"; always for {', '.join(policy.downgrade_purposes)}"
                if policy.downgrade_purposes
                else ""
            )
            console.print(
                f"[dim]{route} → {policy.downgrade_to} when a budget runs below "
                f"{settings.budget_downgrade_below:.0%} or out{purposes}[/]"
            )
    discounts = ", ".join(
        f"{provider} {1 - share:.0%} off" for provider, share in PROVIDER_BATCH_DISCOUNT.items()
    )
    console.print(
        f"[dim]batch: --via provider prices (genai-prices' batch prices; * the providers' "
        f"documented discount where it has none: {discounts})[/]"
    )
    if settings.rate_limits:
        limits = Table(title="rate limits (shared by every worker)", title_justify="left")
        for column in ("scope", "requests/min", "tokens/min", "burst"):
            limits.add_column(column)
        for scope, limit in settings.rate_limits.items():
            limits.add_row(
                scope,
                f"{limit.requests_per_minute:g}" if limit.requests_per_minute else "—",
                f"{limit.tokens_per_minute:g}" if limit.tokens_per_minute else "—",
                f"{limit.burst_seconds:g}s of the rate",
            )
        console.print(limits)
    console.print(
        "[dim]compare a canary with its primary: keel cost --by model · configure: "
        "KEEL_ROUTES, KEEL_ROUTE_POLICIES, KEEL_RATE_LIMITS[/]"
    )


async def show_routes(settings: KeelSettings | None = None) -> list[RouteModelRow]:
    """Print the routes table (the demo calls this; engines are left open for the caller)."""
    settings = settings or get_settings()
    rows = await route_rows(settings)
    print_routes(settings, rows)
    return rows


async def _routes() -> None:
    try:
        await show_routes()
    except OSError as error:
        fail(f"cannot read breaker states: {error}", "is Postgres up? keel dev status")
    finally:
        await dispose_engines()


def routes() -> None:
    """Each route's models, prices, canary shares and breakers' state.

    Chains (primary and canaries, with their traffic share), models in fallback order, list
    prices per million tokens (genai-prices), circuit breakers as Postgres has them."""
    asyncio.run(_routes())
