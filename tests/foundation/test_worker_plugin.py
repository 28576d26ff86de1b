"""keel's Temporal wiring lives in two plugins (infra/temporal_client.KeelPlugin, workers/plugin
.KeelWorkerPlugin): a worker built through them encrypts and reads payloads, logs with context and
runs workflows with keel's sandbox passthroughs."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import contracts.llm
from infra.payload_codec import ENCRYPTED_ENCODING
from infra.settings import KeelSettings
from infra.structured_logging import LogContextInterceptor
from infra.temporal_client import SANDBOX_PASSTHROUGH_MODULES, KeelPlugin
from llmsim import SimServer
from tests.foundation.plugin_workflows import ContractIdentityWorkflow
from tests.security.history_payloads import history_payloads, raw_bytes
from workers.builder import build_worker
from workers.plugin import KeelWorkerPlugin
from workflows.ask import AskInput, AskWorkflow


async def plain_client(client: Client) -> Client:
    """A client of the same server without keel's plugin: Temporal's default converter."""
    return await Client.connect(
        client.service_client.config.target_host, namespace=client.namespace
    )


async def keel_client(client: Client, settings: KeelSettings) -> Client:
    """A client of the same server, of its own, with keel's plugin."""
    return await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        plugins=[KeelPlugin(settings)],
    )


async def test_a_prompt_written_by_a_plugin_client_is_ciphertext_and_a_plugin_worker_reads_it(
    client: Client, keel_settings: KeelSettings, simulator: SimServer
) -> None:
    marker = uuid.uuid4().hex[:12]
    prompt = f"Summarise memo {marker}-PROMPT"
    answer = f"Memo {marker}-ANSWER"
    simulator.add_canned_response(f"{marker}-PROMPT", answer)
    queue = keel_settings.interactive_task_queue
    writer = await keel_client(client, keel_settings)
    # The worker's client is another one: only the plugin they share makes them agree.
    worker = build_worker(await keel_client(client, keel_settings), queue, keel_settings)
    workflow_id = f"plugin-{marker}"
    async with worker:
        result = await writer.execute_workflow(
            AskWorkflow.run,
            AskInput(prompt=prompt, models=["gpt-4o-mini"]),
            id=workflow_id,
            task_queue=queue,
        )
    assert result.answer.text == answer  # the worker decrypted the prompt, the writer the answer

    history = await (await plain_client(client)).get_workflow_handle(workflow_id).fetch_history()
    for secret in (f"{marker}-PROMPT", f"{marker}-ANSWER"):
        assert secret.encode() not in raw_bytes(history)
    payloads = history_payloads(history)
    assert len(payloads) >= 4
    assert {p.metadata["encoding"] for p in payloads} == {ENCRYPTED_ENCODING}

    # The worker half came from the client's plugin; the queue's contents from the worker's.
    config = worker.config(active_config=True)
    assert [type(i) for i in config.get("interceptors", [])] == [LogContextInterceptor]
    assert AskWorkflow in config.get("workflows", [])
    assert config.get("max_concurrent_activities") == 200


async def test_workflows_get_the_processs_contracts_through_the_plugins_sandbox(
    client: Client, keel_settings: KeelSettings
) -> None:
    assert "contracts" in SANDBOX_PASSTHROUGH_MODULES
    host_class = id(contracts.llm.ChatMessage)

    async def identity_seen_by(worker_client: Client) -> int:
        queue = f"plugin-sandbox-{uuid.uuid4().hex[:8]}"
        async with Worker(worker_client, task_queue=queue, workflows=[ContractIdentityWorkflow]):
            return await worker_client.execute_workflow(
                ContractIdentityWorkflow.run, id=queue, task_queue=queue
            )

    assert await identity_seen_by(await keel_client(client, keel_settings)) == host_class
    # The check can fail: Temporal's default sandbox re-imports contracts for each run.
    assert await identity_seen_by(await plain_client(client)) != host_class


async def test_a_keel_worker_refuses_a_client_without_keels_plugin_or_another_queue(
    client: Client, keel_settings: KeelSettings
) -> None:
    queue = keel_settings.interactive_task_queue
    with pytest.raises(ValueError, match=r"KeelPlugin"):
        build_worker(await plain_client(client), queue, keel_settings)
    with pytest.raises(ValueError, match=r"polls 'elsewhere'"):
        Worker(
            await keel_client(client, keel_settings),
            task_queue="elsewhere",
            plugins=[KeelWorkerPlugin(queue, keel_settings)],
        )


async def test_keels_workers_run_workflows_outside_the_sandbox_unless_it_is_turned_on(
    client: Client, keel_settings: KeelSettings
) -> None:
    """Production workers skip the sandbox's per-workflow cost; the workflow and replay tests
    keep running keel's workflows inside it (their workers take the SDK's default runner)."""
    queue = keel_settings.interactive_task_queue
    keel = await keel_client(client, keel_settings)
    production = build_worker(keel, queue, keel_settings)
    assert isinstance(
        production.config(active_config=True)["workflow_runner"], UnsandboxedWorkflowRunner
    )
    sandboxed_settings = keel_settings.model_copy(update={"workflow_sandbox": True})
    # Another client: one client may not hold two workers of a queue.
    sandboxed = build_worker(await keel_client(client, keel_settings), queue, sandboxed_settings)
    assert isinstance(
        sandboxed.config(active_config=True)["workflow_runner"], SandboxedWorkflowRunner
    )
    # What the workflow tests' workers get: the sandbox, with keel's passthroughs.
    rig_like = Worker(keel, task_queue=f"plugin-{uuid.uuid4().hex[:8]}", workflows=[AskWorkflow])
    runner = rig_like.config(active_config=True)["workflow_runner"]
    assert isinstance(runner, SandboxedWorkflowRunner)
    assert "contracts" in runner.restrictions.passthrough_modules
