"""Async-job activities: the job's row, and its callback delivered durably and signed.

``deliver_job_callback`` POSTs the outcome to the job's callback URL and is retried by Temporal
until the receiver acknowledges it (any 2xx). The acknowledgement is recorded once
(``callback_acknowledged_at``): an attempt that finds it set sends nothing. Every delivery of a
job carries the same ``X-Keel-Job-Id``, so a receiver can drop a repeat, which can only happen if
keel crashed between the receiver's 2xx and recording it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx2
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.job_models import (
    CallbackDelivery,
    CallbackOutcome,
    JobRecord,
    JobStatus,
)
from infra.callback_signing import SIGNATURE_HEADER, signature_header
from infra.database import session_factory
from infra.settings import get_settings
from infra.tables import Job

log = structlog.get_logger(__name__)


@activity.defn(name="record_job")
async def record_job(record: JobRecord) -> None:
    """Create the job's row (running), or record its outcome; finished rows are never reopened."""
    async with session_factory().begin() as db:
        if record.status == JobStatus.RUNNING:
            await db.execute(
                insert(Job)
                .values(
                    id=record.job_id,
                    tenant=record.tenant,
                    kind=record.kind.value,
                    status=record.status.value,
                    callback_url=record.callback_url,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
            return
        await db.execute(
            update(Job)
            .where(Job.id == record.job_id, Job.status == JobStatus.RUNNING.value)
            .values(
                status=record.status.value,
                result=record.result,
                error=record.error,
                completed_at=func.now(),
            )
        )


def callback_body(job: Job) -> bytes:
    return json.dumps(
        {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "result": job.result,
            "error": job.error,
            "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def _retry_after(response: httpx2.Response) -> timedelta | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return timedelta(seconds=min(max(seconds, 0.0), 3600.0))


@activity.defn(name="deliver_job_callback")
async def deliver_job_callback(delivery: CallbackDelivery) -> CallbackOutcome:
    settings = get_settings()
    if settings.callback_signing_secret is None:
        raise ApplicationError(
            "job callbacks need KEEL_CALLBACK_SIGNING_SECRET to sign them",
            type="CallbackNotConfigured",
            non_retryable=True,
        )
    sessions = session_factory()
    async with sessions.begin() as db:
        job = (await db.execute(select(Job).where(Job.id == delivery.job_id))).scalar_one()
        if job.callback_acknowledged_at is not None:
            return CallbackOutcome(already_acknowledged=True, attempts=job.callback_attempts)
        await db.execute(
            update(Job).where(Job.id == job.id).values(callback_attempts=Job.callback_attempts + 1)
        )
    assert job.callback_url is not None
    body = callback_body(job)
    attempt = activity.info().attempt
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "keel-callbacks",
        "X-Keel-Job-Id": job.id,
        "X-Keel-Delivery-Attempt": str(attempt),
        SIGNATURE_HEADER: signature_header(
            settings.callback_signing_secret.get_secret_value(), body
        ),
    }
    status_code: int | None = None
    failure: str | None = None
    retry_after: timedelta | None = None
    try:
        async with httpx2.AsyncClient(timeout=settings.callback_timeout_seconds) as http:
            response = await http.post(job.callback_url, content=body, headers=headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            failure = f"receiver answered {status_code}"
            retry_after = _retry_after(response)
    except httpx2.HTTPError as error:
        failure = f"{type(error).__name__}: could not reach the receiver"

    async with sessions.begin() as db:
        await db.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(callback_last_status=status_code, callback_last_error=failure)
        )
        if failure is None:
            await db.execute(
                update(Job)
                .where(Job.id == job.id, Job.callback_acknowledged_at.is_(None))
                .values(callback_acknowledged_at=func.now())
            )
    if failure is not None:
        log.warning("job.callback_failed", job_id=job.id, attempt=attempt, status=status_code)
        # Retryable: Temporal retries until the receiver acknowledges (or the job's
        # schedule-to-close deadline passes).
        raise ApplicationError(
            f"callback for job {job.id} not acknowledged: {failure}",
            type="CallbackNotAcknowledged",
            next_retry_delay=retry_after,
        )
    log.info("job.callback_acknowledged", job_id=job.id, attempt=attempt)
    return CallbackOutcome(status_code=status_code, attempts=job.callback_attempts + 1)


JOB_ACTIVITIES: list[Callable[..., Any]] = [record_job, deliver_job_callback]
