"""The simulator's configuration: one pydantic model, settable at start and partly live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmsim.catalog import ModelSpec
from llmsim.faults import PROFILES, FaultProfile


class CannedResponse(BaseModel):
    """Answer with ``content`` when the last user message contains ``match``."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(min_length=1, description="Substring of the last user message.")
    content: str = Field(description="The exact reply text (still cut by max_tokens).")
    model: str | None = Field(default=None, description="Only for this model; None: any.")
    times: int | None = Field(
        default=None, ge=1, description="Use at most this many times; None: forever."
    )


class BatchSimConfig(BaseModel):
    """How the simulated batch APIs (OpenAI Batch, Anthropic Message Batches) behave. A batch
    keeps the settings it was created with, so a test can change them for the next batch only.

    Lines are answered at an even pace over ``processing_s`` after ``validating_s``; a batch
    whose processing would outlast ``expire_after_s`` expires then, with the lines not yet
    answered reported expired, as the real APIs do after their 24 h window."""

    model_config = ConfigDict(extra="forbid")

    validating_s: float = Field(default=0.0, ge=0, description="OpenAI's validating phase.")
    processing_s: float = Field(default=1.0, ge=0, description="From in progress to ended.")
    line_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of lines answered with a server error."
    )
    expire_after_s: float | None = Field(
        default=None, ge=0, description="The batch expires this long after it started."
    )


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0: an ephemeral port.")
    seed: int = Field(default=0, description="Seeds reply text and probabilistic faults.")
    latency_scale: float = Field(
        default=1.0, ge=0, description="Multiplies every model's latency; 0: no delay at all."
    )
    fixed_latency_s: float | None = Field(
        default=None, ge=0, description="Every successful call takes about this long instead."
    )
    profile: str = Field(default="none", description=f"Fault profile: {', '.join(PROFILES)}.")
    faults: FaultProfile = Field(
        default_factory=FaultProfile,
        description="Extra rules (override the profile's) and scripted faults at start.",
    )
    canned_responses: list[CannedResponse] = Field(default_factory=list)
    models: list[ModelSpec] = Field(
        default_factory=list, description="Extra models (or replacements for defaults)."
    )
    min_output_tokens: int = Field(default=24, ge=1, description="Natural reply length, low.")
    max_output_tokens: int = Field(default=96, ge=1, description="Natural reply length, high.")
    stream_chunk_tokens: int = Field(default=2, ge=1, description="Tokens per streamed delta.")
    prompt_cache: bool = Field(
        default=True, description="Report cached prompt tokens for repeated prompt prefixes."
    )
    batch: BatchSimConfig = Field(default_factory=BatchSimConfig)
    access_log: bool = False
    log_level: str = "warning"

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        if self.min_output_tokens > self.max_output_tokens:
            raise ValueError("min_output_tokens must not exceed max_output_tokens")
        return self

    def startup_faults(self) -> FaultProfile:
        """The named profile's rules, then ``faults`` (its rules added after, so a rule for
        the same model and kind wins), plus ``faults``' scripted queue."""
        base = PROFILES[self.profile]
        return FaultProfile(
            rules=[*base.rules, *self.faults.rules],
            scripted=[*base.scripted, *self.faults.scripted],
        )


def load_profile_file(path: str | Path) -> FaultProfile:
    """Read a fault profile from JSON, or YAML when the name ends in .yaml / .yml.

    Format: ``{"rules": [{"model": "gpt-4o", "kind": "rate_limit", "rate": 0.2,
    "retry_after_s": 1}], "scripted": [{"model": "gpt-4o", "kind": "server_error",
    "count": 2}]}``.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    data: Any
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is a dev dependency
            raise RuntimeError("YAML profiles need PyYAML; use a .json profile") from exc
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return FaultProfile.model_validate(data or {})
