"""Prometheus metrics of a worker: keel's own (prometheus-client) and the Temporal SDK's, on one
endpoint (``KEEL_METRICS_HOST``:``KEEL_METRICS_PORT``, ``/metrics``).

The SDK's metrics come from its Rust core, which serves them itself (``PrometheusConfig``) on a
private loopback port; keel's endpoint appends that text to its own registry's at every scrape,
so Prometheus scrapes one target per worker and the docker-compose healthcheck has one URL. The
two never share a name: the SDK's start with ``temporal_``, keel's with ``keel_``.

Counters and histograms move in the activity that meters a call (``record_llm_attempt``); the
call's route, chain (``primary`` or a canary's label) and call class are labels, so the alert
rules in ``deploy/prometheus/rules/`` can hold each route to its objective and a canary to its
route's primary chain. Gauges that describe shared state (breakers, budgets, approvals, active
batches in Postgres; task-queue backlogs and pollers in Temporal) are re-read every
``KEEL_METRICS_REFRESH_SECONDS`` by each worker, so every replica reports the same values
(aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from contracts.llm import BudgetState, LedgerOutcome
from infra.database import session_factory
from infra.settings import KeelSettings

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

LLM_TOKENS = Counter(
    "keel_llm_tokens",
    "Tokens billed by LLM calls (kind: input, output, cached, reasoning).",
    ["provider", "model", "tenant", "kind"],
    registry=REGISTRY,
)
# The route a call named ("(explicit models)" when it named models instead, as `keel cost`
# says), the chain of the route that served it ("primary" or a canary's label) and its call
# class: what the availability, latency and canary alerts group by.
ROUTE_LABELS = ["route", "chain", "call_class"]
EXPLICIT_MODELS_ROUTE = "(explicit models)"

LLM_COST = Counter(
    "keel_llm_cost_usd",
    "Dollars billed by LLM calls, as metered in the ledger (unpriced models add nothing).",
    ["provider", "model", "tenant", "route", "chain"],
    registry=REGISTRY,
)
LLM_ATTEMPTS = Counter(
    "keel_llm_attempts",
    "LLM call attempts by outcome (ok, error, cached, short_circuited, budget_refused, "
    "throttled, prompt_too_large) and error class.",
    ["provider", "model", "outcome", "error_class", *ROUTE_LABELS],
    registry=REGISTRY,
)
LLM_RETRIES = Counter(
    "keel_llm_retries",
    "Attempts after the first on the same model: Temporal retrying a failed call.",
    ["provider", "model"],
    registry=REGISTRY,
)
LLM_FALLBACKS = Counter(
    "keel_llm_fallbacks",
    "Calls sent down the chain to another model after one failed for good (or was skipped).",
    ["from_model", "to_model"],
    registry=REGISTRY,
)
LLM_LATENCY = Histogram(
    "keel_llm_call_duration_seconds",
    "Provider call duration, request to last token (rate-limit waits excluded).",
    ["provider", "model", "outcome", *ROUTE_LABELS],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
LLM_FIRST_TOKEN = Histogram(
    "keel_llm_time_to_first_token_seconds",
    "Time from request to the first streamed token.",
    ["provider", "model", *ROUTE_LABELS],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
    registry=REGISTRY,
)
RATE_LIMIT_WAIT = Histogram(
    "keel_rate_limit_wait_seconds",
    "How long calls waited for their slot in a shared rate limit.",
    ["scope"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
    registry=REGISTRY,
)
RATE_LIMIT_DEFERRED = Counter(
    "keel_rate_limit_deferred",
    "Attempts whose rate-limit slot was too far away: sent back for a Temporal retry.",
    ["scope", "unit"],
    registry=REGISTRY,
)
BUDGET_REFUSALS = Counter(
    "keel_budget_refusals",
    "Calls refused because a budget could not cover their worst-case cost.",
    ["tenant", "period"],
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "keel_circuit_breaker_state",
    "Circuit breaker per provider + model: 0 closed, 1 half-open, 2 open.",
    ["provider", "model"],
    registry=REGISTRY,
)
BUDGET_LIMIT = Gauge(
    "keel_budget_limit_usd",
    "Budget limit per tenant and period.",
    ["tenant", "period"],
    registry=REGISTRY,
)
BUDGET_SPENT = Gauge(
    "keel_budget_spent_usd",
    "Metered spend in the current period.",
    ["tenant", "period"],
    registry=REGISTRY,
)
BUDGET_REMAINING = Gauge(
    "keel_budget_remaining_usd",
    "Budget left in the current period: limit - spent - reserved by calls in flight.",
    ["tenant", "period"],
    registry=REGISTRY,
)
API_ADMITTED = Counter(
    "keel_api_admitted",
    "Interactive requests the API admitted (api/load_shedding.py), by priority.",
    ["priority"],
    registry=REGISTRY,
)
API_SHED = Counter(
    "keel_api_shed",
    "Interactive requests the API refused with 503 + Retry-After, by priority.",
    ["priority"],
    registry=REGISTRY,
)
API_IN_FLIGHT = Gauge(
    "keel_api_in_flight",
    "Interactive requests in flight in this API process.",
    registry=REGISTRY,
)
API_ADMISSION_LIMIT = Gauge(
    "keel_api_admission_limit",
    "How many interactive requests this API process admits at once (adapted to the latency "
    "budget).",
    registry=REGISTRY,
)
APPROVALS_PENDING = Gauge(
    "keel_approvals_pending",
    "Approval gates waiting for a human decision.",
    registry=REGISTRY,
)
APPROVALS_PAST_HALF_DEADLINE = Gauge(
    "keel_approvals_past_half_deadline",
    "Pending approval gates that have waited more than half the time to their deadline.",
    ["tenant"],
    registry=REGISTRY,
)
APPROVALS_ESCALATED = Gauge(
    "keel_approvals_escalated",
    "Pending approval gates already escalated to the next role at least once.",
    ["tenant"],
    registry=REGISTRY,
)
BATCH_ITEMS = Gauge(
    "keel_batch_items",
    "Items of each batch not yet finished (loading, running or paused), by item status "
    "(pending, running, ok, failed, skipped).",
    ["batch_id", "tenant", "status"],
    registry=REGISTRY,
)
BATCH_STATUS = Gauge(
    "keel_batch_status",
    "1 for each unfinished batch, labelled with its status (loading, running, paused).",
    ["batch_id", "tenant", "status"],
    registry=REGISTRY,
)
TASK_QUEUE_BACKLOG = Gauge(
    "keel_task_queue_backlog",
    "Tasks waiting in a task queue for a worker (Temporal's approximate backlog count).",
    ["task_queue", "task_type"],
    registry=REGISTRY,
)
TASK_QUEUE_BACKLOG_AGE = Gauge(
    "keel_task_queue_backlog_age_seconds",
    "How long the oldest task of a task queue's backlog has waited.",
    ["task_queue", "task_type"],
    registry=REGISTRY,
)
TASK_QUEUE_POLLERS = Gauge(
    "keel_task_queue_pollers",
    "Workers that polled a task queue in the last minute, as Temporal saw them.",
    ["task_queue", "task_type"],
    registry=REGISTRY,
)

BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class AttemptMetrics:
    provider: str
    model: str
    tenant: str
    outcome: str
    attempt: int
    error_class: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    duration_seconds: float | None = None
    first_token_seconds: float | None = None
    route: str | None = None
    chain: str = "primary"
    call_class: str = "interactive"


def record_llm_attempt(metrics: AttemptMetrics) -> None:
    """Count one attempt; called once per attempt, after its ledger row is written."""
    p, m = metrics.provider, metrics.model
    route = (metrics.route or EXPLICIT_MODELS_ROUTE, metrics.chain, metrics.call_class)
    LLM_ATTEMPTS.labels(p, m, metrics.outcome, metrics.error_class or "", *route).inc()
    if metrics.attempt > 1:
        LLM_RETRIES.labels(p, m).inc()
    # A response-cache hit repeats an earlier answer's usage, but nothing was billed for it.
    billed = metrics.outcome != LedgerOutcome.CACHED
    for kind, count in (
        ("input", metrics.input_tokens),
        ("output", metrics.output_tokens),
        ("cached", metrics.cached_tokens),
        ("reasoning", metrics.reasoning_tokens),
    ):
        if count and billed:
            LLM_TOKENS.labels(p, m, metrics.tenant, kind).inc(count)
    if metrics.cost_usd:
        LLM_COST.labels(p, m, metrics.tenant, *route[:2]).inc(float(metrics.cost_usd))
    if metrics.duration_seconds is not None:
        LLM_LATENCY.labels(p, m, metrics.outcome, *route).observe(metrics.duration_seconds)
    if metrics.first_token_seconds is not None:
        LLM_FIRST_TOKEN.labels(p, m, *route).observe(metrics.first_token_seconds)


def record_breaker_state(provider: str, model: str, state: str) -> None:
    BREAKER_STATE.labels(provider, model).set(BREAKER_STATE_VALUES.get(state, 0))


# --- Gauges of shared state, re-read from Postgres and Temporal ----------------------------

_BREAKERS = text("SELECT provider, model, state FROM circuit_breakers")
_APPROVALS_PENDING = text("SELECT count(*) FROM approvals WHERE status = 'pending'")
# "Past half its deadline": the alert that gives a person time to act before the gate escalates
# or times out (a gate with no deadline waits as long as it must, and never counts).
_APPROVALS_WAITING = text(
    """
    SELECT tenant,
           count(*) FILTER (
               WHERE deadline_at IS NOT NULL
                 AND now() > requested_at + (deadline_at - requested_at) / 2
           ) AS past_half_deadline,
           count(*) FILTER (WHERE escalation_level > 0) AS escalated
    FROM approvals
    WHERE status = 'pending'
    GROUP BY tenant
    """
)
# Unfinished batches only, so the series end with the batch. LATERAL makes Postgres count each
# unfinished batch's items on the (batch_id, status, line_no) index; a plain join scanned every
# item of every batch ever run (measured beside 400k finished items, one running 100k-item
# batch: 351 ms per refresh with the join, 36 ms with LATERAL).
_ACTIVE_BATCH_ITEMS = text(
    """
    SELECT b.id, b.tenant, b.status AS batch_status, i.status, i.items
    FROM batches b
    LEFT JOIN LATERAL (
        SELECT status, count(*) AS items
        FROM batch_items
        WHERE batch_id = b.id
        GROUP BY status
    ) i ON true
    WHERE b.status IN ('loading', 'running', 'paused')
    """
)
BATCH_ITEM_STATUSES = ("pending", "running", "ok", "failed", "skipped")


# Every tenant's budgets, read in the session given. The worker passes the budget store's reader:
# infra is below activities and does not import them.
BudgetReader = Callable[[AsyncSession], Awaitable[list[BudgetState]]]


async def refresh_state_gauges(read_budgets: BudgetReader) -> None:
    """Breakers, budgets, approvals and unfinished batches as Postgres has them now."""
    async with session_factory()() as session:
        breakers = list(await session.execute(_BREAKERS))
        states = await read_budgets(session)
        pending = int((await session.execute(_APPROVALS_PENDING)).scalar_one())
        waiting = list(await session.execute(_APPROVALS_WAITING))
        batch_items = list(await session.execute(_ACTIVE_BATCH_ITEMS))
    for row in breakers:
        record_breaker_state(row.provider, row.model, row.state)
    APPROVALS_PENDING.set(pending)
    # Cleared before each refill: a budget removed, a gate decided or a batch finished
    # disappears instead of freezing at its last value.
    for metric in (
        BUDGET_LIMIT,
        BUDGET_SPENT,
        BUDGET_REMAINING,
        APPROVALS_PAST_HALF_DEADLINE,
        APPROVALS_ESCALATED,
        BATCH_ITEMS,
        BATCH_STATUS,
    ):
        metric.clear()
    for state in states:
        BUDGET_LIMIT.labels(state.tenant, state.period).set(float(state.limit_usd))
        BUDGET_SPENT.labels(state.tenant, state.period).set(float(state.spent_usd))
        BUDGET_REMAINING.labels(state.tenant, state.period).set(float(state.left_usd))
    for row in waiting:
        APPROVALS_PAST_HALF_DEADLINE.labels(row.tenant).set(row.past_half_deadline)
        APPROVALS_ESCALATED.labels(row.tenant).set(row.escalated)
    for row in batch_items:
        BATCH_STATUS.labels(row.id, row.tenant, row.batch_status).set(1)
        for status in BATCH_ITEM_STATUSES:  # every status has a series, zero included
            BATCH_ITEMS.labels(row.id, row.tenant, status).inc(0)
        if row.status is not None:
            BATCH_ITEMS.labels(row.id, row.tenant, row.status).set(row.items)


_TASK_TYPES = {
    "workflow": TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    "activity": TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}
# A poller Temporal last saw longer ago than this is taken for a stopped worker (the server
# keeps listing pollers for minutes after they stop).
POLLER_SEEN_SECONDS = 60


async def refresh_task_queue_gauges(client: Client, task_queues: list[str]) -> None:
    """Backlog and live pollers of each of keel's task queues, as Temporal reports them. Every
    worker reports every queue, so a queue whose workers are all down still has a series."""
    for queue in task_queues:
        for task_type, queue_type in _TASK_TYPES.items():
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=queue_type,
                    report_stats=True,
                    report_pollers=True,
                ),
                timeout=timedelta(seconds=5),
            )
            now = datetime.now(UTC)
            live = [
                poller
                for poller in described.pollers
                if poller.HasField("last_access_time")
                and (now - poller.last_access_time.ToDatetime(UTC)).total_seconds()
                <= POLLER_SEEN_SECONDS
            ]
            TASK_QUEUE_POLLERS.labels(queue, task_type).set(len(live))
            if described.HasField("stats"):  # servers before 1.25 do not report it
                stats = described.stats
                TASK_QUEUE_BACKLOG.labels(queue, task_type).set(stats.approximate_backlog_count)
                TASK_QUEUE_BACKLOG_AGE.labels(queue, task_type).set(
                    stats.approximate_backlog_age.ToTimedelta().total_seconds()
                )


async def refresh_state_gauges_forever(
    settings: KeelSettings, read_budgets: BudgetReader, client: Client | None = None
) -> None:
    queues = [settings.interactive_task_queue, settings.batch_task_queue]
    while True:
        try:
            await refresh_state_gauges(read_budgets)
            if client is not None:
                await refresh_task_queue_gauges(client, queues)
        except Exception as error:  # a database or Temporal blip must not stop the worker
            log.warning("metrics.refresh_failed", error=f"{type(error).__name__}: {error}")
        await asyncio.sleep(settings.metrics_refresh_seconds)


# --- The Temporal SDK's metrics -------------------------------------------------------------


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def temporal_runtime_with_metrics() -> tuple[Runtime, str]:
    """A Temporal Runtime whose SDK metrics are served on a private loopback port, and the
    URL keel's endpoint reads them from. Create it once per process, before the client."""
    address = f"127.0.0.1:{free_loopback_port()}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    return runtime, f"http://{address}/metrics"


