"""Connecting to Temporal the one way keel does: pydantic payloads encrypted by keel's codec,
keel's namespace and address, all carried by one client plugin (:class:`KeelPlugin`)."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.runtime import Runtime
from temporalio.worker import WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from infra.payload_codec import (
    EncryptionKeysError,
    KeelFailureConverter,
    KeelPayloadConverter,
    codec_from_settings,
)
from infra.settings import KeelSettings, get_settings
from infra.structured_logging import LogContextInterceptor
from infra.tracing import tracing_interceptors


class TemporalUnreachable(ConnectionError):
    """No client: the server cannot be reached or the payload keys are missing. The message
    says what to do; the keel CLI prints it for any command that did not handle it itself."""


def keel_data_converter(settings: KeelSettings | None = None) -> DataConverter:
    """Pydantic payloads, encrypted (infra/payload_codec.py); failure messages and stack traces
    move into an encoded (so encrypted) payload too, since they can quote prompt text (all but
    the failure to decrypt, which names key ids only: :class:`KeelFailureConverter`).

    Every client, worker, test environment and replayer gets it through :class:`KeelPlugin`;
    used directly only where a converter is wanted without a client (benchmarks, fuzzing). Raises
    :class:`EncryptionKeysError` (saying what to set) when encryption is on and no key is.
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=KeelPayloadConverter,
        payload_codec=codec_from_settings(settings or get_settings(), defer_failures=True),
        failure_converter_class=KeelFailureConverter,
    )


# Modules the workflow sandbox takes from the worker process instead of re-importing them for each
# workflow run, each with its reason. Named as strings: infra imports no feature package.
# Already passed through by Temporal's defaults: the standard library, temporalio, pydantic and
# pydantic_core. Not needed: opentelemetry and structlog, which the tracing and log-context
# interceptors reach from outside the sandbox (no module is imported in the sandbox after a
# workflow's load with both on: checked with WARN_ON_DYNAMIC_IMPORT over tests/workflows,
# tests/observability/test_tracing.py and tests/foundation/test_logging.py).
SANDBOX_PASSTHROUGH_MODULES: dict[str, str] = {
    "contracts": (
        "plain pydantic models, enums and names with no I/O (an import-linter contract), shared "
        "by workflows, activities and the converter: one class per model in the process, its "
        "schema built once rather than on every workflow run; a workflow module need not wrap "
        "its contracts imports in workflow.unsafe.imports_passed_through()"
    ),
}


def _with_keel_passthroughs(runner: WorkflowRunner | None) -> WorkflowRunner:
    """The worker's (or replayer's) runner with keel's passthroughs; a runner without a sandbox
    (the benchmarks' ``UnsandboxedWorkflowRunner``) is left as it is."""
    if runner is None:
        raise ValueError("KeelPlugin: the worker has no workflow runner to configure")
    if not isinstance(runner, SandboxedWorkflowRunner):
        return runner
    return dataclasses.replace(
        runner,
        restrictions=runner.restrictions.with_passthrough_modules(*SANDBOX_PASSTHROUGH_MODULES),
    )


class KeelPlugin(SimplePlugin):
    """Everything a keel client, worker or replayer needs to read and write keel's workflows:
    the data converter (pydantic payloads through :class:`KeelPayloadConverter`, encrypted by
    the AES-GCM codec, failures through :class:`KeelFailureConverter`), the interceptors
    (tracing when configured, log context) and the sandbox passthroughs.

    Put it on the client (``Client.connect(..., plugins=[KeelPlugin(settings)])``, as
    :func:`connect` does): every worker built from that client gets its worker half. It
    registers no workflow or activity, so a test worker registers its own (mocked) activities;
    ``workers.plugin.KeelWorkerPlugin`` registers a queue's real ones. For a replayer:
    ``Replayer(workflows=..., plugins=[KeelPlugin(settings)])``.

    Raises :class:`EncryptionKeysError` (saying what to set) when encryption is on and no key is.
    """

    def __init__(self, settings: KeelSettings | None = None) -> None:
        settings = settings or get_settings()
        super().__init__(
            "keel.KeelPlugin",
            data_converter=keel_data_converter(settings),
            # Tracing (a client and worker interceptor) when configured: it is read once, here,
            # so call configure_tracing before building the plugin. Log context: worker only.
            interceptors=[*tracing_interceptors(), LogContextInterceptor()],
            workflow_runner=_with_keel_passthroughs,
        )


async def connect(settings: KeelSettings | None = None, runtime: Runtime | None = None) -> Client:
    """``runtime``: a Temporal Runtime with telemetry (a worker's, serving SDK metrics)."""
    settings = settings or get_settings()
    try:
        plugin = KeelPlugin(settings)
    except EncryptionKeysError as error:
        # Like an unreachable server: a clean "what to do" message (from the caller or, failing
        # that, the keel CLI's exit path), and no client may talk to Temporal without its keys.
        raise TemporalUnreachable(f"cannot connect to Temporal: {error}") from error
    try:
        return await Client.connect(
            settings.effective_temporal_address,
            namespace=settings.temporal_namespace,
            # Workers built from this client inherit the plugin's worker half.
            plugins=[plugin],
            runtime=runtime,
        )
    except RuntimeError as error:
        hint = (
            "start the dev stack with `keel dev up`"
            if settings.uses_dev_temporal
            else "check TEMPORAL_ADDRESS"
        )
        raise TemporalUnreachable(
            f"cannot reach Temporal at {settings.effective_temporal_address}: {hint}"
        ) from error
