"""Build a keel worker for one task queue: the registrations, the interceptors, the limits."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings, get_settings
from infra.structured_logging import LogContextInterceptor
from workers.registry import queue_contents


def build_worker(
    client: Client,
    queue: str,
    settings: KeelSettings | None = None,
    resolver: Resolver = system_resolver,
) -> Worker:
    settings = settings or get_settings()
    contents = queue_contents(queue, settings, resolver)
    return Worker(
        client,
        task_queue=queue,
        workflows=list(contents.workflows),
        activities=list(contents.activities),
        interceptors=[LogContextInterceptor()],
        max_concurrent_activities=contents.max_concurrent_activities,
        # Heartbeats reach the server at most this often (the SDK's default is 80% of the
        # heartbeat timeout): a batch page learns of a pause or cancel from the answer to its
        # heartbeat, so this bounds how long a page keeps starting calls after one.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )
