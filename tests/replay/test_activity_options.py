"""The options sets workflows spread into activity calls (workflows/activity_calls.py) are the ones
the recorded histories were scheduled with: gathering them in one module changed no timeout and
no retry policy. Replay does not compare these (only command types and order), so this does."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.history.v1 import ActivityTaskScheduledEventAttributes
from temporalio.client import WorkflowHistory

from workflows.activity_calls import (
    BATCH_DATABASE,
    PROVIDER_BATCH_CALL,
    PUBLISH,
    ActivityOptions,
)

HISTORIES = Path(__file__).parent / "histories"

# Regular activities scheduled with a fixed options set (the LLM call's come from its route).
OPTIONS_OF: dict[str, ActivityOptions] = {
    "begin_batch_run": BATCH_DATABASE,
    "claim_batch_items": BATCH_DATABASE,
    "record_batch_item_outcomes": BATCH_DATABASE,
    "publish_document": PUBLISH,
    "plan_provider_chunks": BATCH_DATABASE,
    "submit_provider_chunk": PROVIDER_BATCH_CALL,
    "collect_provider_chunk": PROVIDER_BATCH_CALL,
}
# What the server records for a retry policy field the workflow left unset.
SERVER_DEFAULT_INITIAL_INTERVAL = timedelta(seconds=1)
SERVER_DEFAULT_BACKOFF = 2.0


def _seconds(duration: Duration) -> timedelta:
    return duration.ToTimedelta()


def _scheduled() -> list[tuple[str, str, ActivityTaskScheduledEventAttributes]]:
    found = []
    for path in sorted(HISTORIES.glob("*.json")):
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        for event in history.events:
            if event.HasField("activity_task_scheduled_event_attributes"):
                attributes = event.activity_task_scheduled_event_attributes
                if attributes.activity_type.name in OPTIONS_OF:
                    found.append((path.stem, attributes.activity_type.name, attributes))
    return found


def test_the_histories_schedule_activities_with_fixed_options() -> None:
    names = {name for _, name, _ in _scheduled()}
    assert names == set(OPTIONS_OF), "re-recorded histories must still cover these activities"


@pytest.mark.parametrize(("history", "name", "attributes"), _scheduled())
def test_recorded_options_equal_the_options_set(
    history: str, name: str, attributes: ActivityTaskScheduledEventAttributes
) -> None:
    options = OPTIONS_OF[name]
    assert _seconds(attributes.start_to_close_timeout) == options["start_to_close_timeout"]
    assert _seconds(attributes.heartbeat_timeout) == options.get("heartbeat_timeout", timedelta(0))
    policy = options["retry_policy"]
    retry = attributes.retry_policy
    assert _seconds(retry.maximum_interval) == policy.maximum_interval
    assert retry.maximum_attempts == policy.maximum_attempts
    assert list(retry.non_retryable_error_types) == list(policy.non_retryable_error_types or [])
    assert _seconds(retry.initial_interval) == (
        policy.initial_interval or SERVER_DEFAULT_INITIAL_INTERVAL
    )
    assert retry.backoff_coefficient == (policy.backoff_coefficient or SERVER_DEFAULT_BACKOFF)
