"""What runs on each task queue. The queues are bulkheads: a flood of batch work never takes the
slots interactive calls need, because they are polled by different worker processes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from activities.approvals import ApprovalActivities
from activities.audit_trail import AuditActivities
from activities.batch.files import BatchFileLimits
from activities.batch.items import BatchItemActivities
from activities.batch.pages import BatchPageActivities
from activities.batch.provider_batches import ProviderBatchActivities
from activities.example_tools import ExampleToolActivities
from activities.jobs import JobActivities
from activities.llm.activities import LlmActivities, route_plan
from activities.llm.providers import ProviderClients
from activities.publishing import PublishingActivities
from activities.sessions import SessionActivities
from infra.database import sessions_for
from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings
from workflows.ask import AskWorkflow
from workflows.batch import PagedBatchWorkflow
from workflows.batch_v1 import BatchWorkflow
from workflows.chat_session import ChatSessionWorkflow
from workflows.document_review import DocumentReviewWorkflow
from workflows.jobs import JobWorkflow
from workflows.provider_batch import ProviderBatchWorkflow
from workflows.tool_agent import ToolAgentWorkflow


@dataclass(frozen=True)
class QueueContents:
    workflows: Sequence[type] = field(default_factory=list)
    activities: Sequence[Callable[..., Any]] = field(default_factory=list)
    max_concurrent_activities: int = 100


def queue_contents(
    queue: str, settings: KeelSettings, resolver: Resolver = system_resolver
) -> QueueContents:
    """What ``queue``'s worker runs. The activities are bound methods of objects built here from
    ``settings`` (not the process's: a worker runs with the settings it was given), the database
    sessions those settings name, and the provider clients they configure. ``resolver`` is what
    activities that send to client-given URLs resolve names with (the outbound guard's; tests
    pass a stub)."""
    if queue not in (settings.interactive_task_queue, settings.batch_task_queue):
        known = ", ".join([settings.interactive_task_queue, settings.batch_task_queue])
        raise ValueError(f"unknown task queue {queue!r}; keel's queues are: {known}")
    sessions = sessions_for(settings)
    providers = ProviderClients(settings)
    llm = [
        *LlmActivities(settings, sessions, providers).all(),
        AuditActivities(sessions).record_audit_event,
    ]
    # The budget gate is an approval gate: its roster and records run on both queues.
    approvals = ApprovalActivities(settings, sessions).all()
    if queue == settings.interactive_task_queue:
        return QueueContents(
            workflows=[
                AskWorkflow,
                ChatSessionWorkflow,
                JobWorkflow,
                DocumentReviewWorkflow,
                ToolAgentWorkflow,
            ],
            activities=[
                *llm,
                *SessionActivities(settings, sessions, route_plan).all(),
                *JobActivities(settings, sessions, resolver).all(),
                *approvals,
                *PublishingActivities(settings, sessions).all(),
                *ExampleToolActivities().all(),
            ],
            max_concurrent_activities=200,
        )
    batch_items = BatchItemActivities(sessions, BatchFileLimits.from_settings(settings))
    pages = BatchPageActivities(settings, sessions, providers)
    return QueueContents(
        # BatchWorkflow (per-item, frozen) stays until the batches it started have finished.
        workflows=[PagedBatchWorkflow, BatchWorkflow, ProviderBatchWorkflow],
        activities=[
            *llm,
            *batch_items.all(),
            *pages.all(),
            *ProviderBatchActivities(settings, sessions, providers).all(),
            *approvals,
        ],
        max_concurrent_activities=400,
    )


def all_workflows(settings: KeelSettings) -> list[type]:
    """Every workflow keel runs, on any queue (the replay test checks each one)."""
    found: list[type] = []
    for queue in (settings.interactive_task_queue, settings.batch_task_queue):
        found += [w for w in queue_contents(queue, settings).workflows if w not in found]
    return found
