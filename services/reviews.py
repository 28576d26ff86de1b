"""Document reviews (``keel review start``, ``keel approvals``): start one, and find those still
running before they reach a gate."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle

from contracts.search_attributes import KEEL_TENANT, KEEL_WORKFLOW_KIND, tenant_search_attributes
from infra.settings import KeelSettings
from workflows.document_review import DocumentReviewWorkflow, ReviewInput, ReviewOutput


async def start_review(
    client: Client, settings: KeelSettings, params: ReviewInput, workflow_id: str
) -> WorkflowHandle[DocumentReviewWorkflow, ReviewOutput]:
    """Start DocumentReviewWorkflow on the interactive queue with the tenant's search attributes;
    temporalio's WorkflowAlreadyStartedError when the id is taken."""
    return await client.start_workflow(
        DocumentReviewWorkflow.run,
        params,
        id=workflow_id,
        task_queue=settings.interactive_task_queue,
        search_attributes=tenant_search_attributes(params.tenant, "document_review"),
        static_summary=f"review of {params.source_name} · tenant {params.tenant}",
        static_details=review_details(params),
    )


def review_details(params: ReviewInput) -> str:
    """The review's steps as the Web UI shows them under its summary."""
    webhook = "a webhook is called when it is published" if params.notify_webhook else "no webhook"
    return (
        f"{len(params.document)} characters: extract facts (route {params.extract_route}), "
        f"draft (route {params.draft_route}), self-check "
        f"(route {params.check_route}); a person approves when the check asks for it; {webhook}."
    )


async def running_reviews(client: Client, tenant: str | None) -> list[str]:
    """Workflow ids of running document reviews (of one tenant, or all), newest first."""
    query = f"{KEEL_WORKFLOW_KIND.name} = 'document_review' AND ExecutionStatus = 'Running'"
    if tenant is not None:
        query += f" AND {KEEL_TENANT.name} = '{tenant.replace(chr(39), chr(39) * 2)}'"
    return [execution.id async for execution in client.list_workflows(query, limit=100)]
