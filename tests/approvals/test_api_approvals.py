"""Approvals over HTTP, end to end: a DocumentReview on the dev server pauses at its gate, and a
reviewer's token decides it through `keel api`; the reviewer is the token's, the tenant is the
token's, and every refusal is answered with the gate's reason and recorded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.approvals import add_reviewer, remove_reviewer
from api.server import running_api
from contracts.approvals import ApprovalMode, ReviewPolicy
from infra.database import session_factory
from infra.settings import KeelSettings
from llmsim import SimServer
from services.api_tokens import TokenRole
from tests.api.tokens import http_client, issue_token
from tests.approvals.records import gate_events, pending_gate, seed_reviewers
from tests.approvals.reviews import published, start_review
from tests.helpers import KeelCli, audit_events
from workflows.document_review import ReviewOutput

EXAMPLES = Path(__file__).parents[2] / "examples"

ALWAYS = ReviewPolicy(mode=ApprovalMode.ALWAYS)


@pytest.fixture
async def keel_url(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> AsyncIterator[str]:
    async with running_api(keel_settings, client) as url:
        yield url


async def test_a_reviewer_token_approves_a_gated_review_and_the_trail_names_the_reviewer(
    client: Client, keel_settings: KeelSettings, keel_url: str
) -> None:
    await seed_reviewers(alice="editor")
    alice = await issue_token(tenant="acme", role=TokenRole.REVIEWER, reviewer="alice")
    handle = await start_review(client, keel_settings, ALWAYS, tenant="acme")
    gate = await pending_gate(handle.id)

    async with http_client(keel_url, alice) as http:
        queue = (await http.get("/v1/approvals")).json()
        assert [(g["workflow_id"], g["gate"]) for g in queue["data"]] == [(handle.id, "publish")]
        (pending,) = queue["data"]
        assert pending["draft"] == gate.draft and pending["role"] == "editor"
        assert pending["approvals"] == [] and pending["approvals_required"] == 1

        approved = await http.post(
            f"/v1/approvals/{handle.id}/approve", json={"comment": "ship it", "gate": "publish"}
        )
        assert approved.status_code == 200, approved.text
        receipt = approved.json()
        assert receipt["reviewer"] == "alice" and receipt["counted"] is True
        assert receipt["status"] == "approved" and receipt["gate"] == "publish"
        assert "approved by alice" in receipt["message"]

        result = await handle.result()
        assert result.status == "published" and result.approved_by == ["alice"]
        document = await published(handle.id)
        assert document is not None and document.content == gate.draft
        assert (await http.get("/v1/approvals")).json()["data"] == []

        # The same approval again (a client retry) is answered, not applied twice.
        repeat = await http.post(f"/v1/approvals/{handle.id}/approve", json={})
        assert repeat.status_code == 200 and repeat.json()["counted"] is False
    (decision,) = [e for e in await audit_events(handle.id) if e.event_type == "approval.approved"]
    assert decision.actor == "alice" and decision.payload["comment"] == "ship it"
    assert decision.tenant == "acme"


async def test_refusals_are_the_gates_words_and_are_recorded(
    client: Client, keel_settings: KeelSettings, keel_url: str
) -> None:
    await seed_reviewers(alice="editor", mallory="finance")
    mallory = await issue_token(tenant="acme", role=TokenRole.REVIEWER, reviewer="mallory")
    alice = await issue_token(tenant="acme", role=TokenRole.REVIEWER, reviewer="alice")
    caller = await issue_token(tenant="acme", role=TokenRole.CLIENT)
    handle = await start_review(client, keel_settings, ALWAYS, tenant="acme")
    await pending_gate(handle.id)

    async with (
        http_client(keel_url, mallory) as as_mallory,
        http_client(keel_url, alice) as as_alice,
        http_client(keel_url, caller) as as_client,
    ):
        unauthorized = await as_mallory.post(f"/v1/approvals/{handle.id}/approve", json={})
        assert unauthorized.status_code == 403, unauthorized.text
        error = unauthorized.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "reviewer_not_authorized"
        assert "reviewer 'mallory' is not authorized for gate 'publish'" in error["message"]
        assert "needs role editor" in error["message"]

        # A client token may not decide, nor claim to be someone in the body.
        forbidden = await as_client.post(f"/v1/approvals/{handle.id}/approve", json={})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "insufficient_role"
        impostor = await as_mallory.post(
            f"/v1/approvals/{handle.id}/approve", json={"reviewer": "alice"}
        )
        assert impostor.status_code == 400
        assert "leave `reviewer` out" in impostor.json()["error"]["message"]

        # A reject sends the draft back for a revision; a decision for the old gate is refused.
        rejected = await as_alice.post(
            f"/v1/approvals/{handle.id}/reject",
            json={"reason": "cite the source", "gate": "publish"},
        )
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
        await pending_gate(handle.id, "publish-revision-1")
        stale = await as_alice.post(f"/v1/approvals/{handle.id}/approve", json={"gate": "publish"})
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "gate_already_decided"
        assert "gate 'publish' was already decided" in stale.json()["error"]["message"]
        edited = await as_alice.post(
            f"/v1/approvals/{handle.id}/edit",
            json={"text": "Q3: revenue +12% (source: board minutes).", "comment": "tightened"},
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["status"] == "edited"

    result = await handle.result()
    assert result.status == "published"
    refusals = [e for e in await audit_events(handle.id) if e.event_type == "approval.refused"]
    assert sorted((e.actor, e.payload["refusal"], e.payload["via"]) for e in refusals) == [
        ("alice", "GateAlreadyDecided", "api"),
        ("mallory", "ReviewerNotAuthorized", "api"),
    ]
    by_mallory = next(e for e in refusals if e.actor == "mallory")
    assert by_mallory.payload["token_id"] == mallory.id and by_mallory.tenant == "acme"
    decided = [e.actor for e in await audit_events(handle.id) if e.event_type == "approval.edited"]
    assert decided == ["alice"]
    assert "mallory" not in [
        e.actor
        for e in await audit_events(handle.id)
        if e.event_type.endswith(("approved", "edited"))
    ]


async def test_another_tenants_reviewer_cannot_see_or_decide_the_gate(
    client: Client, keel_settings: KeelSettings, keel_url: str
) -> None:
    await seed_reviewers(alice="editor")
    outsider = await issue_token(tenant="globex", role=TokenRole.REVIEWER, reviewer="alice")
    handle = await start_review(client, keel_settings, ALWAYS, tenant="acme")
    await pending_gate(handle.id)

    async with http_client(keel_url, outsider) as http:
        assert (await http.get("/v1/approvals")).json()["data"] == []
        foreign = await http.post(f"/v1/approvals/{handle.id}/approve", json={})
        absent = await http.post("/v1/approvals/review-never-was/approve", json={})
    assert foreign.status_code == absent.status_code == 404
    # Word for word the answer for a workflow that does not exist: nothing leaks.
    assert foreign.json()["error"]["message"].replace(handle.id, "ID") == absent.json()["error"][
        "message"
    ].replace("review-never-was", "ID")
    assert (await pending_gate(handle.id)).decided_by == []
    assert await gate_events(handle.id) == ["approval.requested"]
    await handle.cancel()


@pytest.mark.slow  # a real `keel` process
async def test_a_reviewer_removed_after_the_gate_opened_is_refused_by_cli_and_api(
    client: Client, keel_settings: KeelSettings, keel_url: str
) -> None:
    """A removal takes effect at once, not at the gate's next reminder or escalation: the
    senders check the reviewers table as it is now (and so does the gate, for every decision)."""
    await seed_reviewers(alice="editor", bob="editor", carol="editor")
    bob = await issue_token(role=TokenRole.REVIEWER, reviewer="bob")
    handle = await start_review(client, keel_settings, ALWAYS)
    gate = await pending_gate(handle.id)
    async with session_factory().begin() as session:
        for name in ("alice", "bob"):
            assert await remove_reviewer(session, name, None, removed_by="security")

    keel = KeelCli(client, keel_settings)
    by_cli = await keel("approve", handle.id, "--reviewer", "alice")
    async with http_client(keel_url, bob) as http:
        by_api = await http.post(f"/v1/approvals/{handle.id}/approve", json={})
    assert by_cli.code == 5, by_cli.text
    assert "reviewer 'alice' is not authorized for gate 'publish'" in by_cli.err
    assert "'alice' is not a known reviewer" in by_cli.err
    assert by_api.status_code == 403
    assert "reviewer 'bob' is not authorized" in by_api.json()["error"]["message"]
    assert (await pending_gate(handle.id)).decided_by == []
    refusals = [
        (e.actor, e.payload["via"])
        for e in await audit_events(handle.id)
        if e.event_type == "approval.refused"
    ]
    assert sorted(refusals) == [("alice", "cli"), ("bob", "api")]

    # Someone still on the table decides as usual.
    approved = await keel("approve", handle.id, "--reviewer", "carol")
    assert approved.code == 0, approved.text
    result = await handle.result()
    assert result.approved_by == ["carol"] and gate.draft


@pytest.mark.slow  # real `keel` processes
async def test_a_reviewer_added_after_the_gate_opened_approves_through_the_cli(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    """Start a review, add the reviewer while its gate waits, approve: the gate read its roster
    when it opened (nobody held the role then); it judges carol as the table is now."""
    keel = KeelCli(client, keel_settings)
    workflow_id = f"r1-{uuid.uuid4().hex[:8]}"
    started = await keel(
        "review", "start", str(EXAMPLES / "vendor-contract.md"), "--approval", "always",
        "--id", workflow_id,
    )  # fmt: skip
    assert started.code == 0, started.text
    await pending_gate(workflow_id)
    added = await keel("reviewers", "add", "carol", "--role", "editor")
    assert added.code == 0, added.text

    approved = await keel("approve", workflow_id, "--reviewer", "carol")
    assert approved.code == 0, approved.text
    assert "gate 'publish' approved by carol" in approved.out
    handle = client.get_workflow_handle(workflow_id, result_type=ReviewOutput)
    result = await handle.result()
    assert result.status == "published" and result.approved_by == ["carol"]
    assert not [e for e in await audit_events(workflow_id) if e.event_type == "approval.refused"]


async def test_a_reviewer_given_the_role_after_the_gate_opened_approves_through_the_api(
    client: Client, keel_settings: KeelSettings, keel_url: str
) -> None:
    await seed_reviewers(dana="finance")
    dana = await issue_token(role=TokenRole.REVIEWER, reviewer="dana")
    handle = await start_review(client, keel_settings, ALWAYS)
    await pending_gate(handle.id)
    async with http_client(keel_url, dana) as http:
        before = await http.post(f"/v1/approvals/{handle.id}/approve", json={})
        assert before.status_code == 403, before.text
        assert "reviewer 'dana' is not authorized" in before.json()["error"]["message"]
        async with session_factory().begin() as session:
            assert await add_reviewer(session, "dana", "editor", added_by="ops")
        after = await http.post(f"/v1/approvals/{handle.id}/approve", json={})
    assert after.status_code == 200, after.text
    assert after.json()["counted"] is True and after.json()["status"] == "approved"
    result = await handle.result()
    assert result.status == "published" and result.approved_by == ["dana"]


async def test_an_unknown_workflow_and_a_bad_body_are_clear_errors(
    keel_url: str, database_url: str
) -> None:
    await seed_reviewers(alice="editor")
    alice = await issue_token(role=TokenRole.REVIEWER, reviewer="alice")
    async with http_client(keel_url, alice) as http:
        missing = await http.post("/v1/approvals/no-such-review/approve", json={})
        no_reason = await http.post("/v1/approvals/no-such-review/reject", json={})
        blank = await http.post("/v1/approvals/no-such-review/reject", json={"reason": "  "})
    assert missing.status_code == 404
    assert (
        missing.json()["error"]["message"] == "no workflow 'no-such-review' in this token's tenant"
    )
    assert no_reason.status_code == 400 and no_reason.json()["error"]["param"] == "reason"
    assert blank.status_code == 400 and "say what must change" in blank.json()["error"]["message"]
