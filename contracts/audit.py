"""The audit event a workflow or activity records: a plain model, importable inside workflows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AuditEventInput(BaseModel):
    # Derived from the workflow's history (workflow id + run id + a replay-stable uuid), so a
    # retried write or a replayed workflow records the event once.
    event_key: str
    workflow_id: str
    run_id: str | None = None
    tenant: str = "default"
    event_type: str
    actor: str = "keel"
    payload: dict[str, Any] = Field(default_factory=dict)
