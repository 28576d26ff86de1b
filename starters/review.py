"""``keel review start FILE``: a document through DocumentReview (extract → draft → self-check →
approval gate when policy says so → publish), and waiting until it needs a person or is done."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import typer
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.approvals import gates_of
from contracts.approvals import ApprovalMode, GateStatus
from infra.database import dispose_engines, session_factory
from infra.input_limits import InputTooLarge, PromptLimits, UnstorableText, check_prompt
from infra.settings import KeelSettings, get_settings
from infra.tables import Approval, PublishedDocument
from infra.temporal_client import connect
from services.reviews import start_review
from starters.output import console, fail, workflow_link
from workflows.document_review import (
    MAX_DOCUMENT_CHARS,
    DocumentReviewWorkflow,
    ReviewInput,
    ReviewOutput,
)

review_app = typer.Typer(help="Documents reviewed by models and, when policy says so, by people.")

POLL_SECONDS = 0.5


def approve_command(workflow_id: str) -> str:
    return f"keel approve {workflow_id} --reviewer NAME"


def reject_command(workflow_id: str) -> str:
    return f"keel reject {workflow_id} --reviewer NAME --reason TEXT"


def print_waiting_gate(gate: Approval, workflow_id: str) -> None:
    """What a reviewer needs: which gate, why, the text, and the commands."""
    subject = f" · {gate.subject}" if gate.subject else ""
    console.print(f"[bold yellow]waiting for approval[/] gate [bold]{gate.gate}[/]{subject}")
    console.print(f"  why: {gate.reason_requested}", markup=False, highlight=False)
    console.print(
        f"  who: role {gate.required_role} · {len(gate.decided_by)} of "
        f"{gate.approvals_required} approvals"
        + (f" · deadline {gate.deadline_at:%Y-%m-%d %H:%M %Z}" if gate.deadline_at else "")
    )
    text = gate.final if gate.final is not None else gate.draft
    console.print("  [dim]text under review:[/]")
    console.print("    " + (text or "").replace("\n", "\n    "), markup=False, highlight=False)
    console.print(f"  approve: [cyan]{approve_command(workflow_id)}[/]")
    console.print(f"  reject:  [cyan]{reject_command(workflow_id)}[/]")


async def print_review_result(workflow_id: str, result: ReviewOutput) -> None:
    cost = f"${result.cost_usd:.6f}" if result.cost_usd is not None else "unknown"
    if result.status == "rejected":
        console.print(f"[bold red]rejected[/]: {result.rejection_reason}", markup=False)
    else:
        async with session_factory()() as session:
            published = await session.get(PublishedDocument, result.published_id)
        who = ", ".join(result.approved_by) or "policy (no gate needed)"
        console.print(
            f"[bold green]published[/] as document {result.published_id} · approved by {who}"
            + (
                " · [yellow]FLAGGED: approved by the deadline's default action[/]"
                if result.flagged
                else ""
            )
        )
        if published is not None:
            console.print(published.content, markup=False, highlight=False)
    console.print(
        f"[dim]confidence {result.confidence:.2f} · revisions {result.revisions} · cost {cost}"
        f" · trail: keel audit {workflow_id}[/]"
    )


async def wait_for_review(
    client: Client, workflow_id: str, timeout: float, after_gate: str | None = None
) -> None:
    """Return once the workflow has finished, or a gate (other than ``after_gate``) waits."""
    handle: WorkflowHandle[DocumentReviewWorkflow, ReviewOutput] = client.get_workflow_handle(
        workflow_id, result_type=ReviewOutput
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            try:
                result = await handle.result()
            except WorkflowFailureError as error:
                fail(str(error.cause or error), f"see what happened: keel audit {workflow_id}")
            await print_review_result(workflow_id, result)
            return
        async with session_factory()() as session:
            waiting = [
                gate
                for gate in await gates_of(session, workflow_id)
                if gate.status == GateStatus.PENDING
                and gate.gate != after_gate
                and gate.run_id == description.run_id
            ]
        if waiting:
            print_waiting_gate(waiting[-1], workflow_id)
            return
        await asyncio.sleep(POLL_SECONDS)
    fail(
        f"workflow {workflow_id} neither finished nor asked for approval within {timeout:g}s",
        f"is a worker running (keel worker)? follow it with: keel show {workflow_id}",
    )


def _default_id(path: Path) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")[:40] or "document"
    return f"review-{slug}-{uuid.uuid4().hex[:6]}"


async def _start(
    settings: KeelSettings, params: ReviewInput, workflow_id: str, wait: bool, timeout: float
) -> None:
    client = await connect(settings)
    try:
        await start_review(client, settings, params, workflow_id)
    except WorkflowAlreadyStartedError:
        fail(
            f"a workflow with id {workflow_id!r} already exists", f"see it: keel show {workflow_id}"
        )
    console.print(f"[bold]workflow[/] {workflow_id}  {workflow_link(settings, workflow_id)}")
    if not wait:
        console.print(f"follow: [cyan]keel show {workflow_id}[/]")
        return
    await wait_for_review(client, workflow_id, timeout)


@review_app.command("start")
def start(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    workflow_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)."),
    tenant: str = typer.Option("default"),
    approval: ApprovalMode | None = typer.Option(
        None, help="When a person must approve (default: KEEL_REVIEW_POLICY, below_confidence)."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Wait until it is published, rejected, or waiting for approval."
    ),
    timeout: float = typer.Option(300, help="Seconds --wait waits at most."),
) -> None:
    """Review FILE: draft a publishable text from it, ask a person when policy says so."""
    settings = get_settings()
    try:
        document = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{file} is not UTF-8 text", "review plain-text or Markdown documents")
    if not document.strip():
        fail(
            f"{file} is empty", "give a file that holds the document to review; nothing was started"
        )
    try:
        check_prompt([document], PromptLimits.from_settings(settings), str(file))
    except (InputTooLarge, UnstorableText) as error:
        fail(str(error), "split the document, or review its relevant part; nothing was started")
    if len(document) > MAX_DOCUMENT_CHARS:  # the workflow's own cap, whatever the settings say
        fail(
            f"{file} has {len(document):,} characters; a review takes at most "
            f"{MAX_DOCUMENT_CHARS:,}",
            "split the document, or review its relevant part",
        )
    policy = settings.review_policy
    if approval is not None:
        policy = policy.model_copy(update={"mode": approval})
    params = ReviewInput(
        document=document,
        source_name=file.name,
        tenant=tenant,
        policy=policy,
        notify_webhook=settings.review_webhook_url is not None,
    )

    async def run() -> None:
        try:
            await _start(settings, params, workflow_id or _default_id(file), wait, timeout)
        finally:
            await dispose_engines()

    asyncio.run(run())
