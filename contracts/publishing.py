"""A reviewed document's publication: what is stored, and what its review webhook is sent."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Publication(BaseModel):
    """What a published review says about itself: stored with the text, sent to the webhook."""

    workflow_id: str
    tenant: str
    source_name: str
    approval_gate: str | None = None
    approved_by: list[str] = Field(default_factory=list)
    flagged: bool = False


class PublishInput(Publication):
    content: str


class WebhookInput(Publication):
    published_id: int


class WebhookDelivery(BaseModel):
    host: str
    status: int
