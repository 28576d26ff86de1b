"""keel's one settings class.

Every setting is read here and nowhere else: ``KEEL_*`` environment variables, a ``.env`` file,
plus the variables the wider ecosystem already uses (``TEMPORAL_ADDRESS``, ``DATABASE_URL``,
``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.approvals import ReviewPolicy
from contracts.llm import CallPolicy, FallbackPolicy
from contracts.provider_batch import ProviderBatchSettings
from contracts.traffic import BudgetPolicy, RateLimit, RoutePolicy
from infra.outbound_guard import OutboundPolicy

INTERACTIVE_TASK_QUEUE = "keel-interactive"
BATCH_TASK_QUEUE = "keel-batch"


HOME_DIR_NAME = ".keel"
PROJECT_NAME = "keel"


@lru_cache(maxsize=1)  # where this code lives does not change while it runs
def installed_checkout() -> Path | None:
    """The keel project (checkout) the running ``keel`` comes from, if there is one.

    Its source tree when keel is installed editable into it (``make install``, ``uv sync``), or
    the project whose ``.venv`` runs keel (a non-editable install into a checkout's virtualenv).
    A plain ``pip install keel`` into some other environment has none.
    """
    source_root = Path(__file__).resolve().parents[1]
    for candidate in (source_root, Path(sys.prefix).resolve().parent):
        if _is_keel_project(candidate):
            return candidate
    return None


def _is_keel_project(directory: Path) -> bool:
    try:
        project = tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return bool(project.get("project", {}).get("name") == PROJECT_NAME)


def user_data_home() -> Path:
    """``$XDG_DATA_HOME/keel``, else ``~/.local/share/keel`` (the XDG base directory rule: a
    relative XDG_DATA_HOME is ignored)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / PROJECT_NAME


def _default_home() -> Path:
    """Where keel's home is when KEEL_HOME is unset: never the working directory, so every
    ``keel`` command run from anywhere finds the same stack, key file and pid files."""
    checkout = installed_checkout()
    return checkout / HOME_DIR_NAME if checkout is not None else user_data_home()


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
        description="Where the zero-setup stack keeps its data, logs, pid files and key file. "
        "Unset: <checkout>/.keel of the keel checkout the `keel` command is installed from, "
        "else $XDG_DATA_HOME/keel (~/.local/share/keel); never the working directory.",
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
    workflow_sandbox: bool = Field(
        default=False,
        description=(
            "Run workflow code in Temporal's sandbox on keel's workers. Off: keel's workflows "
            "are proven sandbox-clean and deterministic by its test suite (the workflow tests "
            "and the replay tests run them in the sandbox), and the sandbox costs each new "
            "workflow about 5 ms of CPU to re-import its modules and each workflow task about "
            "as much again to build payload contexts inside it (ARCHITECTURE.md, 'Temporal "
            "wiring'). On: for workflows of your own registered on keel's workers."
        ),
    )
    # How long a worker told to stop (SIGTERM) lets its in-flight activities finish before it
    # cancels them (Temporal retries those elsewhere). Ten seconds under the grace its platform
    # gives it (deploy/kubernetes terminationGracePeriodSeconds, compose stop_grace_period: 60 s
    # interactive, 120 s batch) so the process exits 0 before it is killed.
    interactive_shutdown_grace_seconds: float = Field(
        default=50,
        gt=0,
        description="Seconds an interactive worker lets in-flight activities finish after "
        "SIGTERM; keep it under the platform's kill grace (60 s in deploy/).",
    )
    batch_shutdown_grace_seconds: float = Field(
        default=110,
        gt=0,
        description="Seconds a batch worker lets in-flight activities finish after SIGTERM; "
        "keep it under the platform's kill grace (120 s in deploy/).",
    )

    def shutdown_grace_seconds(self, queue: str) -> float:
        """The drain time of the worker polling ``queue``."""
        if queue == self.batch_task_queue:
            return self.batch_shutdown_grace_seconds
        return self.interactive_shutdown_grace_seconds

    # --- Payload encryption (infra/payload_codec.py, `keel codec-server`) ------------------
    encryption: bool = Field(
        default=True,
        description="Encrypt every payload keel writes to Temporal (AES-256-GCM). Off "
        "(KEEL_ENCRYPTION=off) stores prompts and answers readable in history; keys still "
        "decrypt what was written while it was on.",
    )
    encryption_keys: SecretStr | None = Field(
        default=None,
        description="`id:base64key` entries, comma-separated, newest first: the first "
        "encrypts, every one decrypts. Unset: the key file.",
    )
    encryption_keys_file: Path | None = Field(
        default=None,
        description="Key file (one `id:base64key` per line, newest first), used when "
        "KEEL_ENCRYPTION_KEYS is unset. Unset: <home>/encryption-keys.",
    )
    codec_server_host: str = "127.0.0.1"
    codec_server_port: int = Field(default=8234, ge=0, le=65535)
    codec_server_cors_origins: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Browser origins (the Web UI's) allowed to call the codec server, "
        "comma-separated. Unset: the dev Web UI, http://localhost:<ui port> and "
        "http://127.0.0.1:<ui port>.",
    )
    codec_server_token: SecretStr | None = Field(
        default=None,
        description="When set, codec server requests must send `Authorization: Bearer <token>`.",
    )

    # --- Postgres -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KEEL_DATABASE_URL", "DATABASE_URL"),
        description="postgresql://… URL. Unset: the embedded Postgres keel starts under home.",
    )
    dev_postgres_port: int = 5499
    database_role: str | None = Field(
        default="keel_app",
        description="Role every application session takes at connect (SET ROLE as a startup "
        "parameter): keel_app may not UPDATE or DELETE audit rows even when DATABASE_URL logs "
        "in as a superuser. `none` keeps the login user's own privileges.",
    )
    retention_database_role: str | None = Field(
        default="keel_retention",
        description="Role `keel purge` takes: it may only blank content columns. `none` keeps "
        "the login user's own privileges.",
    )

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

    # --- Traffic and cost control (activities/llm/budgets.py, rate_limits.py, routing.py) -----
    route_policies: dict[str, RoutePolicy] = Field(
        default_factory=dict,
        description="Per route: canary chains with traffic weights, the cheaper route to "
        'downgrade to, and purposes always sent there, e.g. {"quality": {"canaries": '
        '[{"models": ["gpt-4.1"], "weight": 5}], "downgrade_to": "cheap"}}.',
    )
    rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict,
        description='Requests and tokens per minute per provider ("openai") or provider:model '
        '("openai:gpt-4o"), shared by every worker, e.g. {"openai": {"requests_per_minute": '
        '500, "tokens_per_minute": 200000}}.',
    )
    rate_limit_max_wait_seconds: float = Field(
        default=20,
        ge=0,
        description="Longest a call waits for its rate-limit slot inside the activity; a later "
        "slot is taken by a Temporal retry instead (or, when that would be past the call's "
        "deadline, by the next model of the route).",
    )
    interactive_budget_policy: BudgetPolicy = BudgetPolicy.DOWNGRADE
    # Batch calls raise LlmBudgetExceeded: the batch workflow pauses the whole batch at its
    # approval gate (one gate, not a timer per item in flight).
    batch_budget_policy: BudgetPolicy = BudgetPolicy.REFUSE
    budget_downgrade_below: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Routes with a downgrade_to switch to it once a budget of the tenant has "
        "less than this share left.",
    )
    budget_pause_poll_seconds: float = Field(default=15, gt=0)
    budget_pause_poll_max_seconds: float = Field(default=300, gt=0)
    budget_pause_max_seconds: float = Field(
        default=86_400, gt=0, description="A paused call gives up (LlmBudgetExceeded) after this."
    )

    # --- Observability (infra/metrics.py, infra/tracing.py) -------------------------------
    metrics_enabled: bool = Field(
        default=True, description="Serve a Prometheus endpoint (/metrics) from each worker."
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="0: an ephemeral port; a port already taken (two workers on one host) also "
        "falls back to an ephemeral one, logged at start.",
    )
    metrics_refresh_seconds: float = Field(
        default=15, gt=0, description="How often a worker re-reads the gauges kept in Postgres."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "KEEL_OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="Export traces over OTLP (http/protobuf) here; unset: tracing is off.",
    )
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = Field(
        default="http/protobuf",
        validation_alias=AliasChoices(
            "KEEL_OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
    )
    otel_service_name: str = Field(
        default="keel",
        validation_alias=AliasChoices("KEEL_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME"),
    )

    # --- Chat sessions ---------------------------------------------------------------------
    session_answer_tokens: int = Field(
        default=1024, ge=1, description="max_tokens of a chat answer: reserved in the context."
    )
    session_context_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Cap on the tokens sent per turn. Unset: the model's context window minus "
        "the answer reserve.",
    )
    model_context_windows: dict[str, int] = Field(
        default_factory=dict,
        description="Context windows by model, overriding genai-prices' table.",
    )
    default_context_window: int = Field(
        default=8192, ge=256, description="Context window assumed for a model nobody knows."
    )
    session_summary_route: str = Field(
        default="cheap", description="Route of the model that folds old turns into a summary."
    )
    session_keep_recent_ratio: float = Field(
        default=0.5, gt=0, lt=1, description="Share of the budget kept verbatim after a fold."
    )
    session_summary_ratio: float = Field(
        default=0.25, gt=0, lt=1, description="Share of the budget the summary may take."
    )
    session_idle_timeout_seconds: float = Field(
        default=1800,
        gt=0,
        description="A session workflow idle this long completes (its "
        "history stays in Postgres; the next turn starts a new run).",
    )
    session_max_turns_per_run: int = Field(
        default=500,
        ge=1,
        description="Continue-as-new after this many turns, if the server "
        "has not suggested it before.",
    )
    stream_retention_hours: float = Field(default=24, gt=0)

    # --- HTTP API --------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8300
    console_session_hours: float = Field(
        default=8,
        gt=0,
        le=24 * 7,
        description="How long a reviewer stays signed in to the web console (never longer "
        "than their token lives).",
    )
    shed_in_flight: int = Field(
        default=64,
        ge=1,
        description="Low-priority requests get 503 once this API process has this many "
        "interactive requests in flight.",
    )
    shed_backlog: int = Field(
        default=20,
        ge=1,
        description="…or once the interactive task queue's backlog (DescribeTaskQueue) is this "
        "long.",
    )
    shed_retry_after_seconds: int = Field(default=2, ge=1)
    interactive_latency_budget_ms: int = Field(
        default=300,
        ge=10,
        description="Admission control's budget: how long keel itself may take from admitting "
        "a streamed interactive request to starting its call to the provider (the provider's "
        "own time is not counted). When accepted requests take longer, this API process "
        "admits fewer at once: new requests beyond the limit get 503 + Retry-After, low "
        "priority first, then normal; high priority only when high-priority work alone fills "
        "the limit.",
    )
    admission_min_in_flight: int = Field(
        default=4,
        ge=1,
        description="Admission control never lowers this API process's limit below this many "
        "interactive requests in flight.",
    )
    admission_max_in_flight: int = Field(
        default=512,
        ge=1,
        description="…nor raises it above this many.",
    )
    stream_keep_alive_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A streamed answer quiet this long gets a keep-alive (an SSE comment), so "
        "proxies and clients do not time the connection out.",
    )
    callback_signing_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key that signs job callbacks. Unset: the secret file.",
    )
    callback_signing_secret_file: Path | None = Field(
        default=None,
        description="File holding the callback signing secret (mode 0600), read when "
        "KEEL_CALLBACK_SIGNING_SECRET is unset; `keel dev up` creates it. Unset: "
        "<home>/callback-signing-secret.",
    )
    callback_timeout_seconds: float = Field(default=10, gt=0)
    callback_allowed_destinations: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Non-public destinations job callbacks may go to, comma-separated: host "
        "names, addresses, CIDR networks or `loopback` (public addresses are always allowed; "
        "loopback, private, link-local, metadata, CGNAT and reserved ones are refused). `none`: "
        "nothing. Unset: loopback for the zero-setup stack (no TEMPORAL_ADDRESS), else nothing.",
    )

    image_fetch_allowed_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Non-public hosts keel may fetch image URLs from, when it must inline an "
        "image for a provider that takes base64 (Anthropic): host names, addresses, CIDR "
        "networks or `loopback`, comma-separated. Public addresses are always allowed.",
    )
    image_fetch_max_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1, description="Largest image keel fetches to inline."
    )
    image_fetch_timeout_seconds: float = Field(default=10, gt=0)
    model_capabilities: dict[str, list[str]] = Field(
        default_factory=dict,
        description='What a model supports, for models keel does not know, e.g. {"my-llama": '
        '["tools"]}: a model listed here supports only what is listed (tools, json_schema, '
        "images, seed). A fallback model lacking what a request needs is skipped.",
    )

    # --- Human oversight (approval gates) -------------------------------------------------
    reviewers: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Reviewers and their roles, e.g. {"alice": ["editor"]}; added to the '
        "reviewers table (`keel reviewers add`), which is the usual place to manage them.",
    )
    review_policy: ReviewPolicy = Field(
        default_factory=ReviewPolicy,
        description="When DocumentReview asks a human and how its gate behaves (JSON).",
    )
    review_webhook_url: SecretStr | None = Field(
        default=None,
        description="POST each published review here (it may carry a token, so it is read by "
        "the publishing activity and never enters workflow history).",
    )

    # --- Batches ----------------------------------------------------------------------------
    batch_concurrency: int = Field(
        default=50, ge=1, le=2000, description="Items in flight per batch unless --concurrency."
    )
    batch_history_event_limit: int = Field(
        default=9000,
        ge=200,
        le=50_000,
        description="A batch run continues-as-new before its history reaches this many events.",
    )
    batch_budget_role: str = Field(
        default="batch-owner",
        description="Reviewer role that may raise a batch's budget or stop it at its gate.",
    )
    batch_budget_gate_hours: float = Field(
        default=72, gt=0, description="An undecided budget gate stops the batch after this long."
    )
    provider_batch: ProviderBatchSettings = Field(
        default_factory=ProviderBatchSettings,
        description="Provider batch mode (--via provider): first and longest wait between polls, "
        "rounds for lines the provider failed or expired before they run live (JSON).",
    )

    # --- Input limits (infra/input_limits.py, api/request_limits.py) -----------------------
    max_prompt_chars: int = Field(
        default=200_000,
        ge=1,
        description="Characters of one request's prompt, all its messages together (ask, chat, "
        "review, each batch line, the API). Chat turns and reviewed documents are also capped "
        "at 200,000 by their workflows, whatever this says (Temporal payload size).",
    )
    max_prompt_tokens: int = Field(
        default=128_000,
        ge=1,
        description="Estimated tokens of one request's prompt (keel's count, a little above real "
        "tokenizers). The LLM activity refuses a larger prompt before any provider sees it, and "
        "chat sessions fold their history to stay under it.",
    )
    max_messages: int = Field(
        default=1_000, ge=1, description="Messages in one request (API, batch line)."
    )
    max_request_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="HTTP request bodies larger than this get 413, counted as they arrive "
        "(chunked bodies too) before anything parses them.",
    )
    max_batch_file_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="A larger batch file is refused whole."
    )
    max_batch_line_bytes: int = Field(
        default=1_000_000,
        ge=1,
        description="A longer batch line is a malformed line (its item fails, or --strict "
        "refuses the file); it carries one request through workflow history.",
    )
    max_batch_items: int = Field(
        default=100_000, ge=1, description="A batch file with more items is refused whole."
    )

    # --- Logging --------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("database_role", "retention_database_role", mode="before")
    @classmethod
    def _no_role(cls, value: Any) -> Any:
        # An empty variable means unset (env_ignore_empty), so "none" is how to say "no role".
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        return Path(value).expanduser().resolve() if isinstance(value, (str, Path)) else value

    @field_validator(
        "callback_allowed_destinations", "image_fetch_allowed_destinations", mode="before"
    )
    @classmethod
    def _split_destinations(cls, value: Any) -> Any:
        if isinstance(value, str):  # "hooks.internal,10.1.0.0/16" (a JSON list is accepted too)
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            if text.lower() == "none":
                return []
            return [entry.strip() for entry in text.split(",") if entry.strip()]
        return value

    @field_validator("callback_allowed_destinations")
    @classmethod
    def _check_destinations(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            OutboundPolicy.parse("KEEL_CALLBACK_ALLOWED_DESTINATIONS", value)  # names a bad entry
        return value

    @field_validator("image_fetch_allowed_destinations")
    @classmethod
    def _check_image_destinations(cls, value: list[str]) -> list[str]:
        OutboundPolicy.parse("KEEL_IMAGE_FETCH_ALLOWED_DESTINATIONS", value)
        return value

    @field_validator("codec_server_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # "https://a,https://b" (a JSON list is accepted too)
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip().rstrip("/") for origin in text.split(",") if origin.strip()]
        return value

    @field_validator("codec_server_cors_origins")
    @classmethod
    def _refuse_wildcard_origins(cls, value: list[str] | None) -> list[str] | None:
        # With credentials allowed, Starlette answers "*" (and "null") by echoing whatever
        # origin asks: every web page the operator visits could call /decode.
        for origin in value or []:
            if origin in ("*", "null"):
                raise ValueError(
                    f"KEEL_CODEC_SERVER_CORS_ORIGINS may not contain {origin!r}: it would let "
                    "any web page call the codec server; list the Web UI's origins, e.g. "
                    "http://localhost:8080"
                )
        return value

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

    @property
    def home_origin(self) -> str:
        """Why ``home`` is what it is (for `keel config show` and `keel dev status`)."""
        if "home" in self.model_fields_set:
            return "KEEL_HOME"
        checkout = installed_checkout()
        if checkout is not None:
            return f"the keel checkout keel runs from ({checkout})"
        return "the user default ($XDG_DATA_HOME/keel or ~/.local/share/keel)"

    @property
    def effective_encryption_keys_file(self) -> Path:
        return self.encryption_keys_file or self.home / "encryption-keys"

    @property
    def effective_callback_signing_secret_file(self) -> Path:
        return self.callback_signing_secret_file or self.home / "callback-signing-secret"

    @property
    def effective_callback_allowed_destinations(self) -> list[str]:
        if self.callback_allowed_destinations is not None:
            return self.callback_allowed_destinations
        # The zero-setup stack runs on one machine: its README receiver listens on loopback.
        return ["loopback"] if self.uses_dev_temporal else []

    @property
    def effective_codec_server_cors_origins(self) -> list[str]:
        if self.codec_server_cors_origins is not None:
            return self.codec_server_cors_origins
        return [
            f"http://localhost:{self.dev_temporal_ui_port}",
            f"http://127.0.0.1:{self.dev_temporal_ui_port}",
        ]


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
