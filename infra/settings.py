"""keel's one settings class.

Every setting is read here and nowhere else: ``KEEL_*`` environment variables, a ``.env`` file,
plus the variables the wider ecosystem already uses (``TEMPORAL_ADDRESS``, ``DATABASE_URL``,
``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from activities.llm.models import CallPolicy, FallbackPolicy

INTERACTIVE_TASK_QUEUE = "keel-interactive"
BATCH_TASK_QUEUE = "keel-batch"


def _default_home() -> Path:
    return Path.cwd() / ".keel"


class KeelSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEEL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # An empty variable (e.g. `OPENAI_API_KEY=` in compose) means unset, not an empty key.
        env_ignore_empty=True,
    )

    home: Path = Field(
        default_factory=_default_home,
        description="Where the zero-setup stack keeps its data, logs and pid files.",
    )

    # --- Temporal -------------------------------------------------------------------------
    temporal_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"),
        description="host:port of a Temporal frontend. Unset: the dev server keel starts.",
    )
    temporal_namespace: str = Field(
        default="default",
        validation_alias=AliasChoices("KEEL_TEMPORAL_NAMESPACE", "TEMPORAL_NAMESPACE"),
    )
    dev_temporal_port: int = 7233
    dev_temporal_ui_port: int = 8233
    interactive_task_queue: str = INTERACTIVE_TASK_QUEUE
    batch_task_queue: str = BATCH_TASK_QUEUE

    # --- Postgres -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_DATABASE_URL", "DATABASE_URL"),
        description="postgresql://… URL. Unset: the embedded Postgres keel starts under home.",
    )
    dev_postgres_port: int = 5499

    # --- LLM providers --------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    simulator_port: int = 8299
    simulator_url: str | None = Field(
        default=None,
        description="Base URL of a running keel LLM simulator (no /v1). Unset: "
        "http://127.0.0.1:<simulator_port> whenever no provider key is configured.",
    )

    # --- Routes and reliability ----------------------------------------------------------
    routes: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "quality": ["gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini"],
            "balanced": ["gpt-4o-mini", "claude-3-5-haiku-latest"],
            "cheap": ["gpt-4o-mini", "claude-3-5-haiku-latest"],
        },
        description="Named fallback chains: a request names a route, the chain names models.",
    )
    default_route: str = "balanced"
    interactive_policy: CallPolicy = CallPolicy(
        start_to_close_seconds=60,
        heartbeat_seconds=15,
        schedule_to_close_seconds=180,
        maximum_attempts=3,
        initial_interval_seconds=0.5,
        backoff_coefficient=2.0,
        maximum_interval_seconds=10,
    )
    batch_policy: CallPolicy = CallPolicy(
        start_to_close_seconds=300,
        heartbeat_seconds=60,
        schedule_to_close_seconds=3600,
        maximum_attempts=8,
        initial_interval_seconds=2,
        backoff_coefficient=2.0,
        maximum_interval_seconds=120,
    )
    fallback_policy: FallbackPolicy = FallbackPolicy.FAIL
    fallback_response: str = (
        "We could not produce an answer right now. Your request is saved; please try again later."
    )
    safe_default_response: str = "This request cannot be answered."
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_window_seconds: float = Field(default=60, gt=0)
    breaker_cooldown_seconds: float = Field(default=30, gt=0)

    # --- Logging --------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        return Path(value).expanduser().resolve() if isinstance(value, (str, Path)) else value

    # --- Derived values -------------------------------------------------------------------
    @property
    def uses_dev_temporal(self) -> bool:
        return self.temporal_address is None

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.dev_temporal_port}"

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL (asyncpg driver) of the database keel uses."""
        raw = (
            self.database_url.get_secret_value()
            if self.database_url is not None
            else f"postgresql://postgres@127.0.0.1:{self.dev_postgres_port}/keel"
        )
        return to_asyncpg_url(raw)

    @property
    def uses_simulator(self) -> bool:
        return self.openai_api_key is None and self.anthropic_api_key is None

    @property
    def effective_simulator_url(self) -> str:
        return self.simulator_url or f"http://127.0.0.1:{self.simulator_port}"

    @property
    def web_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.dev_temporal_ui_port}"


def to_asyncpg_url(url: str) -> str:
    """Accept the usual spellings of a Postgres URL and return the asyncpg-driver form."""
    for prefix in (
        "postgresql+asyncpg://",
        "postgresql+psycopg://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(
        f"DATABASE_URL must start with postgresql:// (got {url.split('://', 1)[0]}://…); "
        "set it to e.g. postgresql://user@127.0.0.1:5432/keel"
    )


@lru_cache(maxsize=1)
def get_settings() -> KeelSettings:
    return KeelSettings()
