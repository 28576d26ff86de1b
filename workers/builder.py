"""Build a keel worker for one task queue through keel's worker plugin."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings, get_settings
from workers.plugin import KeelWorkerPlugin


def build_worker(
    client: Client,
    queue: str,
    settings: KeelSettings | None = None,
    resolver: Resolver = system_resolver,
) -> Worker:
    """``client``: keel's (``infra.temporal_client.connect`` or any client with ``KeelPlugin``),
    whose plugin gives the worker its converter, interceptors and sandbox passthroughs."""
    settings = settings or get_settings()
    return Worker(client, task_queue=queue, plugins=[KeelWorkerPlugin(queue, settings, resolver)])
