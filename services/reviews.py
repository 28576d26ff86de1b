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
    )


async def running_reviews(client: Client, tenant: str | None) -> list[str]:
    """Workflow ids of running document reviews (of one tenant, or all), newest first."""
    query = f"{KEEL_WORKFLOW_KIND.name} = 'document_review' AND ExecutionStatus = 'Running'"
    if tenant is not None:
        query += f" AND {KEEL_TENANT.name} = '{tenant.replace(chr(39), chr(39) * 2)}'"
    return [execution.id async for execution in client.list_workflows(query, limit=100)]
