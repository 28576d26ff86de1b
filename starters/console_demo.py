"""The reviewer-console part of ``keel demo``: a review left waiting at its gate, a reviewer
token for the demo reviewer, and how to open the console (``keel api`` serves it) and sign in.

The token is printed once, as ``keel token create`` prints it: it is the demo reviewer's sign-in.
It expires with the demo's day (8 hours); ``keel token revoke ID`` ends it sooner.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from infra.database import session_factory
from infra.settings import KeelSettings
from services.api_tokens import IssuedToken, TokenRole, create_token
from starters.output import console
from starters.review_demo import EXAMPLE, REVIEWER, run_keel, wait_for_pending_gate

CONSOLE_TOKEN_LIFETIME = timedelta(hours=8)


def console_url(settings: KeelSettings) -> str:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}/console"


async def demo_reviewer_token(settings: KeelSettings) -> IssuedToken:
    async with session_factory().begin() as session:
        return await create_token(
            session,
            tenant="default",
            role=TokenRole.REVIEWER,
            reviewer=REVIEWER,
            created_by="keel demo",
            description="keel demo: the demo reviewer's console sign-in",
            expires_in=CONSOLE_TOKEN_LIFETIME,
            configured_reviewers=settings.reviewers,
        )


async def demo_console(settings: KeelSettings) -> str:
    """Leave a review waiting for the demo reviewer, and print how to decide it in the console."""
    workflow_id = f"demo-console-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(
        run_keel, "review", "start", str(EXAMPLE), "--id", workflow_id, "--approval", "always"
    )
    gate = await wait_for_pending_gate(workflow_id)
    token = await demo_reviewer_token(settings)
    console.print(
        f"[yellow]⏸ {workflow_id} waits at gate '{gate.gate}' for a reviewer — decide it in the "
        "reviewer console.[/]"
    )
    console.print(
        f"  1. serve the API:  [bold]keel api[/]   (the console is at {console_url(settings)})"
    )
    console.print(f"  2. open [bold]{console_url(settings)}[/] and sign in as {REVIEWER} with this")
    console.print(f"     reviewer token ({token.id}, expires in 8 h; shown once):")
    console.print(f"     [bold]{token.secret}[/]", soft_wrap=True)
    console.print(
        "  [dim]another reviewer: keel reviewers add NAME --role editor && keel token create "
        "--tenant default --role reviewer --reviewer NAME[/]"
    )
    return workflow_id
