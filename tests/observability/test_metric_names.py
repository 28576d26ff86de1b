"""Every metric a rule or the dashboard reads is one a live worker serves: a renamed metric or
label-less typo would otherwise leave an alert silent forever (PromQL over a missing series is
simply empty). The worker is the real entry point, after one real call, scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.cost.support import CHEAP, ask
from tests.observability.conftest import scrape

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
# Series Prometheus makes itself for every target it scrapes.
PROMETHEUS_SERIES = {"up"}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names and
    durations left out)."""
    stripped = _STRINGS.sub('""', expression)
    stripped = _MATCHERS.sub(" ", stripped)
    stripped = _RANGES.sub(" ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    stripped = re.sub(r"\boffset\s+\w+", " ", stripped)
    return {name for name in _IDENTIFIER.findall(stripped) if name.lower() not in _KEYWORDS}


def test_the_expression_reader_finds_metrics_and_nothing_else() -> None:
    expression = """
        sum by (route, le) (rate(keel_llm_call_duration_seconds_bucket{outcome="ok"}[5m]))
        / on (route) group_left () route:keel_x:ratio_rate5m offset 10m
        and max_over_time(keel_batch_status{status!="running"}[10m:1m]) > bool 2
        or vector(30) unless up{job="keel-workers"}
    """
    assert metric_names(expression) == {
        "keel_llm_call_duration_seconds_bucket",
        "route:keel_x:ratio_rate5m",
        "keel_batch_status",
        "up",
    }


def rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]


def served_names(exposition: str) -> set[str]:
    """Sample names in the exposition, plus the names a declared family serves once it has a
    labelled child (prometheus_client declares ``keel_llm_fallbacks`` before any fallback)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            bare = family.removesuffix("_total")
            names |= {bare + suffix for suffix in suffixes.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


async def test_every_metric_a_rule_or_the_dashboard_reads_is_served_by_a_worker(
    worker_metrics: str, client: Client, keel_settings: KeelSettings, simulator: SimServer
) -> None:
    # One call, so the Temporal SDK's activity and workflow metrics exist too.
    await ask(client, keel_settings, models=[CHEAP], tenant="names")
    served = served_names(await asyncio.to_thread(scrape, worker_metrics))
    assert {"keel_llm_attempts_total", "temporal_activity_schedule_to_start_latency_bucket"} <= (
        served
    )

    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule.get("record") or rule["alert"])
    for title, expression in dashboard_expressions():
        for name in metric_names(expression):
            used.setdefault(name, set()).add(f"dashboard panel {title!r}")

    unknown = {
        name: sorted(users)
        for name, users in used.items()
        if name not in served | recorded | PROMETHEUS_SERIES
    }
    assert unknown == {}, "metrics no worker serves and no rule records"
    # Every recording rule feeds an alert or a panel (or another rule that does).
    assert recorded - used.keys() == set(), "recording rules nothing reads"
    assert {name for name in used if name.startswith("keel_")} >= {
        "keel_llm_attempts_total",
        "keel_llm_call_duration_seconds_bucket",
        "keel_circuit_breaker_state",
        "keel_task_queue_backlog",
        "keel_batch_items",
    }


def test_the_dashboard_reads_the_provisioned_data_source_and_every_panel_has_a_query() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert [path.name for path in DASHBOARDS] == ["keel.json"]
    dashboard = json.loads(DASHBOARDS[0].read_text())
    titles = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    # What the issue asks the dashboard to show.
    for wanted in (
        "Calls per second",
        "Error rate",
        "p50 / p99 latency by route",
        "Time to first token",
        "Cost per hour by tenant and model",
        "Tokens",
        "Circuit breakers",
        "Task queue backlog",
        "Approvals pending",
        "Batch progress",
    ):
        assert any(title.startswith(wanted) for title in titles), wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
