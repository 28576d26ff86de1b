"""Fault injection: what can go wrong, the named profiles, and which request gets which fault.

A request's fate is decided from ``(seed, model, n)`` where ``n`` counts the requests
that model has received, so a fault sequence replays exactly for the same seed and the
same per-model request order, whatever else the server is doing. Scripted faults (a FIFO
per model, then the ``*`` queue) are consumed before probabilistic rules are consulted.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsim.hashing import unit_interval

ANY_MODEL = "*"


class FaultKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    """429 with ``retry-after`` (seconds) and ``retry-after-ms`` headers."""
    SERVER_ERROR = "server_error"
    """500."""
    OVERLOADED = "overloaded"
    """503 on the OpenAI endpoint, 529 ``overloaded_error`` on the Anthropic one."""
    HANG = "hang"
    """Accept the request and never answer (until ``hang_s``, client disconnect or shutdown)."""
    STREAM_RESET = "stream_reset"
    """Streaming: send ``after_chunks`` content chunks, then reset the TCP connection.
    Non-streaming: reset the connection without sending a response."""
    CONTENT_POLICY = "content_policy"
    """400 content-policy rejection."""
    CONTEXT_WINDOW = "context_window"
    """400 context-length error, as if the prompt were too long."""


class _FaultParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_after_s: float = Field(
        default=1.0, ge=0, le=3600, description="rate_limit: Retry-After to send."
    )
    after_chunks: int = Field(
        default=2, ge=0, description="stream_reset: content chunks sent before the reset."
    )
    hang_s: float = Field(
        default=900.0, gt=0, description="hang: how long to hold the request unanswered."
    )


class FaultRule(_FaultParams):
    """Fail ``rate`` of the requests to ``model`` (or every model, ``*``) with ``kind``."""

    model: str = Field(default=ANY_MODEL, min_length=1)
    kind: FaultKind
    rate: float = Field(ge=0, le=1)


class ScriptedFault(_FaultParams):
    """The next ``count`` requests to ``model`` (``*``: to any model) fail with ``kind``."""

    model: str = Field(default=ANY_MODEL, min_length=1)
    kind: FaultKind
    count: int = Field(default=1, ge=1, le=100_000)


class FaultProfile(BaseModel):
    """A set of fault rules and scripted faults; the format of ``--profile-file``."""

    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = Field(default_factory=list)
    scripted: list[ScriptedFault] = Field(default_factory=list)


class Fault(_FaultParams):
    """The fault chosen for one request."""

    kind: FaultKind
    source: Literal["scripted", "rule"]


def _flaky_rules(model: str) -> list[FaultRule]:
    return [
        FaultRule(model=model, kind=FaultKind.RATE_LIMIT, rate=0.20, retry_after_s=1.0),
        FaultRule(model=model, kind=FaultKind.SERVER_ERROR, rate=0.10),
        FaultRule(model=model, kind=FaultKind.OVERLOADED, rate=0.05),
        FaultRule(model=model, kind=FaultKind.STREAM_RESET, rate=0.03),
    ]


PROFILES: dict[str, FaultProfile] = {
    # No faults at all.
    "none": FaultProfile(),
    # The primary models misbehave (20% 429 with Retry-After 1s, 10% 500, 5% overloaded,
    # 3% stream reset: 38% of their requests fail) while the cheap fallbacks
    # (gpt-4o-mini, claude-3-5-haiku-latest, everything else) never do, so fallback
    # routing has somewhere to go.
    "flaky": FaultProfile(
        rules=[
            *_flaky_rules("gpt-4o"),
            *_flaky_rules("claude-sonnet-4-5"),
            *_flaky_rules("claude-sonnet-4-5-20250929"),
        ]
    ),
    # Every model, every kind except the context error; includes 2% hangs, so clients
    # need timeouts.
    "chaos": FaultProfile(
        rules=[
            FaultRule(kind=FaultKind.RATE_LIMIT, rate=0.10, retry_after_s=1.0),
            FaultRule(kind=FaultKind.SERVER_ERROR, rate=0.05),
            FaultRule(kind=FaultKind.OVERLOADED, rate=0.05),
            FaultRule(kind=FaultKind.STREAM_RESET, rate=0.05),
            FaultRule(kind=FaultKind.HANG, rate=0.02),
            FaultRule(kind=FaultKind.CONTENT_POLICY, rate=0.01),
        ]
    ),
    # Half of all requests get a 429 with Retry-After 2s: exercises backoff and budgets.
    "rate-limited": FaultProfile(
        rules=[FaultRule(kind=FaultKind.RATE_LIMIT, rate=0.5, retry_after_s=2.0)]
    ),
}


def effective_rules(rules: list[FaultRule], model: str) -> list[FaultRule]:
    """The rules that apply to ``model``: a rule naming the model replaces a ``*`` rule of
    the same kind, a later rule replaces an earlier one for the same model and kind; ordered
    by kind so the draw does not depend on insertion order."""
    by_kind: dict[FaultKind, FaultRule] = {}
    for rule in rules:
        if rule.model == ANY_MODEL:
            by_kind[rule.kind] = rule
    for rule in rules:
        if rule.model == model:
            by_kind[rule.kind] = rule
    return [by_kind[k] for k in FaultKind if k in by_kind and by_kind[k].rate > 0]


def draw(rules: list[FaultRule], seed: int, model: str, index: int) -> Fault | None:
    """The probabilistic fate of request ``index`` to ``model``: one uniform draw from
    (seed, model, index) walked through the cumulative rates, so each kind fires with
    exactly its rate (rates summing past 1 are cut off at 1)."""
    applicable = effective_rules(rules, model)
    if not applicable:
        return None
    u = unit_interval("fault", seed, model, index)
    cumulative = 0.0
    for rule in applicable:
        cumulative += rule.rate
        if u < cumulative:
            return Fault(
                kind=rule.kind,
                source="rule",
                retry_after_s=rule.retry_after_s,
                after_chunks=rule.after_chunks,
                hang_s=rule.hang_s,
            )
    return None


class FaultPlan:
    """Mutable fault state: the rules and the scripted queues. Not thread-safe by itself."""

    def __init__(self, profile: FaultProfile | None = None) -> None:
        self.rules: list[FaultRule] = []
        self.queues: dict[str, deque[ScriptedFault]] = {}
        if profile is not None:
            self.apply(profile)

    def apply(self, profile: FaultProfile) -> None:
        """Replace the rules with the profile's and queue its scripted faults."""
        self.rules = list(profile.rules)
        for item in profile.scripted:
            self.add_scripted(item)

    def add_scripted(self, item: ScriptedFault) -> None:
        self.queues.setdefault(item.model, deque()).append(item)

    def clear(self) -> None:
        self.rules = []
        self.queues.clear()

    def next_fault(self, seed: int, model: str, index: int) -> Fault | None:
        for key in (model, ANY_MODEL):
            queue = self.queues.get(key)
            if queue:
                head = queue[0]
                if head.count <= 1:
                    queue.popleft()
                else:
                    queue[0] = head.model_copy(update={"count": head.count - 1})
                return Fault(
                    kind=head.kind,
                    source="scripted",
                    retry_after_s=head.retry_after_s,
                    after_chunks=head.after_chunks,
                    hang_s=head.hang_s,
                )
        return draw(self.rules, seed, model, index)

    def snapshot(self) -> FaultProfile:
        return FaultProfile(
            rules=list(self.rules),
            scripted=[item for queue in self.queues.values() for item in queue],
        )
