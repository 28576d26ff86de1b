"""Async-job activities: the job's row, and its callback delivered durably and signed.

``deliver_job_callback`` (:class:`JobActivities`) POSTs the outcome to the job's callback
URL and is retried by Temporal until the receiver acknowledges it (any 2xx). The
acknowledgement is recorded once (``callback_acknowledged_at``): an attempt that finds it set
sends nothing. Every delivery of a job carries the same ``X-Keel-Job-Id``, so a receiver can drop
a repeat, which can only happen if keel crashed between the receiver's 2xx and recording it.

Before anything is sent, the destination guard (infra/outbound_guard.py) resolves the callback
host and refuses loopback, private, link-local and metadata addresses unless
KEEL_CALLBACK_ALLOWED_DESTINATIONS allows them; the POST then goes to the address it checked, and
a redirect is never followed. A worker with no signing secret fails the attempt loudly (an error
log, the job's ``callback.last_error``) and Temporal retries it: a callback is never dropped.
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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.jobs import (
    CallbackDelivery,
    CallbackOutcome,
    JobRecord,
    JobStatus,
)
from infra.callback_signing import (
    SIGNATURE_HEADER,
    SigningSecretError,
    missing_secret_hint,
    signature_header,
    signing_secret,
)
from infra.outbound_guard import (
    CheckedDestination,
    DestinationInvalid,
    DestinationRefused,
    DestinationUnresolved,
    OutboundPolicy,
    Resolver,
    check_url,
    pinned_request,
    system_resolver,
)
from infra.settings import KeelSettings
from infra.tables import Job

log = structlog.get_logger(__name__)

ALLOWED_DESTINATIONS_VARIABLE = "KEEL_CALLBACK_ALLOWED_DESTINATIONS"


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


class JobActivities:
    """The job activities with what they depend on: the worker's settings (signing secret,
    allowed destinations, timeout), its database sessions, and the resolver the destination
    guard asks (tests map made-up names to private addresses with it; nothing leaves the
    machine)."""

    def __init__(
        self,
        settings: KeelSettings,
        sessions: async_sessionmaker[AsyncSession],
        resolver: Resolver = system_resolver,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._resolver = resolver
        self._transport = transport  # None: httpx's own (tests: one that records connections)

    def all(self) -> list[Callable[..., Any]]:
        return [self.record_job, self.deliver_job_callback]

    @activity.defn(name="record_job")
    async def record_job(self, record: JobRecord) -> None:
        """Create the job's row (running), or record its outcome; finished rows are never
        reopened."""
        async with self._sessions.begin() as db:
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

    @activity.defn(name="deliver_job_callback")
    async def deliver_job_callback(self, delivery: CallbackDelivery) -> CallbackOutcome:
        settings = self._settings
        async with self._sessions.begin() as db:
            job = (await db.execute(select(Job).where(Job.id == delivery.job_id))).scalar_one()
            if job.callback_acknowledged_at is not None:
                return CallbackOutcome(already_acknowledged=True, attempts=job.callback_attempts)
            await db.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(callback_attempts=Job.callback_attempts + 1)
            )
        assert job.callback_url is not None
        attempt = activity.info().attempt
        try:
            secret = signing_secret(settings)
            if secret is None:
                raise SigningSecretError(
                    "this worker has no callback signing secret: " + missing_secret_hint(settings)
                )
            destination = await check_url(
                job.callback_url,
                callback_destination_policy(settings),
                self._resolver,
                what="callback_url",
            )
        except SigningSecretError as error:
            # Retryable: the secret may be provided (and the worker restarted) while Temporal
            # keeps retrying; the job's row and the error log say what is missing meanwhile.
            await _record_attempt(self._sessions, job.id, None, f"not sent: {error}")
            log.error("job.callback_unsigned", job_id=job.id, attempt=attempt, error=str(error))
            raise ApplicationError(
                f"callback for job {job.id} not sent: {error}", type="CallbackSigningSecretMissing"
            ) from None
        except DestinationRefused as error:
            # Not retryable: the address is refused by policy, and trying again asks DNS again.
            await _record_attempt(self._sessions, job.id, None, f"refused: {error}")
            log.error("job.callback_refused", job_id=job.id, attempt=attempt,
                      address_class=error.address_class, setting=error.setting)  # fmt: skip
            raise ApplicationError(
                f"callback for job {job.id} refused: {error}",
                type="CallbackDestinationRefused",
                non_retryable=True,
            ) from None
        except DestinationInvalid as error:
            # A name that does not resolve (yet) is retried like an unreachable receiver; a URL
            # the guard cannot read never becomes sendable.
            unresolved = isinstance(error, DestinationUnresolved)
            await _record_attempt(self._sessions, job.id, None, f"not sent: {error}")
            log.warning("job.callback_failed", job_id=job.id, attempt=attempt, error=str(error))
            raise ApplicationError(
                f"callback for job {job.id} not sent: {error}",
                type="CallbackNotAcknowledged" if unresolved else "CallbackUrlInvalid",
                non_retryable=not unresolved,
            ) from None

        body = callback_body(job)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "keel-callbacks",
            "X-Keel-Job-Id": job.id,
            "X-Keel-Delivery-Attempt": str(attempt),
            SIGNATURE_HEADER: signature_header(secret, body),
        }
        status_code, failure, retry_after = await _post_pinned(
            destination, body, headers, settings.callback_timeout_seconds, self._transport
        )
        await _record_attempt(
            self._sessions, job.id, status_code, failure, acknowledged=failure is None
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


def callback_destination_policy(settings: KeelSettings) -> OutboundPolicy:
    """Where callbacks may go besides public addresses (KEEL_CALLBACK_ALLOWED_DESTINATIONS)."""
    return OutboundPolicy.parse(
        ALLOWED_DESTINATIONS_VARIABLE, settings.effective_callback_allowed_destinations
    )


async def _post_pinned(
    destination: CheckedDestination,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> tuple[int | None, str | None, timedelta | None]:
    """POST to the addresses the guard checked, in turn until one connects: never to whatever
    the name resolves to now (DNS rebinding), never through an environment proxy, never after
    a redirect. Returns (status, failure or None when acknowledged, Retry-After)."""
    failure = "no address to connect to"
    async with httpx2.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False, transport=transport
    ) as http:
        for address in destination.addresses:
            url, host_header, server_name = pinned_request(destination, address)
            try:
                response = await http.post(
                    url,
                    content=body,
                    headers={**headers, "Host": host_header},
                    extensions={"sni_hostname": server_name},
                )
            except httpx2.ConnectError as error:
                failure = f"{type(error).__name__}: could not reach the receiver"
                continue  # the name's next address, if any
            except httpx2.HTTPError as error:
                return None, f"{type(error).__name__}: could not reach the receiver", None
            status_code = response.status_code
            if 200 <= status_code < 300:
                return status_code, None, None
            if response.is_redirect:
                location = response.headers.get("location", "?")
                return (
                    status_code,
                    f"receiver answered {status_code} (a redirect to {location[:200]}, not "
                    "followed: callback_url must be the final address)",
                    None,
                )
            return status_code, f"receiver answered {status_code}", _retry_after(response)
    return None, failure, None


async def _record_attempt(
    sessions: async_sessionmaker[AsyncSession],
    job_id: str,
    status_code: int | None,
    failure: str | None,
    acknowledged: bool = False,
) -> None:
    async with sessions.begin() as db:
        await db.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(callback_last_status=status_code, callback_last_error=failure)
        )
        if acknowledged:
            await db.execute(
                update(Job)
                .where(Job.id == job_id, Job.callback_acknowledged_at.is_(None))
                .values(callback_acknowledged_at=func.now())
            )
