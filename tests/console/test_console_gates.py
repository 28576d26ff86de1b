"""What the console makes of each kind of gate: its kind (there is no kind column, the gate's
name says it) and, for a batch held by its tenant's budget, a page that asks to resume or stop
rather than to review a draft or raise an amount. Over plain HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.console.queries import GateKind, kind_of
from contracts.approvals import GateRequest
from infra.tables import Approval
from tests.approvals.records import gate_row, pending_gate, seed_reviewers
from tests.console.conftest import ConsoleRig, reviewer_token
from tests.console.test_console_security import sign_in


@pytest.mark.parametrize(
    ("gate", "subject", "kind"),
    [
        ("budget-1", "batch b1: raise the budget to $0.50, or stop", GateKind.BUDGET),
        ("budget-12", None, GateKind.BUDGET),
        ("tenant-budget-1", "batch b1: tenant acme is out of budget", GateKind.TENANT_BUDGET),
        ("tenant-budget-7", None, GateKind.TENANT_BUDGET),
        ("tool-1-0", "tool call send_email", GateKind.TOOL),
        ("publish", "review of notes.md", GateKind.REVIEW),
    ],
)
def test_each_gate_name_is_its_kind(gate: str, subject: str | None, kind: GateKind) -> None:
    assert kind_of(Approval(gate=gate, subject=subject)) == kind


async def test_a_tenant_budget_gate_asks_to_resume_or_stop(console: ConsoleRig) -> None:
    await seed_reviewers(olga="batch-owner")
    handle = await console.open_gates(
        GateRequest(
            gate="tenant-budget-2",
            draft="resume",
            reason="tenant budget: budget acme/day: $1.0000 spent, of $1.0000",
            role="batch-owner",
            subject="batch b1: tenant acme is out of budget",
            deadline=timedelta(hours=2),
        )
    )
    await pending_gate(handle.id, "tenant-budget-2")
    olga = await sign_in(console, await reviewer_token("olga"))

    async with console.http(keel_console=olga.cookie) as http:
        queue = await http.get("/console/queue", params={"kind": "tenant-budget"})
        page = await http.get(
            "/console/gate", params={"workflow": handle.id, "gate": "tenant-budget-2"}
        )
        edit = await http.post(
            "/console/gate/decide",
            data={
                "workflow": handle.id,
                "gate": "tenant-budget-2",
                "action": "edit",
                "text": "12",
                "csrf_token": olga.csrf,
            },
        )

    assert queue.status_code == 200 and f'data-gate-key="{handle.id}/tenant-budget-2"' in queue.text
    assert "tenant budget" in queue.text
    assert page.status_code == 200
    assert "<dd>tenant budget</dd>" in page.text
    assert "keel budget set acme --usd AMOUNT" in page.text
    assert "Resume the batch" in page.text and "Stop the batch" in page.text
    # Not a draft to review, nor an amount to raise it to.
    assert "Draft under review" not in page.text and "Raise the budget to $" not in page.text
    assert 'id="edit-form"' not in page.text
    assert edit.status_code == 400 and "no amount to edit" in edit.text
    row = await gate_row(handle.id, "tenant-budget-2")
    assert row is not None and row.status == "pending"