# --- The endpoint ---------------------------------------------------------------------------


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/healthz"):
            self._reply(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/metrics":
            self._reply(200, self.server.exposition(), CONTENT_TYPE_LATEST)
        else:
            self._reply(404, b"not found; metrics are at /metrics\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every 15 s would drown the worker's log


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    sdk_metrics_url: str | None = None

    def exposition(self) -> bytes:
        body = generate_latest(REGISTRY)
        if self.sdk_metrics_url:
            try:
                with urllib.request.urlopen(self.sdk_metrics_url, timeout=2) as response:
                    body += response.read()
            except OSError as error:
                body += f"# temporal SDK metrics unavailable: {error}\n".encode()
        return body


class MetricsServer:
    """``/metrics`` (keel's registry, then the SDK's text) and ``/healthz`` on a thread."""

    def __init__(self, host: str, port: int, sdk_metrics_url: str | None = None) -> None:
        self.requested = (host, port)
        self.sdk_metrics_url = sdk_metrics_url
        self._server: _MetricsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        host, port = self.requested
        try:
            server = _MetricsHTTPServer((host, port), _MetricsHandler)
        except OSError as error:
            if error.errno != errno.EADDRINUSE or port == 0:
                raise
            # Two workers on one host (the dev stack): the second takes a free port and says so.
            server = _MetricsHTTPServer((host, 0), _MetricsHandler)
            log.warning(
                "metrics.port_in_use",
                requested_port=port,
                port=server.server_address[1],
                hint="set KEEL_METRICS_PORT per worker to choose the port",
            )
        server.sdk_metrics_url = self.sdk_metrics_url
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="keel-metrics", daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(5)
        self._server = None
        self._thread = None
