"""JobWorkflow's orchestration: the child workflow's outcome recorded, and the callback delivered
(retried by Temporal, backoff skipped) until the receiver acknowledges it."""

from __future__ import annotations

from contracts.jobs import (
    JobInput,
    JobKind,
    JobStatus,
)
from contracts.llm import ErrorClass
from tests.workflows.conftest import Rig
from tests.workflows.mocks import DELIVER_CALLBACK, RECORD_JOB
from workflows.jobs import JobWorkflow

CALLBACK = "https://receiver.example.test/keel"


def ask_job(callback_url: str | None = CALLBACK) -> JobInput:
    return JobInput(
        kind=JobKind.ASK,
        input={"prompt": "What is keel?", "fallback_policy": "fail"},
        tenant="acme",
        callback_url=callback_url,
    )


async def test_a_callback_is_retried_until_acknowledged(rig: Rig) -> None:
    rig.mocks.jobs.callback_failures = 3

    handle = await rig.start(JobWorkflow.run, ask_job(), workflow_id="job-retried")
    result = await handle.result()

    assert result.status == JobStatus.COMPLETED and result.callback_acknowledged
    assert result.result is not None
    assert result.result["answer"]["text"] == "model-a answers: What is keel?"
    deliveries = [c for c in rig.mocks.log.calls if c.name == DELIVER_CALLBACK]
    assert [c.attempt for c in deliveries] == [1, 2, 3, 4]
    assert {c.input.job_id for c in deliveries} == {"job-retried"}
    running, done = rig.mocks.inputs(RECORD_JOB)
    assert (running.status, running.callback_url, running.tenant) == (
        JobStatus.RUNNING,
        CALLBACK,
        "acme",
    )
    assert done.status == JobStatus.COMPLETED and done.result == result.result
    # The work ran as a child workflow of its own (its own history and audit trail).
    assert {e.workflow_id for e in rig.mocks.audit.of_type("ask.started")} == {"job-retried-ask"}


async def test_a_refused_callback_is_not_retried_and_the_job_still_completes(rig: Rig) -> None:
    rig.mocks.jobs.callback_refused = True

    result = await (await rig.start(JobWorkflow.run, ask_job())).result()

    assert result.status == JobStatus.COMPLETED and not result.callback_acknowledged
    assert len(rig.mocks.inputs(DELIVER_CALLBACK)) == 1


async def test_a_failed_child_is_recorded_as_a_failed_job_and_still_called_back(
    rig: Rig,
) -> None:
    rig.mocks.llm.fail_when = lambda call: ErrorClass.AUTHENTICATION

    result = await (await rig.start(JobWorkflow.run, ask_job())).result()

    assert result.status == JobStatus.FAILED and result.result is None
    assert result.error is not None and "every model in route" in result.error
    assert result.callback_acknowledged
    done = rig.mocks.inputs(RECORD_JOB)[-1]
    assert done.status == JobStatus.FAILED and done.error == result.error


async def test_a_job_without_a_callback_url_sends_nothing(rig: Rig) -> None:
    result = await (await rig.start(JobWorkflow.run, ask_job(callback_url=None))).result()

    assert result.status == JobStatus.COMPLETED and not result.callback_acknowledged
    assert rig.mocks.inputs(DELIVER_CALLBACK) == []
    assert [r.status for r in rig.mocks.inputs(RECORD_JOB)] == [
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
    ]
