"""The mocks stand in for keel's activities only while they keep the real ones' names and models:
a renamed activity or a changed input model must fail here, not pass silently in the workflow
tests (a workflow would schedule the new name; a mock of the old one would never be asked)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from infra.settings import KeelSettings
from tests.workflows.mocks import KeelMocks
from workers.registry import queue_contents


def signatures(activities: list[Callable[..., Any]]) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for function in activities:
        definition = activity._Definition.must_from_callable(function)
        assert definition.name is not None
        found[definition.name] = (*(definition.arg_types or []), definition.ret_type)
    return found


def test_every_registered_activity_has_a_mock_with_its_name_and_models() -> None:
    settings = KeelSettings()
    real: dict[str, tuple[object, ...]] = {}
    for queue in (settings.interactive_task_queue, settings.batch_task_queue):
        real |= signatures(list(queue_contents(queue, settings).activities))

    mocked = signatures(KeelMocks(task_queue="unused").activities())

    assert sorted(mocked) == sorted(real)
    for name, signature in real.items():
        assert mocked[name] == signature, f"mock of {name} takes or returns other models"
