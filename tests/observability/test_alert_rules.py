"""keel's Prometheus rules (deploy/prometheus/rules) and Alertmanager routing, checked offline.

``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks the rule files and
runs the unit tests in deploy/prometheus/tests, where every alert fires on the series that should
fire it and stays quiet beside them. Without promtool these tests fail, saying how to install it:
an alert nobody tested is worse than none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from starters.cli import app

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (Debian) provides it; "
            ".ci/run installs it"
        )
    return found


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_the_rule_files_are_valid() -> None:
    assert [p.name for p in RULE_FILES] == ["keel-alerts.yml", "keel-recording.yml"]
    output = run_promtool("check", "rules", *map(str, RULE_FILES))
    assert output.count("SUCCESS") == len(RULE_FILES)


def test_every_alert_passes_its_unit_tests() -> None:
    output = run_promtool("test", "rules", *map(str, RULE_TESTS))
    assert "FAILED" not in output
    assert output.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == ["../rules/keel-recording.yml", "../rules/keel-alerts.yml"]
        for test in spec["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - fired == set(), "alerts without a test that makes them fire"
    assert fired - alerts == set(), "tests of alerts that do not exist"


def test_the_rule_tests_fail_when_an_alert_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules with one threshold moved."""
    (tmp_path / "rules").mkdir()
    for path in RULE_FILES:
        text = path.read_text()
        if path.name == "keel-alerts.yml":
            text = text.replace(
                "keel_circuit_breaker_state) == 2", "keel_circuit_breaker_state) == 1"
            )
        (tmp_path / "rules" / path.name).write_text(text)
    (tmp_path / "tests").mkdir()
    broken = tmp_path / "tests" / "keel-alerts.test.yml"
    broken.write_text((PROMETHEUS / "tests" / "keel-alerts.test.yml").read_text())
    result = subprocess.run(
        [promtool(), "test", "rules", str(broken)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "KeelCircuitBreakerOpen" in result.stdout + result.stderr


# The keel commands an alert's summary or description names, e.g. `keel batch status ID`.
KEEL_COMMAND = re.compile(r"`(keel [^`]+)`")
TEMPLATE = re.compile(r"\{\{[^}]*\}\}")


def test_every_alert_names_a_keel_command_that_exists() -> None:
    cli = typer.main.get_command(app)
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        commands = KEEL_COMMAND.findall(annotations["summary"])
        assert commands, f"{rule['alert']}: the summary names no keel command"
        for command in commands + KEEL_COMMAND.findall(annotations["description"]):
            words = TEMPLATE.sub("VALUE", command).split()[1:]
            for alternative in words[0].split("|"):  # `keel approve|reject|edit ...`
                resolved: Any = cli  # typer's own click: a group is what has commands
                rest = [alternative, *words[1:]]
                while hasattr(resolved, "commands") and rest and rest[0] in resolved.commands:
                    resolved = resolved.commands[rest.pop(0)]
                # A group runs only when it has a callback of its own (`keel approvals`).
                runs = not hasattr(resolved, "commands") or resolved.invoke_without_command
                assert runs, f"{rule['alert']}: `{command}` is not a command"
                options = {name for param in resolved.params for name in param.opts}
                for word in rest:
                    if word.startswith("--"):
                        assert word in options, f"{rule['alert']}: `{command}` has no {word}"


def test_alertmanager_routes_every_severity_to_a_receiver() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    receivers = {receiver["name"] for receiver in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    for child in route["routes"]:
        assert child["receiver"] in receivers
    paged = [r for r in route["routes"] if r["matchers"] == ['severity="page"']]
    assert [r["receiver"] for r in paged] == ["keel-page"]
    alerts = {rule["alert"] for rule in alert_rules()}
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            name, _, pattern = matcher.partition("=")
            assert name == "alertname", matcher
            named = re.fullmatch(r'~?"([^"]+)"', pattern)
            assert named, matcher
            assert any(re.fullmatch(named.group(1), alert) for alert in alerts), matcher


def test_compose_prometheus_loads_the_rules_and_alerts_alertmanager(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # The workers' task_queue labels (backlogs of every queue, SDK metrics) are the truth the
    # rules group by; the scrape's own task_queue label must not rename them.
    (workers,) = [job for job in config["scrape_configs"] if job["job_name"] == "keel-workers"]
    assert workers["honor_labels"] is True
    assert any(r.get("target_label") == "task_queue" for r in workers["relabel_configs"])
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    (target,) = alertmanagers["static_configs"][0]["targets"]
    assert target == "alertmanager:9093"  # the service below, on Alertmanager's own port
    assert services["alertmanager"]["ports"][0].endswith(":9093")
    assert (
        "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
        in (services["alertmanager"]["volumes"])
    )
    # The config as the container sees it, its rule files where the mount puts them.
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    output = run_promtool("check", "config", str(copy))
    for path in RULE_FILES:
        assert f"Checking {path}" in output
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output
