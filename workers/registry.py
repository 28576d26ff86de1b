"""What runs on each task queue. The queues are bulkheads: a flood of batch work never takes the
slots interactive calls need, because they are polled by different worker processes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from activities.approvals import APPROVAL_ACTIVITIES
from activities.audit_trail import record_audit_event
from activities.batch.items import BATCH_ACTIVITIES
from activities.batch.pages import BatchPageActivities
from activities.jobs import job_activities
from activities.llm.activities import complete_chat, plan_llm_route
from activities.llm.providers import Provider, get_provider
from activities.publishing import PUBLISHING_ACTIVITIES
from activities.sessions import SESSION_ACTIVITIES
from infra.database import session_factory
from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings
from workflows.ask import AskWorkflow
from workflows.batch import PagedBatchWorkflow
from workflows.batch_v1 import BatchWorkflow
from workflows.chat_session import ChatSessionWorkflow
from workflows.document_review import DocumentReviewWorkflow
from workflows.jobs import JobWorkflow


@dataclass(frozen=True)
class QueueContents:
    workflows: Sequence[type] = field(default_factory=list)
    activities: Sequence[Callable[..., Any]] = field(default_factory=list)
    max_concurrent_activities: int = 100


class _SettingsProviders:
    """The providers ``settings`` configure, by name."""

    def __init__(self, settings: KeelSettings) -> None:
        self._settings = settings

    def get(self, name: str) -> Provider:
        return get_provider(name, self._settings)


LLM_ACTIVITIES: list[Callable[..., Any]] = [complete_chat, plan_llm_route, record_audit_event]


def queue_contents(
    queue: str, settings: KeelSettings, resolver: Resolver = system_resolver
) -> QueueContents:
    """What ``queue``'s worker runs. ``resolver`` is what activities that send to client-given
    URLs resolve names with (the outbound guard's; tests pass a stub)."""
    if queue == settings.interactive_task_queue:
        return QueueContents(
            workflows=[AskWorkflow, ChatSessionWorkflow, JobWorkflow, DocumentReviewWorkflow],
            activities=[
                *LLM_ACTIVITIES,
                *SESSION_ACTIVITIES,
                *job_activities(resolver=resolver),
                *APPROVAL_ACTIVITIES,
                *PUBLISHING_ACTIVITIES,
            ],
            max_concurrent_activities=200,
        )
    if queue == settings.batch_task_queue:
        pages = BatchPageActivities(settings, session_factory(), _SettingsProviders(settings))
        return QueueContents(
            # BatchWorkflow (per-item, frozen) stays until the batches it started have finished.
            workflows=[PagedBatchWorkflow, BatchWorkflow],
            # The budget gate is an approval gate: its roster and records run here too.
            activities=[*LLM_ACTIVITIES, *BATCH_ACTIVITIES, *pages.all(), *APPROVAL_ACTIVITIES],
            max_concurrent_activities=400,
        )
    known = ", ".join([settings.interactive_task_queue, settings.batch_task_queue])
    raise ValueError(f"unknown task queue {queue!r}; keel's queues are: {known}")


def all_workflows(settings: KeelSettings) -> list[type]:
    """Every workflow keel runs, on any queue (the replay test checks each one)."""
    found: list[type] = []
    for queue in (settings.interactive_task_queue, settings.batch_task_queue):
        found += [w for w in queue_contents(queue, settings).workflows if w not in found]
    return found
