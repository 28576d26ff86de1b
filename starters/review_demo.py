"""The human-oversight part of ``keel demo``: a document review that pauses for approval, is
approved through the CLI exactly as a reviewer would, and shows its audit trail."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import select

from contracts.approvals import GateStatus
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import Approval
from starters.audit import show_audit
from starters.output import console
from starters.review import approve_command

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vendor-contract.md"
REVIEWER, ROLE = "demo-editor", "editor"


def run_keel(*arguments: str) -> None:
    """Run a `keel` command as a person would type it, showing the command and its output."""
    console.print(f"[bold cyan]$ keel {' '.join(arguments)}[/]")
    subprocess.run([str(Path(sys.executable).with_name("keel")), *arguments], check=True)


async def wait_for_pending_gate(workflow_id: str, timeout: float = 120.0) -> Approval:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        async with session_factory()() as session:
            gate = (
                await session.execute(
                    select(Approval).where(
                        Approval.workflow_id == workflow_id,
                        Approval.status == GateStatus.PENDING.value,
                    )
                )
            ).scalar_one_or_none()
        if gate is not None:
            return gate
        await asyncio.sleep(0.5)
    raise TimeoutError(f"review {workflow_id} did not reach its approval gate in {timeout:.0f}s")


async def demo_review(settings: KeelSettings) -> str:
    workflow_id = f"demo-review-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(run_keel, "reviewers", "add", REVIEWER, "--role", ROLE)
    await asyncio.to_thread(
        run_keel, "review", "start", str(EXAMPLE), "--id", workflow_id, "--approval", "always"
    )
    gate = await wait_for_pending_gate(workflow_id)
    console.print(
        f"[yellow]⏸ {workflow_id} waits at gate '{gate.gate}' for a reviewer with role "
        f"'{gate.required_role}'.[/] To approve: [bold]{approve_command(workflow_id)}[/]"
    )
    await asyncio.to_thread(
        run_keel,
        "approve",
        workflow_id,
        "--reviewer",
        REVIEWER,
        "--comment",
        "terms match the brief",
        "--wait",
    )
    await show_audit(workflow_id)
    return workflow_id
