"""The worker half of keel's Temporal wiring: what one task queue runs, as a worker plugin."""

from __future__ import annotations

from datetime import timedelta

from temporalio.plugin import SimplePlugin
from temporalio.worker import UnsandboxedWorkflowRunner, WorkerConfig

from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings
from infra.temporal_client import KeelPlugin
from workers.registry import queue_contents

HEARTBEAT_THROTTLE = timedelta(seconds=1)


class KeelWorkerPlugin(SimplePlugin):
    """Registers ``queue``'s workflows and activities and sets its activity slots, from
    :func:`workers.registry.queue_contents`. The converter, codec, interceptors and sandbox
    passthroughs come from the client's :class:`~infra.temporal_client.KeelPlugin`::

        Worker(client, task_queue=queue, plugins=[KeelWorkerPlugin(queue, settings)])

    ``resolver``: what activities sending to client-given URLs resolve names with."""

    def __init__(
        self, queue: str, settings: KeelSettings, resolver: Resolver = system_resolver
    ) -> None:
        contents = queue_contents(queue, settings, resolver)
        self.queue = queue
        self.max_concurrent_activities = contents.max_concurrent_activities
        self.sandboxed = settings.workflow_sandbox
        super().__init__(
            "keel.KeelWorkerPlugin",
            workflows=list(contents.workflows),
            activities=list(contents.activities),
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        if config.get("task_queue") != self.queue:
            raise ValueError(
                f"KeelWorkerPlugin registers queue {self.queue!r}'s workflows and activities, "
                f"but the worker polls {config.get('task_queue')!r}"
            )
        plugins = config["client"].config()["plugins"]
        if not any(isinstance(plugin, KeelPlugin) for plugin in plugins):
            # Without it the worker would write plaintext payloads and could not read keel's.
            raise ValueError(
                "a keel worker needs a client with keel's converter and codec: connect with "
                "infra.temporal_client.connect() or Client.connect(..., plugins=[KeelPlugin()])"
            )
        config = super().configure_worker(config)
        config["max_concurrent_activities"] = self.max_concurrent_activities
        if not self.sandboxed:
            # keel's workflows run outside the sandbox in production: the workflow tests and
            # the replay tests run every one of them inside it (their workers and replayers
            # keep the SDK's default runner), so a non-deterministic call fails a test, not a
            # worker (KeelSettings.workflow_sandbox).
            config["workflow_runner"] = UnsandboxedWorkflowRunner()
        # Heartbeats reach the server at most this often (the SDK's default is 80% of the
        # heartbeat timeout, up to a minute): a batch page learns of a pause or cancel from the
        # answer to its heartbeat, so this bounds how long a page keeps starting calls after one.
        config["max_heartbeat_throttle_interval"] = HEARTBEAT_THROTTLE
        return config
