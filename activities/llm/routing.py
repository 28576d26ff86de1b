"""Which chain of models serves a call: the named route, its canary split, and its downgrades.

Pure functions over settings, used by the route planner (``plan_llm_route``) and ``keel routes``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from contracts.llm import BudgetState
from contracts.traffic import RoutePolicy
from infra.settings import KeelSettings

PRIMARY = "primary"


class UnknownRouteError(ValueError):
    pass


@dataclass(frozen=True)
class RouteChoice:
    route: str
    models: list[str]
    chain: str = PRIMARY
    downgraded_from: str | None = None
    downgrade_reason: str | None = None


def route_policy(route: str, settings: KeelSettings) -> RoutePolicy:
    return settings.route_policies.get(route) or RoutePolicy()


def check_route(route: str, settings: KeelSettings) -> None:
    if not settings.routes.get(route):
        known = ", ".join(sorted(settings.routes)) or "none"
        raise UnknownRouteError(
            f"unknown route {route!r}; configured routes: {known} (set KEEL_ROUTES to add one)"
        )


def traffic_point(key: str) -> float:
    """A stable point in [0, 100) for ``key``: the same call always lands on the same chain
    (a retried plan, a replayed workflow), and many calls spread evenly over the weights."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def split_traffic(route: str, settings: KeelSettings, key: str) -> tuple[list[str], str]:
    """The chain ``key`` is sent to: a canary takes ``weight`` percent, the primary the rest."""
    point = traffic_point(f"{route}/{key}")
    edge = 0.0
    for canary in route_policy(route, settings).canaries:
        edge += canary.weight
        if point < edge:
            return list(canary.models), canary.label
    return list(settings.routes[route]), PRIMARY


def budget_is_low(states: list[BudgetState], settings: KeelSettings) -> BudgetState | None:
    """The budget with the smallest share left, if it is below the downgrade threshold."""
    low = [s for s in states if s.left_ratio < settings.budget_downgrade_below]
    return min(low, key=lambda s: s.left_ratio) if low else None


def choose_route(
    route: str,
    purpose: str,
    settings: KeelSettings,
    key: str,
    budget_low: bool = False,
) -> RouteChoice:
    """Resolve the route a request names into the chain that serves it.

    A purpose listed in the route's ``downgrade_purposes`` (a task class such as a summary) goes
    to its ``downgrade_to``; while the tenant's budget is low, every call steps down one more
    ``downgrade_to`` link (a call the budget then refuses steps down again, in ``ask_llm``)."""
    check_route(route, settings)
    named, reason = route, None
    policy = route_policy(route, settings)
    if purpose in policy.downgrade_purposes and policy.downgrade_to:
        route, reason = policy.downgrade_to, "purpose"
        check_route(route, settings)
    target = route_policy(route, settings).downgrade_to
    if budget_low and target and target != named:
        check_route(target, settings)
        route, reason = target, "budget_low"
    models, chain = split_traffic(route, settings, key)
    return RouteChoice(
        route=route,
        models=models,
        chain=chain,
        downgraded_from=named if route != named else None,
        downgrade_reason=reason if route != named else None,
    )
