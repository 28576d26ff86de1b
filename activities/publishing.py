"""Publishing an approved review: the output stored in Postgres, then an optional webhook.

The webhook URL comes from settings (``KEEL_REVIEW_WEBHOOK_URL``) and never travels through
workflow history, logs or error messages: it may carry a token. Only its host is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.publishing import PublishInput, WebhookDelivery, WebhookInput
from infra.settings import KeelSettings
from infra.tables import PublishedDocument

log = structlog.get_logger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10.0
# Answers that mean "try again later"; any other 4xx means the receiver refuses this payload.
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class PublishingActivities:
    """Publishing a review, with the worker's settings (the webhook URL) and database sessions."""

    def __init__(self, settings: KeelSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessions = sessions

    def all(self) -> list[Callable[..., Any]]:
        return [self.publish_document, self.deliver_review_webhook]

    @activity.defn(name="publish_document")
    async def publish_document(self, request: PublishInput) -> int:
        """Store the published text once per workflow and return its id (a retry finds the row)."""
        async with self._sessions.begin() as session:
            await session.execute(
                insert(PublishedDocument)
                .values(**request.model_dump())
                .on_conflict_do_nothing(index_elements=["workflow_id"])
            )
            published_id = (
                await session.execute(
                    select(PublishedDocument.id).where(
                        PublishedDocument.workflow_id == request.workflow_id
                    )
                )
            ).scalar_one()
        return int(published_id)

    @activity.defn(name="deliver_review_webhook")
    async def deliver_review_webhook(self, request: WebhookInput) -> WebhookDelivery:
        """POST the published document to the configured webhook. The receiver deduplicates on the
        ``Idempotency-Key`` header: Temporal may deliver more than once, never zero times."""
        settings = self._settings
        if settings.review_webhook_url is None:
            raise ApplicationError(
                "no webhook configured (KEEL_REVIEW_WEBHOOK_URL)",
                type="WebhookNotConfigured",
                non_retryable=True,
            )
        url = settings.review_webhook_url.get_secret_value()
        host = urlsplit(url).netloc.rpartition("@")[2] or "(invalid url)"
        async with self._sessions() as session:
            content = (
                await session.execute(
                    select(PublishedDocument.content).where(
                        PublishedDocument.id == request.published_id
                    )
                )
            ).scalar_one()
        body = {"event": "review.published", **request.model_dump(), "content": content}
        try:
            async with httpx2.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
                response = await client.post(
                    url,
                    json=body,
                    headers={"Idempotency-Key": f"review.published/{request.workflow_id}"},
                )
        except httpx2.HTTPError as error:
            # str(error) can contain the URL: report the class and the host only.
            raise ApplicationError(
                f"webhook at {host} unreachable ({type(error).__name__})", type="WebhookUnreachable"
            ) from None
        status = response.status_code
        log.info("review.webhook", host=host, status=status, attempt=activity.info().attempt)
        if 200 <= status < 300:
            return WebhookDelivery(host=host, status=status)
        retryable = status >= 500 or status in _RETRYABLE_STATUSES
        raise ApplicationError(
            f"webhook at {host} answered HTTP {status}",
            type="WebhookFailed" if retryable else "WebhookRejected",
            non_retryable=not retryable,
        )
