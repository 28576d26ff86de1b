"""The sessions-and-API part of ``keel demo``: a chat turn streamed through the official openai
SDK pointed at keel, the session's report, and an async job answered at once then polled.

The API is served in-process on an ephemeral port for the demo; ``keel api`` serves it for real.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx2
import openai
from temporalio.client import Client

from infra.session_reports import session_report
from infra.settings import KeelSettings
from starters.chat import print_session
from starters.output import console


async def demo_streaming_chat_and_job(settings: KeelSettings, client: Client | None = None) -> None:
    from api.server import running_api  # the web stack loads only for the demo

    async with running_api(settings, client) as url:
        session_id = f"demo-{uuid.uuid4().hex[:6]}"
        console.print(f"[bold]keel api[/] (in-process for the demo) at {url}")
        console.print(
            f'[dim]openai.AsyncOpenAI(base_url="{url}/v1") · X-Keel-Session-Id: {session_id}[/]'
        )
        sdk = openai.AsyncOpenAI(
            base_url=f"{url}/v1",
            api_key="demo",
            default_headers={"X-Keel-Session-Id": session_id},
        )
        stream = await sdk.chat.completions.create(
            model="keel",
            messages=[{"role": "user", "content": "Explain durable execution in two sentences."}],
            stream=True,
        )
        console.print("[bold cyan]streamed>[/] ", end="")
        async for chunk in stream:
            for choice in chunk.choices:
                console.print(choice.delta.content or "", end="", markup=False, highlight=False)
        console.print()
        report = await session_report(session_id)
        if report is not None:
            print_session(report, show_text=False)

        async with httpx2.AsyncClient(base_url=url, timeout=30) as http:
            created = await http.post(
                "/v1/jobs",
                json={"kind": "ask", "input": {"prompt": "Name three uses of a queue."}},
            )
            job = created.json()
            console.print(
                f"[bold]POST /v1/jobs[/] → {created.status_code} at once: job {job['id']} "
                f"({job['status']})"
            )
            for _ in range(150):
                job = (await http.get(f"/v1/jobs/{job['id']}")).json()
                if job["status"] != "running":
                    break
                await asyncio.sleep(0.2)
            console.print(f"[bold]GET /v1/jobs/{job['id']}[/] → {job['status']}")
            answer = ((job.get("result") or {}).get("answer") or {}).get("text")
            console.print(answer or job.get("error") or "", markup=False, highlight=False)
    console.print(
        "[dim]for real: keel api, then "
        "curl -N localhost:8300/v1/chat/completions -H 'Content-Type: application/json' "
        '-d \'{"model":"keel","stream":true,"messages":[{"role":"user",'
        '"content":"Hello"}]}\'[/]'
    )
