"""Workflows call activities by reference (contracts/activities.py), not by importing them: each
reference must name an activity the workers register, with the input and output types the activity
is annotated with, and workflow code must not pull in the activities' I/O libraries."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from contracts import activities as refs
from infra.settings import KeelSettings
from workers.registry import queue_contents


def _registered() -> dict[str, Any]:
    settings = KeelSettings()
    found: dict[str, Any] = {}
    for queue in (settings.interactive_task_queue, settings.batch_task_queue):
        for function in queue_contents(queue, settings).activities:
            definition = getattr(function, "__temporal_activity_definition")
            found[definition.name] = definition
    return found


def test_every_registered_activity_has_a_reference_and_no_reference_is_dangling() -> None:
    registered = _registered()
    referenced = {ref.name for ref in refs.ALL}
    assert sorted(referenced) == sorted(registered)


def test_each_reference_has_its_activitys_input_and_output_types() -> None:
    registered = _registered()
    for ref in refs.ALL:
        definition = registered[ref.name]
        assert definition.arg_types == [ref.input], ref.name
        assert definition.ret_type == ref.output, ref.name


def test_workflow_code_imports_no_database_http_or_provider_library() -> None:
    # A fresh interpreter: this test process has imported the activities already.
    code = (
        "import sys, workflows.ask, workflows.batch, workflows.chat_session,"
        " workflows.document_review, workflows.jobs;"
        "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'httpx2', 'openai', 'anthropic')"
        " if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
