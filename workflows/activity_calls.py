"""The one way workflow code calls an activity: by its reference in ``contracts.activities`` (name,
input and output type), with the options of its kind spread into the call::

    roster = await call_local(LOAD_REVIEWER_ROSTER, request, **GATE_RECORD)
    counts = await call(SET_BATCH_STATUS, status, **BATCH_DATABASE, summary="stop")

The activity functions are never imported here, so workflow modules stay free of SQLAlchemy,
httpx and the provider SDKs (import-linter checks it: ``make lint``).

The option sets are part of each workflow's behaviour: their values are those the workflows
used before they were gathered here, kept identical (a retry policy decides how long a workflow
waits on a database blip). The LLM call's options depend on the route's policy; they are built
in workflows/llm_calls.py (``llm_call_options``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypedDict, TypeVar, Unpack, cast

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy

with workflow.unsafe.imports_passed_through():
    from contracts.activities import ActivityRef

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


class ActivityOptions(TypedDict, total=False):
    """Where and how long a kind of activity runs, and how it is retried
    (``workflow.execute_activity``'s options)."""

    task_queue: str
    schedule_to_close_timeout: timedelta
    start_to_close_timeout: timedelta
    heartbeat_timeout: timedelta
    retry_policy: RetryPolicy


class LocalActivityOptions(TypedDict, total=False):
    """How long a kind of local activity runs, and how it is retried
    (``workflow.execute_local_activity``'s options)."""

    schedule_to_close_timeout: timedelta
    start_to_close_timeout: timedelta
    retry_policy: RetryPolicy


async def call(
    ref: ActivityRef[InputT, OutputT],
    arg: InputT,
    *,
    summary: str | None = None,
    priority: Priority = Priority.default,
    **options: Unpack[ActivityOptions],
) -> OutputT:
    """Run ``ref`` as a regular activity and decode its result into ``ref.output``.
    ``summary`` is what the Web UI shows for the call (what and for what: "gpt-4o · draft");
    unset, the activity's name in words. ``priority`` unset inherits the workflow's."""
    result = await workflow.execute_activity(
        ref.name,
        arg,
        result_type=ref.output,
        summary=summary or _in_words(ref),
        priority=priority,
        **options,
    )
    return cast(OutputT, result)


async def call_local(
    ref: ActivityRef[InputT, OutputT],
    arg: InputT,
    *,
    summary: str | None = None,
    **options: Unpack[LocalActivityOptions],
) -> OutputT:
    """Run ``ref`` as a local activity (in the workflow's worker, recorded as a marker) and
    decode its result into ``ref.output``. ``summary`` as for :func:`call`."""
    result = await workflow.execute_local_activity(
        ref.name, arg, result_type=ref.output, summary=summary or _in_words(ref), **options
    )
    return cast(OutputT, result)


def _in_words(ref: ActivityRef[InputT, OutputT]) -> str:
    # Never empty in the Web UI ("No summary available"). The summary is user metadata, not a
    # command attribute: replay does not compare it, so changing it keeps histories replaying.
    return ref.name.replace("_", " ")


# --- Database --------------------------------------------------------------------------------

# A short local write or read (audit rows, session turns, job records): a few quick retries,
# then the workflow task fails and Temporal retries it.
LOCAL_RECORD = LocalActivityOptions(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=2)),
)

# An approval gate's records are retried until Postgres answers: a database blip must not decide
# a gate (or fail the workflow). Bugs (ValueError in the activity) are not retried.
GATE_RECORD = LocalActivityOptions(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy=RetryPolicy(
        maximum_interval=timedelta(seconds=30), non_retryable_error_types=["ValueError"]
    ),
)

# A batch's reads and writes of its items, retried until Postgres answers (regular or local).
_BATCH_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))
BATCH_DATABASE = ActivityOptions(
    start_to_close_timeout=timedelta(seconds=30), retry_policy=_BATCH_RETRY
)
BATCH_DATABASE_LOCAL = LocalActivityOptions(
    start_to_close_timeout=timedelta(seconds=30), retry_policy=_BATCH_RETRY
)
# Loading a batch file: long, heartbeating as it inserts.
BATCH_FILE_LOAD = ActivityOptions(
    start_to_close_timeout=timedelta(minutes=30),
    heartbeat_timeout=timedelta(minutes=2),
    retry_policy=_BATCH_RETRY,
)

# A provider batch API call (upload + create, status, results, cancel): retried until the
# provider answers, each attempt bounded; the results download heartbeats as it writes.
PROVIDER_BATCH_CALL = ActivityOptions(
    start_to_close_timeout=timedelta(minutes=10),
    heartbeat_timeout=timedelta(minutes=2),
    retry_policy=RetryPolicy(
        maximum_interval=timedelta(minutes=2),
        non_retryable_error_types=["ProviderUnavailable"],
    ),
)

# A batch page (activities/batch/pages.py): it heartbeats every second whatever its calls do, so
# a dead worker's page is retried after 30 s (a margin for a busy event loop; an attempt that
# misses it abandons the page to the next) and resumes from Postgres. Its calls are bounded by
# their own policy, the page only against a runaway. Retried until Postgres answers, like the
# batch's other database work.
BATCH_PAGE = ActivityOptions(
    start_to_close_timeout=timedelta(hours=1),
    heartbeat_timeout=timedelta(seconds=30),
    retry_policy=_BATCH_RETRY,
)

# Storing an approved review's output.
PUBLISH = ActivityOptions(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
)

# --- LLM -------------------------------------------------------------------------------------

# Planning a call's route (a local read of routes, budgets and breakers). An unknown route is the
# caller's mistake, not a blip: not retried.
ROUTE_PLAN = LocalActivityOptions(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["UnknownRoute"]),
)

# --- Webhooks --------------------------------------------------------------------------------

# The review webhook: a few attempts; a receiver's refusal or a missing URL is final.
REVIEW_WEBHOOK = ActivityOptions(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=5,
        non_retryable_error_types=["WebhookRejected", "WebhookNotConfigured"],
    ),
)

# A job's callback, retried until acknowledged: quickly at first, then every 5 minutes, for up
# to three days. Nothing here is non-retryable by type: a worker without the signing secret
# retries until it has one. A refused destination raises a non-retryable error itself.
JOB_CALLBACK_DEADLINE = timedelta(days=3)
JOB_CALLBACK = ActivityOptions(
    start_to_close_timeout=timedelta(seconds=60),
    schedule_to_close_timeout=JOB_CALLBACK_DEADLINE,
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=5),
        maximum_attempts=0,
    ),
)
