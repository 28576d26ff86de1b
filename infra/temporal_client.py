"""Connecting to Temporal the one way keel does: pydantic payloads, keel's namespace and address."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from infra.settings import KeelSettings, get_settings
from infra.tracing import tracing_interceptors


async def connect(settings: KeelSettings | None = None, runtime: Runtime | None = None) -> Client:
    """``runtime``: a Temporal Runtime with telemetry (a worker's, serving SDK metrics)."""
    settings = settings or get_settings()
    try:
        return await Client.connect(
            settings.effective_temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
            # Tracing, when configured: workers built from this client inherit it.
            interceptors=tracing_interceptors(),
            runtime=runtime,
        )
    except RuntimeError as error:
        hint = (
            "start the dev stack with `keel dev up`"
            if settings.uses_dev_temporal
            else "check TEMPORAL_ADDRESS"
        )
        raise ConnectionError(
            f"cannot reach Temporal at {settings.effective_temporal_address}: {hint}"
        ) from error
