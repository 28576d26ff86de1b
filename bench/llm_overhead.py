"""What keel adds to an LLM call: keel (workflow → activity → ledger) vs the same SDK call made
directly, both against the simulator at zero latency, interleaved in one run.

Run: ``.venv/bin/python bench/llm_overhead.py [--calls 500] [--warmup 20]``

Prints p50/p99 of each path and the added latency, and with the first model's circuit breaker
open, the time from workflow start to the fallback model's activity being scheduled.
Needs a Postgres (``KEEL_TEST_DATABASE_URL`` / ``DATABASE_URL``, default 127.0.0.1:5432); starts
its own Temporal dev server, simulator and worker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import openai
from sqlalchemy.dialects.postgresql import insert
from temporalio.api.enums.v1 import EventType

from devstack.ephemeral import EphemeralStack, ephemeral_stack
from infra.database import session_factory
from infra.tables import CircuitBreaker
from services.asks import start_ask
from workflows.ask import AskInput

MODEL = "gpt-4o-mini"
BROKEN = "gpt-4o"
PROMPT = "Give me one sentence about durable execution."
MAX_TOKENS = 64


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def direct_call(sdk: openai.AsyncOpenAI) -> None:
    # The same request keel makes: streamed, with usage in the last chunk.
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_completion_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for _ in stream:
        pass


async def keel_call(stack: EphemeralStack, models: list[str]) -> str:
    """An ask as keel starts one (services/asks.start_ask), from this process, which also runs
    the interactive worker: the start is eager. A start from a process without a worker (the
    `keel ask` CLI) is an ordinary one, ≈ 3 ms more (infra/temporal_tuning.py)."""
    workflow_id = f"bench-{uuid.uuid4().hex[:12]}"
    handle = await start_ask(
        stack.client,
        stack.settings,
        AskInput(prompt=PROMPT, models=models, max_tokens=MAX_TOKENS),
        workflow_id,
    )
    await handle.result()
    return workflow_id


async def time_to_model(stack: EphemeralStack, workflow_id: str, model: str) -> float:
    """Workflow start → the activity for ``model`` scheduled, from the server's own timestamps."""
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    codec = stack.client.data_converter.payload_codec  # payloads in history are encrypted
    started = history.events[0].event_time.ToDatetime()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            payload = attributes.input.payloads[0]
            if codec is not None:
                (payload,) = await codec.decode([payload])
            if model.encode() in payload.data:
                scheduled = event.event_time.ToDatetime()
                return (scheduled - started).total_seconds() * 1000
    raise RuntimeError(f"{workflow_id}: no activity for {model}")


async def open_breaker(model: str) -> None:
    now = datetime.now(UTC)
    async with session_factory().begin() as session:
        await session.execute(
            insert(CircuitBreaker)
            .values(provider="openai", model=model, state="open", failures=99, opened_at=now)
            .on_conflict_do_nothing()
        )


def report(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = statistics.median(samples), percentile(samples, 99)
    print(f"{name:<34} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   (n={len(samples)})")
    return p50, p99


async def main(calls: int, warmup: int) -> None:
    # A long cool-down keeps the broken model's breaker open for the whole run.
    async with ephemeral_stack(extra_env={"KEEL_BREAKER_COOLDOWN_SECONDS": "3600"}) as stack:
        sdk = openai.AsyncOpenAI(
            base_url=stack.simulator.openai_base_url, api_key="bench", max_retries=0
        )
        await open_breaker(BROKEN)
        for _ in range(warmup):
            await direct_call(sdk)
            await keel_call(stack, [MODEL])
        direct: list[float] = []
        through_keel: list[float] = []
        to_fallback: list[float] = []
        to_first_model: list[float] = []
        for _ in range(calls):
            direct.append(await timed(lambda: direct_call(sdk)))
            started = time.perf_counter()
            plain_id = await keel_call(stack, [MODEL])
            through_keel.append((time.perf_counter() - started) * 1000)
            fallback_id = await keel_call(stack, [BROKEN, MODEL])
            to_first_model.append(await time_to_model(stack, plain_id, MODEL))
            to_fallback.append(await time_to_model(stack, fallback_id, MODEL))

        print(f"\nLLM call overhead, {calls} interleaved calls each, simulator at zero latency\n")
        direct_p50, direct_p99 = report("direct SDK call (streamed)", direct)
        keel_p50, keel_p99 = report("keel: workflow → activity → ledger", through_keel)
        print(
            f"{'added by keel':<34} p50 {keel_p50 - direct_p50:8.2f} ms   "
            f"p99 {keel_p99 - direct_p99:8.2f} ms   (ratio p50 {keel_p50 / direct_p50:.2f}x)"
        )
        print()
        report("start → first model scheduled", to_first_model)
        fb_p50, _ = report("start → fallback scheduled (open)", to_fallback)
        print(f"{'breaker-open fallback, added':<34} p50 "
              f"{fb_p50 - statistics.median(to_first_model):8.2f} ms")  # fmt: skip
        await sdk.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.warmup))
