"""Connecting to Temporal the one way keel does: pydantic payloads encrypted by keel's codec,
keel's namespace and address."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime

from infra.payload_codec import (
    EncryptionKeysError,
    KeelFailureConverter,
    KeelPayloadConverter,
    codec_from_settings,
)
from infra.settings import KeelSettings, get_settings
from infra.tracing import tracing_interceptors


class TemporalUnreachable(ConnectionError):
    """No client: the server cannot be reached or the payload keys are missing. The message
    says what to do; the keel CLI prints it for any command that did not handle it itself."""


def keel_data_converter(settings: KeelSettings | None = None) -> DataConverter:
    """Pydantic payloads, encrypted (infra/payload_codec.py); failure messages and stack traces
    move into an encoded (so encrypted) payload too, since they can quote prompt text (all but
    the failure to decrypt, which names key ids only: :class:`KeelFailureConverter`).

    Every client, worker, test environment and replayer is built with this. Raises
    :class:`EncryptionKeysError` (saying what to set) when encryption is on and no key is.
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=KeelPayloadConverter,
        payload_codec=codec_from_settings(settings or get_settings(), defer_failures=True),
        failure_converter_class=KeelFailureConverter,
    )


async def connect(settings: KeelSettings | None = None, runtime: Runtime | None = None) -> Client:
    """``runtime``: a Temporal Runtime with telemetry (a worker's, serving SDK metrics)."""
    settings = settings or get_settings()
    try:
        data_converter = keel_data_converter(settings)
    except EncryptionKeysError as error:
        # Like an unreachable server: a clean "what to do" message (from the caller or, failing
        # that, the keel CLI's exit path), and no client may talk to Temporal without its keys.
        raise TemporalUnreachable(f"cannot connect to Temporal: {error}") from error
    try:
        return await Client.connect(
            settings.effective_temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter,
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
        raise TemporalUnreachable(
            f"cannot reach Temporal at {settings.effective_temporal_address}: {hint}"
        ) from error
