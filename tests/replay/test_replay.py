"""Recorded histories of every workflow kind replay against the current code.

A change that would break running workflows (a new activity before an old one, a removed step)
fails here until it is guarded with ``workflow.patched`` or ships as a new workflow version.
Re-record after an intended, compatible change: ``python -m tests.replay.record``.

The histories are recorded unencrypted and replayed with keel's (encrypting) data converter: a
history written before payload encryption was turned on must keep replaying after it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from infra.settings import KeelSettings
from infra.temporal_client import KeelPlugin
from tests.replay.scenarios import FROZEN_HISTORIES, SCENARIOS
from workers.registry import all_workflows

HISTORIES = Path(__file__).parent / "histories"


def test_every_scenario_has_a_recorded_history() -> None:
    recorded = {path.stem for path in HISTORIES.glob("*.json")}
    assert set(SCENARIOS) <= recorded, f"record with python -m tests.replay.record: {recorded}"


@pytest.mark.parametrize("name", sorted({*SCENARIOS, *FROZEN_HISTORIES}))
async def test_history_replays_against_current_code(name: str) -> None:
    path = HISTORIES / f"{name}.json"
    history = WorkflowHistory.from_json(f"replay-{name}", path.read_text())
    settings = KeelSettings()
    replayer = Replayer(workflows=all_workflows(settings), plugins=[KeelPlugin(settings)])
    # Raises on any nondeterminism between the recorded run and today's workflow code.
    await replayer.replay_workflow(history)
