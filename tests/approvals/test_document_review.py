"""DocumentReview end to end on the dev server, with Postgres and the LLM simulator: the models'
steps, the gate, decisions made through the real CLI, revisions, publishing and the records."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.approvals import decided_by_humans
from contracts.approvals import (
    ApprovalMode,
    ApproveDecision,
    DecisionReceipt,
    EditDecision,
    RejectDecision,
    ReviewPolicy,
)
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.approvals.records import gate_events, pending_gate, seed_reviewers
from tests.approvals.reviews import DOCUMENT, published, self_check, start_review
from tests.helpers import KeelCli, audit_events
from workflows.document_review import (
    SELF_CHECK_MARKER,
    DocumentReviewWorkflow,
)


@pytest.mark.slow  # many real `keel` processes
async def test_a_review_pauses_for_approval_and_a_reviewer_approves_it_through_the_cli(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    keel = KeelCli(client, keel_settings)
    assert (await keel("reviewers", "add", "alice", "--role", "editor", "--by", "ops")).code == 0
    document = tmp_path / "q3-report.md"
    document.write_text(DOCUMENT)
    workflow_id = f"review-cli-{uuid.uuid4().hex[:8]}"

    started = await keel(
        "review", "start", str(document), "--id", workflow_id, "--approval", "always", "--wait"
    )
    assert started.code == 0, started.text
    assert "waiting for approval gate publish" in started.out
    assert f"keel approve {workflow_id} --reviewer NAME" in started.out
    gate = await pending_gate(workflow_id)
    assert gate.draft and gate.draft in started.out.replace("\n    ", "\n")

    queue, shown = await asyncio.gather(keel("approvals"), keel("show", workflow_id))
    assert queue.code == 0 and workflow_id in queue.out
    assert f"keel approve {workflow_id} --reviewer NAME" in queue.out
    assert shown.code == 0, shown.text
    for expected in (
        "RUNNING",
        "review.drafted",
        "review.checked",
        "cost so far $0.0",
        "waiting for approval of gate publish",
        f"why: {gate.reason_requested}",
    ):
        assert expected in shown.out, (expected, shown.out)

    approved = await keel(
        "approve", workflow_id, "--reviewer", "alice", "--comment", "ship it", "--wait"
    )
    assert approved.code == 0, approved.text
    assert "gate 'publish' approved by alice" in approved.out
    assert "published as document" in approved.out

    result = await client.get_workflow_handle_for(DocumentReviewWorkflow.run, workflow_id).result()
    assert result.status == "published" and result.approved_by == ["alice"]
    assert result.cost_usd is not None and result.cost_usd > 0
    document_row = await published(workflow_id)
    assert document_row is not None and document_row.content == gate.draft
    assert document_row.approval_gate == "publish" and not document_row.flagged

    trail, after = await asyncio.gather(keel("audit", workflow_id), keel("show", workflow_id))
    assert trail.code == 0, trail.text
    events = [e.event_type for e in await audit_events(workflow_id)]
    assert events == [
        "review.started",
        "review.extracted",
        "review.drafted",
        "review.checked",
        "approval.requested",
        "approval.approved",
        "approval.decided",
        "review.published",
    ]
    for event in events:
        assert event in trail.out
    assert "approval gates" in trail.out
    approved_row = next(
        e for e in await audit_events(workflow_id) if e.event_type == "approval.approved"
    )
    assert approved_row.actor == "alice" and approved_row.payload["comment"] == "ship it"
    assert "COMPLETED" in after.out and "gate publish approved by alice" in after.out


@pytest.mark.slow  # many real `keel` processes
async def test_the_cli_names_each_refusal_records_it_and_repeats_are_idempotent(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    await seed_reviewers(alice="editor", bob="editor", mallory="finance")
    keel = KeelCli(client, keel_settings)
    handle = await start_review(client, keel_settings, ReviewPolicy(mode=ApprovalMode.ALWAYS))
    await pending_gate(handle.id)

    # Independent refusals: run side by side (each `keel` process costs seconds of imports).
    unauthorized, stranger, missing = await asyncio.gather(
        keel("approve", handle.id, "--reviewer", "mallory"),
        keel("approve", handle.id, "--reviewer", "eve"),
        keel("approve", "no-such-review", "--reviewer", "alice"),
    )
    assert unauthorized.code == 5
    assert "reviewer 'mallory' is not authorized for gate 'publish'" in unauthorized.err
    assert "mallory holds role finance" in unauthorized.err
    assert stranger.code == 5 and "'eve' is not a known reviewer" in stranger.err
    assert missing.code == 3 and "no such workflow: 'no-such-review'" in missing.err
    refusals = [e for e in await audit_events(handle.id) if e.event_type == "approval.refused"]
    assert sorted((e.actor, e.payload["channel"], e.payload["refusal"]) for e in refusals) == [
        ("eve", "update", "ReviewerNotAuthorized"),
        ("mallory", "update", "ReviewerNotAuthorized"),
    ]
    assert (await pending_gate(handle.id)).decided_by == []

    await handle.execute_update("approve", ApproveDecision(reviewer="alice"))
    result = await handle.result()
    assert result.approved_by == ["alice"]
    repeat, late = await asyncio.gather(
        keel("approve", handle.id, "--reviewer", "alice"),
        keel("reject", handle.id, "--reviewer", "bob", "--reason", "too late"),
    )
    assert repeat.code == 0 and "already recorded: alice approved gate 'publish'" in repeat.out
    assert late.code == 4
    assert f"workflow {handle.id} is not waiting for approval: it is completed" in late.err

    assert [e for e in await gate_events(handle.id) if e == "approval.approved"] == [
        "approval.approved"
    ]


@pytest.mark.slow  # real `keel` processes
async def test_a_rejection_is_revised_with_the_reason_and_the_edit_is_exported(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    await seed_reviewers(alice="editor")
    reason = "state the revenue figure"
    # Only a prompt that carries the reviewer's reason gets this answer.
    simulator.add_canned_response(f"Their reason: {reason}", "Revenue grew 12% in Q3.")
    handle = await start_review(client, keel_settings, ReviewPolicy(mode=ApprovalMode.ALWAYS))
    first = await pending_gate(handle.id)
    await handle.execute_update("reject", RejectDecision(reviewer="alice", reason=reason))

    revision = await pending_gate(handle.id, "publish-revision-1")
    assert revision.draft == "Revenue grew 12% in Q3."
    assert revision.reason_requested == "revision 1 after rejection by alice"
    receipt = await handle.execute_update(
        "edit",
        EditDecision(reviewer="alice", text="Revenue grew 12% to 4.1 million euros in Q3."),
        result_type=DecisionReceipt,
    )
    assert receipt.status == "edited"
    result = await handle.result()
    assert result.status == "published" and result.revisions == 1
    row = await published(handle.id)
    assert row is not None and row.content == "Revenue grew 12% to 4.1 million euros in Q3."

    keel = KeelCli(client, keel_settings)
    export = tmp_path / "pairs.jsonl"
    written = await keel("approvals", "export", "-o", str(export))
    assert written.code == 0 and "wrote 2 reviewed pairs" in written.err
    pairs = [json.loads(line) for line in export.read_text().splitlines()]
    assert [(p["gate"], p["decision"], p["changed"]) for p in pairs] == [
        ("publish", "rejected", False),
        ("publish-revision-1", "edited", True),
    ]
    assert pairs[0]["draft"] == first.draft and pairs[0]["final"] is None
    assert pairs[0]["reviewer_note"] == reason
    assert pairs[1]["draft"] == "Revenue grew 12% in Q3."
    assert pairs[1]["final"] == "Revenue grew 12% to 4.1 million euros in Q3."
    async with session_factory()() as session:  # what `export --changed-only` writes
        assert [g.gate for g in await decided_by_humans(session, changed_only=True)] == [
            "publish-revision-1"
        ]


async def test_a_second_rejection_ends_the_review_unpublished(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    await seed_reviewers(alice="editor")
    handle = await start_review(client, keel_settings, ReviewPolicy(mode=ApprovalMode.ALWAYS))
    for gate in ("publish", "publish-revision-1"):
        await pending_gate(handle.id, gate)
        await handle.execute_update("reject", RejectDecision(reviewer="alice", reason="no"))
    result = await handle.result()
    assert result.status == "rejected" and result.revisions == 1
    assert result.rejection_reason == "no" and await published(handle.id) is None
    assert (await audit_events(handle.id))[-1].event_type == "review.rejected"


async def test_a_confident_clean_draft_is_published_without_a_gate(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    simulator.add_canned_response(SELF_CHECK_MARKER, self_check(0.95))
    handle = await start_review(client, keel_settings, ReviewPolicy(confidence_threshold=0.8))
    result = await handle.result()
    assert result.status == "published" and result.gated_because is None
    assert result.confidence == 0.95 and result.approved_by == []
    events = [e.event_type for e in await audit_events(handle.id)]
    assert "review.auto_approved" in events and not any(e.startswith("approval.") for e in events)


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        (self_check(0.99, ["legal_claim"]), "policy rule: the self-check flagged legal_claim"),
        (self_check(0.42), "low confidence: 0.42 below 0.80"),
        ("this is not JSON", "policy rule: the self-check flagged self_check_unreadable"),
    ],
)
async def test_flags_and_low_confidence_send_the_draft_to_a_person(
    check: str,
    reason: str,
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
) -> None:
    simulator.add_canned_response(SELF_CHECK_MARKER, check)
    handle = await start_review(client, keel_settings, ReviewPolicy(confidence_threshold=0.8))
    gate = await pending_gate(handle.id)
    assert gate.reason_requested == reason
    await handle.cancel()


@pytest.mark.slow  # real `keel` processes
async def test_the_queue_right_after_review_start_says_the_review_is_still_drafting(
    client: Client, keel_settings: KeelSettings, tmp_path: Path
) -> None:
    """No worker takes the review: it stays before its gate, as it is for the seconds after
    `keel review start` while the models draft. The empty queue says so, and where to look."""
    keel = KeelCli(client, keel_settings)
    document = tmp_path / "q3-report.md"
    document.write_text(DOCUMENT)
    workflow_id = f"review-drafting-{uuid.uuid4().hex[:8]}"
    started = await keel("review", "start", str(document), "--id", workflow_id)
    assert started.code == 0, started.text
    handle = client.get_workflow_handle(workflow_id)
    try:
        # Visibility indexes a new run within moments; the command reads it as it stands.
        query = f"WorkflowId = '{workflow_id}' AND KeelKind = 'document_review'"
        for _ in range(100):
            if (await client.count_workflows(query)).count:
                break
            await asyncio.sleep(0.05)
        queue = await keel("approvals")
        assert queue.code == 0, queue.text
        assert "no reviews waiting" in queue.out
        assert "still running, not at a gate yet" in queue.out
        assert f"keel show {workflow_id}" in queue.out
        # Another tenant's queue does not mention it.
        other = await keel("approvals", "--tenant", "someone-else")
        assert other.code == 0 and workflow_id not in other.out, other.text
    finally:
        await handle.terminate("test over")
