"""``keel demo``: keel's main job, end to end, against the running stack (``keel dev up``).

Each part prints what it shows, the workflow ids, and the commands to look closer. The stack is
left running so the runs can be inspected in the Temporal Web UI.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx2
from rich.rule import Rule

from contracts.batch import batch_workflow_id
from infra.database import dispose_engines, session_factory
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import connect
from services.asks import ledger_attempts, start_ask
from starters.agent_demo import demo_tool_agent
from starters.ask import print_answer
from starters.audit import show_audit
from starters.batch import run_demo_batch, run_demo_provider_batch
from starters.console_demo import console_url, demo_console
from starters.output import console, fail, workflow_link
from starters.review_demo import demo_review
from starters.sessions_demo import demo_streaming_chat_and_job
from starters.traffic_demo import demo_cost_and_traffic
from workflows.ask import AskInput


def _section(title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))


async def _script_simulator_faults(
    settings: KeelSettings, scripted: list[dict[str, object]]
) -> None:
    async with httpx2.AsyncClient(base_url=settings.effective_simulator_url, timeout=10) as http:
        response = await http.post("/admin/faults", json={"scripted": scripted})
        response.raise_for_status()


async def _run_ask(settings: KeelSettings, params: AskInput, label: str) -> str:
    client = await connect(settings)
    workflow_id = f"demo-{label}-{uuid.uuid4().hex[:6]}"
    result = await (await start_ask(client, settings, params, workflow_id)).result()
    console.print(f"[bold]workflow[/] {workflow_id}  {workflow_link(settings, workflow_id)}")
    print_answer(result, await ledger_attempts(session_factory(), workflow_id, None))
    return workflow_id


async def _demo() -> None:
    try:
        await _demo_parts(get_settings())
    finally:
        await dispose_engines()


async def _demo_parts(settings: KeelSettings) -> None:
    workflow_ids: list[str] = []

    _section("1. A durable LLM call: a workflow, an activity, a ledger row, an audit trail")
    workflow_ids.append(
        await _run_ask(
            settings,
            AskInput(prompt="In one paragraph: why do LLM prototypes fail in production?"),
            "ask",
        )
    )
    await show_audit(workflow_ids[-1])

    _section("2. When the provider fails: Retry-After honoured, then a fallback model")
    if settings.uses_simulator:
        # gpt-4o answers 429 (retry after 1 s), then refuses the prompt as too long: keel
        # retries the first, and falls back to the next model in the `quality` route for the second.
        await _script_simulator_faults(
            settings,
            [
                {"model": "gpt-4o", "kind": "rate_limit", "count": 1, "retry_after_s": 1.0},
                {"model": "gpt-4o", "kind": "context_window", "count": 1},
            ],
        )
        workflow_ids.append(
            await _run_ask(
                settings,
                AskInput(
                    prompt="Summarise the incident report for the on-call team.", route="quality"
                ),
                "fallback",
            )
        )
        await show_audit(workflow_ids[-1])
    else:
        console.print("[dim]skipped: real providers are configured, so no faults are injected[/]")

    _section("3. Human oversight: a review pauses at an approval gate until a reviewer decides")
    workflow_ids.append(await demo_review(settings))

    _section("4. A batch: JSONL items under a concurrency cap, exactly one result each")
    batch_id = await run_demo_batch(settings)
    workflow_ids.append(batch_workflow_id(batch_id))

    _section("4b. The same through the providers' batch APIs (--via provider): half price")
    if settings.uses_simulator:
        provider_batch = await run_demo_provider_batch(settings)
        workflow_ids.append(batch_workflow_id(provider_batch))
    else:
        console.print(
            "[dim]skipped: real providers answer batches within 24 h; try it with "
            "keel batch start FILE --via provider[/]"
        )

    _section("5. Sessions and the HTTP API: a streamed chat turn and an async job")
    await demo_streaming_chat_and_job(settings)

    _section("6. Cost and traffic: routes, a budget that refuses, spend by model")
    workflow_ids += await demo_cost_and_traffic(settings)

    _section("7. The reviewer console: a review waits for you in the browser")
    workflow_ids.append(await demo_console(settings))

    _section("8. A durable agent: the model calls tools, each tool an activity")
    workflow_ids.append(await demo_tool_agent(settings))

    _section("Done — the stack is still running")
    console.print(f"Temporal Web UI: {settings.web_ui_url}")
    console.print(f"Reviewer console: {console_url(settings)} (after `keel api`; token above)")
    for workflow_id in workflow_ids:
        console.print(f"  {workflow_id}: keel audit {workflow_id}")
    console.print("Stop everything with: make down")


def demo() -> None:
    """Run keel's main job end to end against the running stack and show what it recorded."""
    try:
        asyncio.run(_demo())
    except ConnectionError as error:
        fail(str(error), "start the stack first: keel dev up")
