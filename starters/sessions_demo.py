"""The sessions-and-API part of ``keel demo``: a chat turn streamed through the official openai
SDK pointed at keel, the session's report, and an async job answered at once then polled.

The API is served in-process on an ephemeral port for the demo; ``keel api`` serves it for real.
Every API request needs a token: the demo creates a client token for an hour and revokes it when
done (both audited under ``keel audit keel/tokens``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx2
from temporalio.client import Client

from infra.database import session_factory
from infra.settings import KeelSettings
from services.api_tokens import IssuedToken, TokenRole, create_token, revoke_token
from services.session_reports import session_report
from starters.chat import print_session
from starters.output import console


@asynccontextmanager
async def demo_token() -> AsyncIterator[IssuedToken]:
    """A client token of tenant ``default`` for the demo's requests, revoked afterwards."""
    async with session_factory().begin() as session:
        token = await create_token(
            session,
            tenant="default",
            role=TokenRole.CLIENT,
            created_by="keel demo",
            description="keel demo (revoked when the demo ends)",
            expires_in=timedelta(hours=1),
        )
    try:
        yield token
    finally:
        async with session_factory().begin() as session:
            await revoke_token(session, token.id, "keel demo")


async def demo_streaming_chat_and_job(settings: KeelSettings, client: Client | None = None) -> None:
    from api.server import running_api  # the web stack loads only for the demo

    async with running_api(settings, client) as url, demo_token() as token:
        session_id = f"demo-{uuid.uuid4().hex[:6]}"
        console.print(f"[bold]keel api[/] (in-process for the demo) at {url}")
        console.print(
            f"[dim]API token {token.id} (client, tenant default) created for the demo: "
            "keel token create makes your own[/]"
        )
        console.print(
            f'[dim]openai.AsyncOpenAI(base_url="{url}/v1", api_key=<token>) · '
            f"X-Keel-Session-Id: {session_id}[/]"
        )
        # Imported here: the openai SDK takes ~0.4 s to import, and every `keel` command pays
        # for what the CLI module imports.
        import openai

        sdk = openai.AsyncOpenAI(
            base_url=f"{url}/v1",
            api_key=token.secret,
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

        async with httpx2.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {token.secret}"}
        ) as http:
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
        "[dim]for real: KEEL_TOKEN=$(keel token create --tenant default --role client), "
        "keel api, then curl -N localhost:8300/v1/chat/completions "
        "-H \"Authorization: Bearer $KEEL_TOKEN\" -H 'Content-Type: application/json' "
        '-d \'{"model":"keel","stream":true,"messages":[{"role":"user",'
        '"content":"Hello"}]}\'[/]'
    )
