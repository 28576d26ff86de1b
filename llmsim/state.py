"""The simulator's mutable state: live config, fault plan, canned responses, counters, stats.

Admin calls may come from another thread (the in-process server's owner), so everything
here is guarded by one lock and nothing awaits while holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from llmsim.catalog import ModelSpec, build_catalog
from llmsim.config import CannedResponse, SimConfig
from llmsim.faults import PROFILES, Fault, FaultKind, FaultPlan, FaultRule, ScriptedFault

PROMPT_CACHE_ENTRIES = 20_000
"""Bound on remembered prompt prefixes, so a long benchmark cannot grow memory forever."""
REQUEST_LOG_ENTRIES = 10_000
"""Bound on the request log (the most recent requests are kept)."""


@dataclass(frozen=True)
class RequestRecord:
    """One request to a known model as the simulator saw it: what a client's retry timing is
    judged by (a retry is on time when it arrives after the 429's Retry-After)."""

    at: float
    """Wall-clock arrival time (``time.time()``)."""
    model: str
    conversation: str
    """Hash of the request's messages: every attempt of one call carries the same one."""
    fault: str | None
    retry_after_s: float | None
    """The Retry-After sent with a rate_limit fault."""


@dataclass
class ModelStats:
    requests: int = 0
    streamed: int = 0
    non_streamed: int = 0
    successes: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: ModelStats) -> None:
        self.requests += other.requests
        self.streamed += other.streamed
        self.non_streamed += other.non_streamed
        self.successes += other.successes
        self.faults.update(other.faults)
        self.errors.update(other.errors)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "streamed": self.streamed,
            "non_streamed": self.non_streamed,
            "successes": self.successes,
            "faults": dict(sorted(self.faults.items())),
            "errors": dict(sorted(self.errors.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self._lock = threading.Lock()
        self.config = config.model_copy(deep=True)
        self.catalog: dict[str, ModelSpec] = build_catalog(self.config.models)
        self._startup_faults = self.config.startup_faults()
        self._startup_canned = [c.model_copy() for c in self.config.canned_responses]
        self.faults = FaultPlan(self._startup_faults)
        self.canned: list[CannedResponse] = list(self._startup_canned)
        self._counters: dict[str, int] = {}
        self._stats: dict[str, ModelStats] = {}
        self._prompt_cache: OrderedDict[str, None] = OrderedDict()
        self._request_log: deque[RequestRecord] = deque(maxlen=REQUEST_LOG_ENTRIES)
        self.started_at = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        # Imported here: the batch APIs answer with the pipeline, which imports this module.
        from llmsim.batches import BatchStore

        self.batches = BatchStore(self)

    # --- lifecycle --------------------------------------------------------------------------
    def bind_loop(self) -> None:
        """Called on the server's loop at startup: waits and sleeps hang off this loop."""
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()

    def begin_shutdown(self) -> None:
        """Wake every sleeping and hanging request so shutdown is not held up (any thread)."""
        loop, closing = self._loop, self._closing
        if loop is None or closing is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(closing.set)

    @property
    def closing(self) -> bool:
        return self._closing is not None and self._closing.is_set()

    async def wait_closing(self) -> None:
        if self._closing is None:
            self._closing = asyncio.Event()
        await self._closing.wait()

    async def sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server shuts down; skips the loop at 0."""
        if seconds <= 0:
            return
        if self._closing is None:
            await asyncio.sleep(seconds)
            return
        if self._closing.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # --- request accounting -----------------------------------------------------------------
    def _model_stats(self, model: str) -> ModelStats:
        stats = self._stats.get(model)
        if stats is None:
            stats = self._stats[model] = ModelStats()
        return stats

    def admit(self, model: str, stream: bool, conversation: str = "") -> Fault | None:
        """Count a request to a known model, decide its fault, if any, and log it."""
        arrived = time.time()
        with self._lock:
            index = self._counters.get(model, 0)
            self._counters[model] = index + 1
            stats = self._model_stats(model)
            stats.requests += 1
            if stream:
                stats.streamed += 1
            else:
                stats.non_streamed += 1
            fault = self.faults.next_fault(self.config.seed, model, index)
            if fault is not None:
                stats.faults[fault.kind.value] += 1
            self._request_log.append(
                RequestRecord(
                    at=arrived,
                    model=model,
                    conversation=conversation,
                    fault=fault.kind.value if fault is not None else None,
                    retry_after_s=fault.retry_after_s
                    if fault is not None and fault.kind is FaultKind.RATE_LIMIT
                    else None,
                )
            )
            return fault

    def requests(self) -> list[RequestRecord]:
        """The logged requests, oldest first (the last ``REQUEST_LOG_ENTRIES``)."""
        with self._lock:
            return list(self._request_log)

    def record_rejected(self, model: str, reason: str, stream: bool, admitted: bool) -> None:
        """A request answered with an error that is not an injected fault."""
        with self._lock:
            stats = self._model_stats(model)
            if not admitted:
                stats.requests += 1
                if stream:
                    stats.streamed += 1
                else:
                    stats.non_streamed += 1
            stats.errors[reason] += 1

    def record_success(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            stats = self._model_stats(model)
            stats.successes += 1
            stats.prompt_tokens += prompt_tokens
            stats.completion_tokens += completion_tokens

    def find_canned(self, model: str, last_user_text: str) -> str | None:
        with self._lock:
            for i, canned in enumerate(self.canned):
                if canned.model not in (None, model) or canned.match not in last_user_text:
                    continue
                if canned.times is not None:
                    if canned.times <= 1:
                        del self.canned[i]
                    else:
                        self.canned[i] = canned.model_copy(update={"times": canned.times - 1})
                return canned.content
            return None

    def prompt_cache(
        self, model: str, prefixes: list[tuple[str, int]], min_tokens: int
    ) -> tuple[int, int]:
        """Look up, then remember, prompt prefixes given as (content hash, tokens).

        Returns (tokens of the longest prefix seen before, tokens of the longest prefix).
        Prefixes shorter than ``min_tokens`` are never cached, like the real providers.
        """
        if not self.config.prompt_cache:
            return 0, 0
        eligible = [
            (f"{model}\x1f{key}", tokens) for key, tokens in prefixes if tokens >= min_tokens
        ]
        if not eligible:
            return 0, 0
        with self._lock:
            hit = max((t for k, t in eligible if k in self._prompt_cache), default=0)
            for key, _ in eligible:
                self._prompt_cache[key] = None
                self._prompt_cache.move_to_end(key)
            while len(self._prompt_cache) > PROMPT_CACHE_ENTRIES:
                self._prompt_cache.popitem(last=False)
        return hit, max(t for _, t in eligible)

    # --- admin ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            totals = ModelStats()
            models = {}
            for name in sorted(self._stats):
                totals.add(self._stats[name])
                models[name] = self._stats[name].as_dict()
            return {
                "models": models,
                "totals": totals.as_dict(),
                "uptime_s": round(time.time() - self.started_at, 3),
            }

    def faults_view(self) -> dict[str, Any]:
        with self._lock:
            return self.faults.snapshot().model_dump(mode="json")

    def add_faults(
        self,
        scripted: list[ScriptedFault] | None = None,
        rules: list[FaultRule] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """Queue scripted faults; replace the rules with ``rules`` or a named profile's."""
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
        with self._lock:
            if profile is not None:
                self.faults.apply(PROFILES[profile])
            if rules is not None:
                base = PROFILES[profile].rules if profile is not None else []
                self.faults.rules = [*base, *rules]
            for item in scripted or []:
                self.faults.add_scripted(item)
        return self.faults_view()

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def add_canned(self, canned: CannedResponse) -> None:
        with self._lock:
            self.canned.append(canned)

    def clear_canned(self) -> None:
        with self._lock:
            self.canned.clear()

    def canned_view(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.model_dump() for c in self.canned]

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Apply live config changes (validated by SimConfig); returns the live settings."""
        with self._lock:
            merged = self.config.model_dump()
            merged.update(changes)
            self.config = SimConfig.model_validate(merged)
        return self.config_view()

    def config_view(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "seed": cfg.seed,
            "latency_scale": cfg.latency_scale,
            "fixed_latency_s": cfg.fixed_latency_s,
            "min_output_tokens": cfg.min_output_tokens,
            "max_output_tokens": cfg.max_output_tokens,
            "stream_chunk_tokens": cfg.stream_chunk_tokens,
            "prompt_cache": cfg.prompt_cache,
            "batch": cfg.batch.model_dump(),
        }

    def reset(self) -> None:
        """Back to the start: counters, stats and prompt cache cleared; faults and canned
        responses as configured at startup. Live config (seed, latency) is kept."""
        with self._lock:
            self._counters.clear()
            self._stats.clear()
            self._request_log.clear()
            self._prompt_cache.clear()
            self.faults = FaultPlan(self._startup_faults)
            self.canned = [c.model_copy() for c in self._startup_canned]
        self.batches.reset()
