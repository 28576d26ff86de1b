"""Starting DocumentReviews for tests, and reading what they published."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle

from contracts.approvals import ReviewPolicy
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import PublishedDocument
from workflows.document_review import DocumentReviewWorkflow, ReviewInput, ReviewOutput

DOCUMENT = """Q3 report. Revenue grew 12% to 4.1 million euros. Two new offices opened, in Lyon
and in Porto. The board approved a hiring plan of 30 engineers for next year."""


def self_check(confidence: float, flags: list[str] | None = None) -> str:
    return json.dumps({"confidence": confidence, "policy_flags": flags or [], "issues": ""})


async def start_review(
    client: Client, settings: KeelSettings, policy: ReviewPolicy, **fields: object
) -> WorkflowHandle[DocumentReviewWorkflow, ReviewOutput]:
    return await client.start_workflow(
        DocumentReviewWorkflow.run,
        ReviewInput(document=DOCUMENT, source_name="q3.md", policy=policy, **fields),
        id=f"review-{uuid.uuid4().hex[:10]}",
        task_queue=settings.interactive_task_queue,
    )


async def published(workflow_id: str) -> PublishedDocument | None:
    async with session_factory()() as session:
        result = await session.execute(
            select(PublishedDocument).where(PublishedDocument.workflow_id == workflow_id)
        )
        return result.scalar_one_or_none()
