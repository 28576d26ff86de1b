"""The reviewer console in a real browser (headless Chromium): a reviewer signs in with their
token, works the queue by deadline, and approves, rejects or edits a real DocumentReview on the
dev server; the workflow goes on, and the trail names the reviewer."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from contracts.approvals import ApprovalMode, ApproveDecision, GateRequest, ReviewPolicy
from contracts.tools import ToolAgentInput, ToolInput
from services.approval_client import DecisionSender
from tests.approvals.records import pending_gate, seed_reviewers
from tests.approvals.reviews import published, start_review
from tests.console.conftest import PHONE, ConsoleRig, Page, reviewer_token
from tests.helpers import audit_events
from workflows.tool_agent import ToolAgentWorkflow

pytestmark = pytest.mark.slow

ALWAYS = ReviewPolicy(mode=ApprovalMode.ALWAYS, escalation=[], remind_every=None)


def tab_through(driver: WebDriver, target_id: str, limit: int = 6) -> list[str]:
    """Press Tab until the element ``target_id`` has focus; returns what had focus on the way."""
    seen: list[str] = []
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        active = driver.switch_to.active_element
        if active.get_attribute("id") == target_id:
            return seen
        seen.append(active.text or active.get_attribute("name") or active.tag_name)
    raise AssertionError(f"Tab never reached #{target_id}: {seen}")


def gate(name: str, deadline: timedelta, **fields: object) -> GateRequest:
    return GateRequest.model_validate(
        {
            "gate": name,
            "draft": f"draft of {name}",
            "reason": "policy: every draft is reviewed",
            "role": "editor",
            "subject": f"review of {name}",
            "deadline": deadline,
            **fields,
        }
    )


async def test_sign_in_by_keyboard_then_the_queue_is_sorted_by_deadline_with_countdowns(
    page: Page, console: ConsoleRig, tmp_path: Path
) -> None:
    await seed_reviewers(alice="editor", olga="treasurer")
    alice = await reviewer_token("alice")
    later = await console.open_gates(gate("later", timedelta(hours=6)))
    soon = await console.open_gates(
        gate("soon", timedelta(hours=2), approvals_required=2),
    )
    budget = await console.open_gates(
        gate(
            "budget-1", timedelta(hours=4), role="editor", draft="12.50",
            subject="batch b1: raise the budget to $12.50, or stop",
            reason="budget: $10.0000 of $10.00 spent and the next item would cross it",
        )
    )  # fmt: skip
    # Not alice's to decide: another role.
    await console.open_gates(gate("treasury", timedelta(hours=1), role="treasurer"))
    for handle, name in ((later, "later"), (soon, "soon"), (budget, "budget-1")):
        await pending_gate(handle.id, name)

    # A wrong token is refused with words a person understands.
    await page.open("/console/queue")
    assert (await page.path()).startswith("/console/sign-in")
    await page.fill("#token", "not-a-token")
    await page.run(lambda d: d.find_element(By.ID, "token").send_keys(Keys.ENTER))
    assert "not a keel API token" in await page.text("[role=alert]")

    # Keyboard only: Tab lands on the skip link first, then (past the brand link) on the token
    # field; typing and Enter sign in.
    await page.open("/console/sign-in")
    focused = await page.run(lambda d: tab_through(d, "token"))
    assert focused[0] == "Skip to content", focused
    await page.run(lambda d: ActionChains(d).send_keys(alice.secret, Keys.ENTER).perform())
    await page.wait_for(lambda d: "/console/queue" in d.current_url, what="the queue")
    session = await page.cookie("keel_console")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict" and session["path"] == "/console"
    assert alice.secret not in str(session)

    keys = await page.attributes("li[data-gate-key]", "data-gate-key")
    assert keys == [f"{soon.id}/soon", f"{budget.id}/budget-1", f"{later.id}/later"]
    countdowns = await page.texts(".countdown")
    assert countdowns[0].startswith("in 1h 5"), countdowns  # ticking down from 2 h
    assert countdowns[1].startswith("in 3h 5") and countdowns[2].startswith("in 5h 5")
    first = await page.text("li[data-gate-key]:first-child")
    assert "0 of 2" in first  # four-eyes progress
    assert "batch budget" in await page.text(f"li[data-gate-key='{budget.id}/budget-1']")
    await page.screenshot("console-queue", tmp_path)

    # Filters: kind.
    await page.open("/console/queue?kind=budget")
    keys = await page.attributes("li[data-gate-key]", "data-gate-key")
    assert keys == [f"{budget.id}/budget-1"]


async def test_approve_edit_and_reject_decide_the_real_review(
    page: Page, console: ConsoleRig, tmp_path: Path
) -> None:
    await seed_reviewers(alice="editor")
    alice = await reviewer_token("alice")
    approved = await start_review(console.client, console.settings, ALWAYS, tenant="acme")
    revised = await start_review(console.client, console.settings, ALWAYS, tenant="acme")
    draft = (await pending_gate(approved.id)).draft
    await pending_gate(revised.id)
    await page.sign_in(alice)

    # Approve with a comment.
    await page.click(f"li[data-gate-key='{approved.id}/publish'] h2 a")
    await page.wait_for(lambda d: d.find_elements(By.ID, "approve-comment"), what="gate page")
    assert await page.text("#draft") == draft
    facts = (await page.text("dl.facts")).lower()
    assert "self-check confidence" in facts and "cost so far\n$0.0" in facts
    assert "Q3 report" in await page.hidden_text("#source")  # inside a closed <details>
    await page.screenshot("console-gate", tmp_path)
    await page.fill("#approve-comment", "ship it")
    await page.click("button[value=approve]")
    await page.wait_for(lambda d: "recorded=approve" in d.current_url, what="the decision")
    assert "Approved by alice" in await page.text("#decided")
    result = await approved.result()
    assert result.status == "published" and result.approved_by == ["alice"]
    (row,) = [e for e in await audit_events(approved.id) if e.event_type == "approval.approved"]
    assert row.actor == "alice" and row.payload["comment"] == "ship it"

    # Reject with a reason: the review is revised and asks again; the revision is edited.
    await page.open(f"/console/gate?workflow={revised.id}&gate=publish")
    await page.click("button[value=reject]")  # no reason: the browser will not send it
    assert "gate=publish" in await page.path()
    assert await page.run(
        lambda d: d.execute_script(
            "return document.getElementById('reject-reason').validity.valueMissing"
        )
    )
    await page.fill("#reject-reason", "name the two offices")
    await page.click("button[value=reject]")
    await page.wait_for(lambda d: "recorded=reject" in d.current_url, what="the rejection")
    revision = await pending_gate(revised.id, "publish-revision-1")
    await page.open(f"/console/gate?workflow={revised.id}&gate=publish-revision-1")
    assert "rejected" in (await page.text("table")).lower()
    edited = (revision.draft or "") + "\nOffices: Lyon and Porto."
    await page.fill("#edit-text", edited)
    # The live diff (console.js) shows the added line.
    await page.wait_for(
        lambda d: "Offices: Lyon and Porto." in d.find_element(By.ID, "diff-preview").text,
        what="the live diff",
    )
    assert await page.all("#diff-preview .added")
    await page.click("button[value=edit]")
    await page.wait_for(lambda d: "recorded=edit" in d.current_url, what="the edit")
    assert "Approved with edits by alice" in await page.text("#decided")
    result = await revised.result()
    assert result.status == "published" and result.revisions == 1
    document = await published(revised.id)
    assert document is not None and document.content == edited
    events = [(e.event_type, e.actor) for e in await audit_events(revised.id)]
    assert ("approval.rejected", "alice") in events and ("approval.edited", "alice") in events

    # The trail verifies, and the export holds the (draft, final) pairs of this run.
    await page.open(f"/console/trail?workflow={revised.id}")
    assert "Hash chain verified" in await page.text("#chain-status")
    async with console.http(keel_console=(await page.cookie("keel_console"))["value"]) as http:
        export = await http.get("/console/export.jsonl", params={"workflow": revised.id})
    lines = export.text.splitlines()
    assert len(lines) == 2 and '"decision": "edited"' in lines[1]


async def test_a_gate_decided_elsewhere_leaves_the_queue_and_its_page_says_who(
    page: Page, console: ConsoleRig
) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    alice = await reviewer_token("alice")
    first = await console.open_gates(gate("first", timedelta(hours=2)))
    second = await console.open_gates(gate("second", timedelta(hours=3)))
    await pending_gate(first.id, "first")
    await pending_gate(second.id, "second")
    await page.sign_in(alice)
    assert len(await page.all("li[data-gate-key]")) == 2

    sender = DecisionSender(console.client, {}, via="cli")
    await sender.send(first.id, "approve", ApproveDecision(reviewer="bob"))
    await page.wait_for(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "li[data-gate-key]")) == 1,
        what="the decided gate to leave the queue",
    )
    assert "decided elsewhere" in await page.hidden_text("#live-status")

    await page.open(f"/console/gate?workflow={second.id}&gate=second")
    assert await page.all("#decide")
    await sender.send(second.id, "approve", ApproveDecision(reviewer="bob"))
    await page.wait_for(
        lambda d: "Approved by bob" in d.find_element(By.ID, "decided").text,
        what="the page to say who decided",
    )
    assert not await page.all("#decide")


async def test_phone_width_labels_and_sign_out(page: Page, console: ConsoleRig) -> None:
    await seed_reviewers(alice="editor")
    alice = await reviewer_token("alice")
    handle = await start_review(console.client, console.settings, ALWAYS, tenant="acme")
    await pending_gate(handle.id)
    await page.sign_in(alice)
    await page.run(lambda d: d.set_window_size(*PHONE))
    unlabelled = """
      return Array.from(document.querySelectorAll('input, select, textarea'))
        .filter(e => e.type !== 'hidden')
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.getAttribute('aria-labelledby'))
        .map(e => e.id || e.name);"""
    overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    for path in (
        "/console/queue",
        f"/console/gate?workflow={handle.id}&gate=publish",
        f"/console/trail?workflow={handle.id}",
    ):
        await page.open(path)
        width = await page.script("return window.innerWidth;")
        assert width <= PHONE[0]
        assert await page.script(overflow) <= 0, f"{path} scrolls sideways at {width}px"
        assert await page.script(unlabelled) == [], path
        assert await page.all("main h1")
    await page.run(lambda d: d.set_window_size(1280, 900))

    session = (await page.cookie("keel_console"))["value"]
    await page.open("/console/queue")
    await page.click(".who button")
    await page.wait_for(lambda d: "signed_out=1" in d.current_url, what="the sign-in page")
    assert "signed out" in (await page.text("main")).lower()
    await page.open("/console/queue")
    assert (await page.path()).startswith("/console/sign-in")
    # The old cookie, replayed, opens nothing.
    async with console.http(keel_console=session) as http:
        replay = await http.get("/console/queue")
    assert replay.status_code == 303 and replay.headers["location"] == "/console/sign-in"
    kinds = [e.event_type for e in await audit_events("keel/console")]
    assert kinds.count("console.signed_in") == 1 and kinds.count("console.signed_out") == 1


async def test_a_session_ends_with_its_token(page: Page, console: ConsoleRig) -> None:
    await seed_reviewers(alice="editor")
    short = await reviewer_token("alice", expires_in=timedelta(seconds=3))
    await page.sign_in(short)
    await asyncio.sleep(3.5)
    await page.open("/console/queue")
    assert (await page.path()).startswith("/console/sign-in")


async def test_a_tool_call_is_edited_in_the_console_and_runs_with_the_edited_arguments(
    page: Page, console: ConsoleRig, tmp_path: Path
) -> None:
    await seed_reviewers(olga="operator")
    olga = await reviewer_token("olga")
    agent = await console.client.start_workflow(
        ToolAgentWorkflow.run,
        ToolAgentInput(
            question="Send an email to Ana, my person of contact.",
            models=["gpt-4o-mini"],
            tenant="acme",
        ),
        id=f"agent-{uuid.uuid4().hex[:10]}",
        task_queue=console.settings.interactive_task_queue,
    )
    asked = await pending_gate(agent.id, "tool-1-0")
    assert asked.tenant == "acme"
    await page.sign_in(olga)

    # The queue lists it as a tool call; its page shows the tool, its arguments and why.
    card = f"li[data-gate-key='{agent.id}/tool-1-0']"
    assert "tool call" in (await page.text(card)).lower()
    await page.click(f"{card} h2 a")
    await page.wait_for(lambda d: d.find_elements(By.ID, "tool-arguments"), what="tool gate")
    assert await page.text("#tool-name") == "send_email"
    model_arguments = json.loads(await page.text("#tool-arguments"))
    assert set(model_arguments) == {"to", "body"}
    assert "send_email is a sensitive tool" in await page.text("#tool-why")
    await page.screenshot("console-tool-gate", tmp_path)

    # Bad JSON is refused with a clear error, and nothing is decided.
    await page.fill("#edit-text", '{"to": "bob@example.com",')
    await page.click("button[value=edit]")
    await page.wait_for(lambda d: d.find_elements(By.ID, "decision-error"), what="the error")
    assert "not valid JSON" in await page.text("#decision-error")
    assert (await pending_gate(agent.id, "tool-1-0")).status == "pending"

    edited = {"to": "bob@example.com", "body": "Edited by the reviewer."}
    await page.fill("#edit-text", json.dumps(edited))
    await page.click("button[value=edit]")
    await page.wait_for(lambda d: "recorded=edit" in d.current_url, what="the edit")
    assert "Approved with edits by olga" in await page.text("#decided")

    result = await agent.result()
    assert result.tools_called == ["send_email"] and not result.refused
    sent: list[ToolInput] = []
    async for event in agent.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled = event.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name == "send_email":
                sent.extend(
                    await console.client.data_converter.decode(
                        scheduled.input.payloads, [ToolInput]
                    )
                )
    assert [call.arguments for call in sent] == [edited]
    (row,) = [e for e in await audit_events(agent.id) if e.event_type == "approval.edited"]
    assert row.actor == "olga"
