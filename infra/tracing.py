"""OpenTelemetry traces: Temporal's spans (``TracingInterceptor``: start workflow, run workflow,
start and run activity, linked across processes through Temporal headers) plus one span per LLM
call attempt with its model, tokens, cost and attempt number as attributes.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; then spans go there over OTLP (http/protobuf,
or gRPC with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``). The exporter packages are optional and
imported only then. While off, the LLM span is the OpenTelemetry API's non-recording span: no
attributes are computed, nothing is exported.

keel keeps its own tracer provider instead of replacing OpenTelemetry's global one, so an
application embedding keel (or a test with an in-memory exporter) decides where spans go.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from temporalio.contrib.opentelemetry import TracingInterceptor

from infra.settings import KeelSettings

log = structlog.get_logger(__name__)

TRACER_NAME = "keel"
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def install_tracer_provider(provider: TracerProvider | None) -> None:
    """Send keel's spans to ``provider`` (None: tracing off)."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None


def tracing_enabled() -> bool:
    return _tracer is not None


def tracer() -> Tracer:
    return _tracer if _tracer is not None else trace.NoOpTracer()


def _otlp_exporter(settings: KeelSettings) -> SpanExporter | None:
    endpoint = settings.otel_exporter_otlp_endpoint
    assert endpoint is not None
    grpc = settings.otel_exporter_otlp_protocol == "grpc"
    package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if grpc else "http")
    try:
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter(endpoint=endpoint)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        # The generic variable names the collector's base URL; traces go under /v1/traces.
        return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    except ImportError:
        log.error(
            "tracing.exporter_missing",
            endpoint=endpoint,
            hint=f"OTEL_EXPORTER_OTLP_ENDPOINT is set but {package} is not installed: "
            f"`pip install {package}`; tracing stays off",
        )
        return None


def configure_tracing(settings: KeelSettings, role: str) -> TracerProvider | None:
    """Export spans over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; call once per
    process, before connecting to Temporal. ``role`` names the process (e.g. its task queue)."""
    if not settings.otel_exporter_otlp_endpoint:
        return None
    exporter = _otlp_exporter(settings)
    if exporter is None:
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name, "keel.role": role})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install_tracer_provider(provider)
    log.info("tracing.enabled", endpoint=settings.otel_exporter_otlp_endpoint, role=role)
    return provider


def shutdown_tracing() -> None:
    """Flush spans still buffered (a worker that stops must not lose its last traces)."""
    if _provider is not None:
        _provider.shutdown()


def tracing_interceptors() -> list[Any]:
    """Client interceptors; workers built from the client inherit them."""
    return [TracingInterceptor(tracer())] if tracing_enabled() else []


@contextmanager
def llm_call_span(model: str, attributes: dict[str, Any]) -> Iterator[Span]:
    """A span around one LLM call attempt, child of Temporal's RunActivity span. Attributes
    follow OpenTelemetry's GenAI conventions (``gen_ai.*``) plus keel's (``keel.*``)."""
    with tracer().start_as_current_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes=attributes if tracing_enabled() else None,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def end_llm_call_span(span: Span, attributes: dict[str, Any], error: str | None) -> None:
    if not span.is_recording():
        return
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
