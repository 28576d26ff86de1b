"""The cost-and-traffic part of ``keel demo``: routes with prices and breakers, a budget that
refuses a call and names itself, and the spend table from the ledger.

Call ``demo_cost_and_traffic(settings)`` from the demo with the stack running (its workers
enforce the budget); database engines are left open for the caller to dispose.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from temporalio.client import WorkflowFailureError

from contracts.search_attributes import tenant_search_attributes
from contracts.traffic import BudgetPolicy
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.temporal_client import connect
from services.budgets import budget_audit_id, change_budget, current_budgets
from services.costs import CostGrouping
from starters.budget import print_budgets
from starters.cost import show_cost
from starters.output import console, workflow_link
from starters.routes import show_routes
from workflows.ask import AskInput, AskWorkflow

DEMO_TENANT = "demo-tight-budget"


async def demo_cost_and_traffic(settings: KeelSettings) -> list[str]:
    """Print routes, a budget refusal and the cost table; returns the workflow ids it ran."""
    await show_routes(settings)

    # A budget of a hundredth of a cent cannot cover a worst-case gpt-4o call: refused before
    # the provider is called, with the budget named and the command that raises it.
    await change_budget(session_factory(), DEMO_TENANT, "day", Decimal("0.0001"), "keel-demo")
    client = await connect(settings)
    workflow_id = f"demo-budget-{uuid.uuid4().hex[:6]}"
    console.print(
        f"[bold]workflow[/] {workflow_id}  {workflow_link(settings, workflow_id)}  "
        f"(tenant {DEMO_TENANT}, budget $0.0001/day, policy refuse)"
    )
    try:
        await client.execute_workflow(
            AskWorkflow.run,
            AskInput(
                prompt="Write a long essay on durable execution.",
                models=["gpt-4o"],
                max_tokens=2000,
                tenant=DEMO_TENANT,
                budget_policy=BudgetPolicy.REFUSE,
            ),
            id=workflow_id,
            task_queue=settings.interactive_task_queue,
            search_attributes=tenant_search_attributes(DEMO_TENANT, "ask"),
            static_summary="budget demo · ask gpt-4o · tenant " + DEMO_TENANT,
        )
        console.print("[yellow]the call went through: is the budget enforced?[/]")
    except WorkflowFailureError as error:
        console.print(f"[red]refused:[/] {error.cause}")
    print_budgets(await current_budgets(session_factory(), settings, DEMO_TENANT))
    console.print(
        f"[dim]raise it: keel budget set {DEMO_TENANT} --usd 1 --period day · "
        f"who changed it: keel audit {budget_audit_id(DEMO_TENANT)} · "
        "a batch call pauses instead, until the budget is raised (README: budget pause)[/]"
    )

    await show_cost(CostGrouping.MODEL)
    return [workflow_id]
