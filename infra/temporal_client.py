"""Connecting to Temporal the one way keel does: pydantic payloads, keel's namespace and address."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from infra.settings import KeelSettings, get_settings


async def connect(settings: KeelSettings | None = None) -> Client:
    settings = settings or get_settings()
    try:
        return await Client.connect(
            settings.effective_temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
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
