"""Traces: Temporal's spans from client to activity, and one span per LLM call attempt with
its model, tokens, cost and attempt; exported over OTLP only when an endpoint is set."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator

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
    install_tracer_provider,
    llm_call_span,
    shutdown_tracing,
    tracing_enabled,
    tracing_interceptors,
)
from llmsim import SimServer
from tests.conftest import reconfigure
from tests.cost.support import CHEAP, ledger_rows
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


def test_an_endpoint_turns_otlp_export_on_when_the_exporter_is_installed(
    keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = reconfigure(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    try:
        installed = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        installed = False
    try:
        provider = configure_tracing(settings, role="test")
        # Without opentelemetry-exporter-otlp-proto-http keel says so and stays off (no crash).
        assert (provider is not None) == installed == tracing_enabled()
    finally:
        shutdown_tracing()
        install_tracer_provider(None)
