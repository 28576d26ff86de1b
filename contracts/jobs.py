"""The async-job contract between the job workflow and its activities (plain models, no I/O)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobKind(StrEnum):
    """Workflows a job may run. Each maps to a workflow and its input model (workflows/jobs.py)."""

    ASK = "ask"


class JobStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class JobInput(BaseModel):
    kind: JobKind
    input: dict[str, Any]
    tenant: str = "default"
    callback_url: str | None = None


class JobOutput(BaseModel):
    status: JobStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    callback_acknowledged: bool = False


class JobRecord(BaseModel):
    job_id: str
    tenant: str
    kind: JobKind
    status: JobStatus
    callback_url: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


class CallbackDelivery(BaseModel):
    job_id: str


class CallbackOutcome(BaseModel):
    status_code: int | None = None
    already_acknowledged: bool = False
    attempts: int = Field(default=0, ge=0)
