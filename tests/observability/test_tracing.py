"""Traces: Temporal's spans from client to activity, and one span per LLM call attempt with
its model, tokens, cost and attempt; exported over OTLP only when an endpoint is set."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, StatusCode
from temporalio.client import Client

from infra.settings import KeelSettings
from infra.temporal_client import connect
from infra.tracing import (
    configure_tracing,
    end_llm_call_span,
    install_tracer_provider,
    llm_call_span,
    shutdown_tracing,
    tracing_enabled,
    tracing_interceptors,
)
from llmsim import SimServer
from tests.conftest import reconfigure
from tests.cost.support import CHEAP
from tests.helpers import ledger_rows
from workers.builder import build_worker
from workflows.ask import AskInput, AskWorkflow


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install_tracer_provider(provider)
    yield exporter
    install_tracer_provider(None)


def attribute(span: ReadableSpan, name: str = "keel.attempt") -> object:
    return (span.attributes or {}).get(name)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_a_retried_call_is_one_trace_with_a_span_per_attempt(
    spans: InMemorySpanExporter,
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(monkeypatch, TEMPORAL_ADDRESS=client.service_client.config.target_host)
    traced = await connect(settings)  # keel's client: it carries the tracing interceptor
    simulator.add_faults("server_error", model=CHEAP, count=1)
    workflow_id = f"traced-{uuid.uuid4().hex[:8]}"
    async with build_worker(traced, settings.interactive_task_queue, settings):
        result = await traced.execute_workflow(
            AskWorkflow.run,
            AskInput(prompt="Trace me.", models=[CHEAP], tenant="tracing"),
            id=workflow_id,
            task_queue=settings.interactive_task_queue,
        )
    finished = list(spans.get_finished_spans())
    start = one(finished, "StartWorkflow:AskWorkflow")
    assert one(finished, "RunWorkflow:AskWorkflow").context.trace_id == start.context.trace_id

    calls = sorted(
        (s for s in finished if s.name == f"chat {CHEAP}"), key=lambda s: str(attribute(s))
    )
    assert len(calls) == 2 and {s.context.trace_id for s in calls} == {start.context.trace_id}
    runs = {s.context.span_id for s in finished if s.name == "RunActivity:complete_chat"}
    assert {s.parent.span_id for s in calls if s.parent} == runs and len(runs) == 2

    failed, answered = (dict(s.attributes or {}) for s in calls)
    assert failed["keel.attempt"] == 1 and failed["keel.error_class"] == "server_error"
    assert calls[0].status.status_code == StatusCode.ERROR
    ok_row = next(r for r in await ledger_rows(workflow_id=workflow_id) if r.outcome == "ok")
    assert answered["keel.attempt"] == 2 and answered["keel.outcome"] == "ok"
    assert answered["gen_ai.request.model"] == CHEAP and answered["gen_ai.system"] == "openai"
    assert answered["gen_ai.usage.input_tokens"] == ok_row.input_tokens
    assert answered["gen_ai.usage.output_tokens"] == ok_row.output_tokens
    assert answered["keel.cost_usd"] == pytest.approx(float(ok_row.cost_usd or 0))
    assert answered["keel.cost_usd"] == pytest.approx(float(result.answer.cost_usd or 0))
    assert answered["keel.tenant"] == "tracing" and answered["keel.workflow_id"] == workflow_id
    assert calls[1].status.status_code != StatusCode.ERROR


def test_tracing_is_off_without_an_endpoint(keel_settings: KeelSettings) -> None:
    assert configure_tracing(keel_settings, role="test") is None
    assert not tracing_enabled() and tracing_interceptors() == []
    with llm_call_span("gpt-4o-mini", {"keel.attempt": 1}) as span:
        assert isinstance(span, NonRecordingSpan)


class _OtlpReceiver(BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP collector: records each POSTed export request."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_an_endpoint_exports_llm_spans_over_otlp(
    keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _OtlpReceiver.received.clear()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    settings = reconfigure(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    try:
        assert configure_tracing(settings, role="test") is not None
        assert tracing_enabled()
        with llm_call_span("gpt-4o-mini", {"keel.attempt": 1}) as span:
            end_llm_call_span(span, {"keel.output_tokens": 12}, None)
        shutdown_tracing()  # flushes the batch to the collector
    finally:
        install_tracer_provider(None)
        server.shutdown()
    (path, content_type, body) = _OtlpReceiver.received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"gpt-4o-mini" in body
