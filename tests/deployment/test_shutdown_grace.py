"""A worker's drain time after SIGTERM (infra/settings.py) stays under the grace its platform
gives it before SIGKILL: else a scale-down kills calls that were allowed to finish."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from infra.settings import KeelSettings

REPO = Path(__file__).resolve().parents[2]
# Time the process needs after the drain: tracing flush, metrics server, exit.
TEARDOWN_S = 5


def test_each_worker_drains_within_its_kubernetes_and_compose_grace() -> None:
    settings = KeelSettings()
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for queue in (settings.interactive_task_queue, settings.batch_task_queue):
        name = queue.removeprefix("keel-")
        manifest = yaml.safe_load(
            (REPO / "deploy" / "kubernetes" / "base" / f"worker-{name}.yaml").read_text()
        )
        kubernetes_grace = manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        match = re.fullmatch(r"(\d+)s", compose[f"worker-{name}"]["stop_grace_period"])
        assert match is not None
        compose_grace = int(match.group(1))
        drain = settings.shutdown_grace_seconds(queue)
        assert drain + TEARDOWN_S <= kubernetes_grace, (queue, drain, kubernetes_grace)
        assert drain + TEARDOWN_S <= compose_grace, (queue, drain, compose_grace)
