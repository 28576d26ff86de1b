"""keel's Postgres tables as SQLAlchemy 2 typed models.

Alembic owns the schema (``migrations/``); these models are what it is generated from, and
``alembic check`` (run in the tests) proves the two agree.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so migrations are reproducible and reviewable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

USD = Numeric(18, 8)


def _now() -> Any:
    return func.now()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


class ChatSession(Base):
    """A conversation. Its messages live in ``messages``; the workflow holds only a cursor."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    workflow_id: Mapped[str | None] = mapped_column(String(300))
    model_route: Mapped[str | None] = mapped_column(String(100))
    summary: Mapped[str | None] = mapped_column(Text)
    # Messages with seq <= this are folded into `summary` and no longer sent to the model.
    summarized_through_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    summary_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    system_prompt: Mapped[str | None] = mapped_column(Text)
    # An explicit model chain; null means `model_route` (or the default route) decides.
    models: Mapped[list[Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        # A retried turn (same idempotency key) never stores its messages twice.
        UniqueConstraint("session_id", "turn_id", "role"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    turn_id: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str | None] = mapped_column(Text)
    # An assistant message's tool calls ([{id, name, arguments}]); a tool message's call id;
    # a user message's images ([{url, detail}]).
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSONB)
    tool_call_id: Mapped[str | None] = mapped_column(String(200))
    images: Mapped[list[Any] | None] = mapped_column(JSONB)
    tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    summarized: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Assistant messages: who answered, and what the answering call was billed.
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cost_usd: Mapped[Decimal | None] = mapped_column(USD)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class AuditEvent(Base):
    """Append-only trail of everything that happened to a workflow that a person may ask about.

    Each workflow's rows are a hash chain (``seq``, ``prev_hash``, ``row_hash``; see
    ``infra/audit_chain.py``) whose head is in ``audit_chain_heads``. The application's database
    role may INSERT rows, never UPDATE or DELETE them; ``keel purge`` (role keel_retention) may
    only blank ``payload`` and set ``purged_at``.
    """

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # Derived from workflow id + activity id (+ a suffix): a retried activity writes the row once.
    event_key: Mapped[str] = mapped_column(String(500), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(300))
    run_id: Mapped[str | None] = mapped_column(String(100))
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    event_type: Mapped[str] = mapped_column(String(100))
    actor: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    # Position in the workflow's chain: 1, 2, 3, … with no gaps.
    seq: Mapped[int] = mapped_column(Integer)
    # The previous row's row_hash (64 zeros for seq 1).
    prev_hash: Mapped[str] = mapped_column(String(64))
    # sha256 of the payload's canonical JSON: still vouches for a purged payload.
    payload_sha256: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))
    # Set by `keel purge` when it replaced the payload with the purge marker.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditChainHead(Base):
    """The last row of each workflow's audit chain, written with every row: deleting the last
    rows of a trail leaves the head pointing past its end. Its row lock serializes a workflow's
    writers."""

    __tablename__ = "audit_chain_heads"

    workflow_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class LlmCall(Base):
    """The ledger: one row per attempt of an LLM call, success or failure, billed tokens in."""

    __tablename__ = "llm_calls"
    __table_args__ = (
        # run_id belongs in the key: activity ids restart at "1" in every run, so after a
        # continue-as-new (or a new run of the same workflow id) the same trio names a new attempt.
        UniqueConstraint("workflow_id", "run_id", "activity_id", "attempt"),
        Index(None, "tenant", "created_at"),
        Index(None, "model", "created_at"),
        # Budget checks sum the reservations of a tenant's calls in flight: a few rows at most.
        Index(
            "ix_llm_calls_tenant_in_flight",
            "tenant",
            postgresql_where=text("outcome = 'in_flight'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(300), index=True)
    run_id: Mapped[str | None] = mapped_column(String(100))
    activity_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(100))
    route: Mapped[str | None] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(200))
    prompt_hash: Mapped[str] = mapped_column(String(64), index=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Null when the price table does not know the model: never a guess.
    cost_usd: Mapped[Decimal | None] = mapped_column(USD)
    latency_ms: Mapped[int] = mapped_column(Integer)
    first_token_ms: Mapped[int | None] = mapped_column(Integer)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # ok | error | cached | short_circuited, or in_flight while the provider call runs and
    # interrupted when the worker died during it (a later attempt of the same activity says so)
    outcome: Mapped[str] = mapped_column(String(30))
    error_class: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    # What the budget check set aside for this attempt while it runs (worst case: max_tokens
    # of output); counted against the tenant's budgets while the row is in_flight.
    reserved_usd: Mapped[Decimal | None] = mapped_column(USD)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class TenantDailySpend(Base):
    """Metered spend per tenant and UTC day, kept by the statement that completes each ledger
    row, so a budget check reads a bounded number of rows instead of summing the month's ledger.

    Each day is split into shards: one row per tenant-day would be a lock every completion of
    that tenant queues behind (a batch of 200 concurrent calls serialised on it)."""

    __tablename__ = "tenant_daily_spend"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default="0")
    spent_usd: Mapped[Decimal] = mapped_column(USD, default=0, server_default="0")
    calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class RateLimitBucket(Base):
    """One shared rate limiter (GCRA) per scope ("openai", "openai:gpt-4o") and unit."""

    __tablename__ = "rate_limit_buckets"

    scope: Mapped[str] = mapped_column(String(250), primary_key=True)
    # requests | tokens
    unit: Mapped[str] = mapped_column(String(20), primary_key=True)
    # Theoretical arrival time: the bucket is full when it is in the past.
    tat: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Approval(Base):
    """The current state of one approval gate; its history is in ``audit_events``."""

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("workflow_id", "gate"),
        Index(None, "status", "requested_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(300))
    gate: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(100))
    # pending | approved | rejected | edited | timed_out | cancelled
    status: Mapped[str] = mapped_column(String(30))
    reason_requested: Mapped[str | None] = mapped_column(Text)
    required_role: Mapped[str] = mapped_column(String(100))
    escalation_level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    draft: Mapped[str | None] = mapped_column(Text)
    final: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    decision_reason: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Four-eyes: how many distinct approvers the gate needs (decided_by counts them).
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # One line a reviewer sees in `keel approvals`, e.g. "summary of q3-report.md".
    subject: Mapped[str | None] = mapped_column(String(300))
    # The run that opened the gate: a new run under the same workflow id starts it afresh.
    run_id: Mapped[str | None] = mapped_column(String(100))


class Reviewer(Base):
    """Who may decide approval gates: one row per reviewer and role (`keel reviewers add`)."""

    __tablename__ = "reviewers"
    __table_args__ = (Index(None, "role"),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(100), primary_key=True)
    added_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class PublishedDocument(Base):
    """The output of a DocumentReview: what was published, and on whose approval."""

    __tablename__ = "published_documents"
    __table_args__ = (Index(None, "tenant", "published_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # One publication per workflow: a retried publish step never publishes twice.
    workflow_id: Mapped[str] = mapped_column(String(300), unique=True)
    tenant: Mapped[str] = mapped_column(String(100))
    source_name: Mapped[str] = mapped_column(String(500))
    content: Mapped[str] = mapped_column(Text)
    # Null when policy let the draft through without a gate.
    approval_gate: Mapped[str | None] = mapped_column(String(200))
    approved_by: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    # Approved by a gate's default action at its deadline: no human looked at it.
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    workflow_id: Mapped[str] = mapped_column(String(300))
    # queued | loading | running | paused | cancelled | completed | aborted | refused
    status: Mapped[str] = mapped_column(String(30))
    source_name: Mapped[str | None] = mapped_column(String(500))
    route: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    concurrency: Mapped[int] = mapped_column(Integer)
    total_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    budget_usd: Mapped[Decimal | None] = mapped_column(USD)
    max_failure_rate: Mapped[float | None]
    # Why the batch is paused, cancelled or aborted, in words a person can act on.
    status_reason: Mapped[str | None] = mapped_column(Text)
    # The Temporal Schedule that started this batch, if one did.
    schedule_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class BatchItem(Base):
    __tablename__ = "batch_items"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id"),
        Index(None, "batch_id", "status", "line_no"),
        Index(None, "claim_token"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(200), ForeignKey("batches.id", ondelete="CASCADE"))
    custom_id: Mapped[str] = mapped_column(String(500))
    line_no: Mapped[int] = mapped_column(Integer)
    # pending | running | ok | failed | skipped
    status: Mapped[str] = mapped_column(String(20))
    request: Mapped[dict[str, Any] | None] = mapped_column()
    response: Mapped[dict[str, Any] | None] = mapped_column()
    model: Mapped[str | None] = mapped_column(String(200))
    error_class: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[Decimal | None] = mapped_column(USD)
    # Which claim (workflow run + claim number) took the item: a retried claim returns the
    # same items instead of taking new ones.
    claim_token: Mapped[str | None] = mapped_column(String(200))
    # How many times the item was sent to the LLM (retry-failed sends it again).
    run_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class ProviderBatchChunk(Base):
    """One provider batch (OpenAI Batch API, Anthropic Message Batches) carrying some of a keel
    batch's items: written before anything is sent, so a retried submission finds it (and the
    provider's id once known) instead of submitting twice."""

    __tablename__ = "provider_batch_chunks"
    __table_args__ = (
        UniqueConstraint("batch_id", "round", "seq"),
        Index(None, "provider", "provider_batch_id", unique=True),
    )

    # "<batch id>.r<round>.c<seq>": also the metadata / custom-id key the provider sees.
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(200), ForeignKey("batches.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(200))
    # planned | submitting | submitted | ended | withdrawn (contracts.provider_batch.ChunkStatus)
    status: Mapped[str] = mapped_column(String(20))
    # The batch_items.line_no of each item the chunk carries (its provider custom id is "k<no>").
    line_nos: Mapped[list[Any]] = mapped_column()
    item_count: Mapped[int] = mapped_column(Integer)
    request_bytes: Mapped[int] = mapped_column(BigInteger)
    # The most the chunk can cost (every answer at max_tokens), reserved against the budget.
    worst_case_usd: Mapped[Decimal | None] = mapped_column(USD)
    provider_batch_id: Mapped[str | None] = mapped_column(String(200))
    provider_file_id: Mapped[str | None] = mapped_column(String(200))
    provider_status: Mapped[str | None] = mapped_column(String(30))
    request_counts: Mapped[dict[str, Any] | None] = mapped_column()
    succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    returned: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cost_usd: Mapped[Decimal | None] = mapped_column(USD)
    submit_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class Budget(Base):
    __tablename__ = "budgets"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    # day | month
    period: Mapped[str] = mapped_column(String(10), primary_key=True)
    limit_usd: Mapped[Decimal] = mapped_column(USD)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class CircuitBreaker(Base):
    """One breaker per provider + model, shared by every worker process (see ARCHITECTURE.md)."""

    __tablename__ = "circuit_breakers"

    provider: Mapped[str] = mapped_column(String(50), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    # closed | open | half_open
    state: Mapped[str] = mapped_column(String(20), default="closed", server_default="closed")
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    window_started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now()
    )
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    probe_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error_class: Mapped[str | None] = mapped_column(String(50))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class CachedResponse(Base):
    """Answers to temperature-0 calls, keyed by the prompt hash (model + messages + parameters)."""

    __tablename__ = "llm_response_cache"

    prompt_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(50))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class StreamEvent(Base):
    """One event of a token stream (a chat turn's deltas, retry markers, the final text).

    ``seq`` is dense per stream, so a client resuming after event n asks for seq > n and sees
    no gap and no duplicate. Rows are short-lived: finished streams are pruned after a day.
    """

    __tablename__ = "stream_events"
    __table_args__ = (UniqueConstraint("stream_key", "seq"), Index(None, "created_at"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    stream_key: Mapped[str] = mapped_column(String(300))
    seq: Mapped[int] = mapped_column(Integer)
    # attempt | delta | done | error
    type: Mapped[str] = mapped_column(String(20))
    # Which activity attempt produced the event ("<activity id>/<attempt>"); null for events
    # the workflow writes (done, error).
    attempt: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Job(Base):
    """An async job started over HTTP: its outcome and the delivery state of its callback."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    # running | completed | failed
    status: Mapped[str] = mapped_column(String(20))
    result: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    callback_last_status: Mapped[int | None] = mapped_column(Integer)
    callback_last_error: Mapped[str | None] = mapped_column(Text)
    # Set once, by the first acknowledged delivery; later attempts see it and stop.
    callback_acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token for keel's HTTP API, scoped to one tenant and one role.

    Only the SHA-256 of the secret is stored: the token is shown once, at `keel token create`.
    The secret is 256 random bits, so a fast hash is enough (nothing to brute-force).
    """

    __tablename__ = "api_tokens"

    # Public, printable id (`tok_…`): what `keel token list/revoke` and the logs name.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    # client | reviewer | admin
    role: Mapped[str] = mapped_column(String(20))
    # The reviewer a reviewer token decides as (a name in `reviewers`); null for other roles.
    reviewer: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(300))
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OpenAiFile(Base):
    """A file of the OpenAI Files API (``api/files.py``), one tenant's.

    An uploaded batch input keeps its bytes here (``content``, read only by the content route):
    large data lives in Postgres, and a batch's workflow gets only ids. A batch's output and
    error files have no bytes of their own: their lines are made from ``batch_items`` on each
    read, so they cannot disagree with the batch's results.
    """

    __tablename__ = "openai_files"
    __table_args__ = (
        Index(None, "tenant", "created_at"),
        # One output file and one error file per batch, however many readers race to make it.
        UniqueConstraint("batch_id", "purpose"),
        # A retried upload with the same Idempotency-Key is the same file.
        UniqueConstraint("tenant", "idempotency_key"),
    )

    # file-<24 hex>, as OpenAI's look.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    # batch (an uploaded input) | batch_output | batch_error
    purpose: Mapped[str] = mapped_column(String(30))
    filename: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Deferred: listing and retrieving files never loads a 100 MB column.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # The batch whose results a generated file holds.
    batch_id: Mapped[str | None] = mapped_column(
        String(200), ForeignKey("batches.id", ondelete="CASCADE")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    # Deleted through the API: the row stays (a batch still names its output file, and a
    # deleted output file must not be made again), the content goes.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OpenAiBatch(Base):
    """What the OpenAI Batches API (``api/batches.py``) adds to a keel batch: the file it came
    from, its endpoint, window and metadata, and its output and error files once it is done."""

    __tablename__ = "openai_batches"
    __table_args__ = (
        Index(None, "tenant", "created_at"),
        UniqueConstraint("tenant", "idempotency_key"),
    )

    batch_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    tenant: Mapped[str] = mapped_column(String(100))
    # No foreign key: OpenAI lets a batch's input file be deleted while the batch lives.
    input_file_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(100))
    completion_window: Mapped[str] = mapped_column(String(20))
    # ("metadata" is the declarative base's own attribute.)
    request_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the completion window passed before the batch finished (it is then cancelled).
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """A reviewer signed in to the web console (``/console``): a reviewer token exchanged for a
    cookie. Only the SHA-256 of the cookie's secret is stored. The session lives no longer than
    its token: a revoked or expired token ends it at the next request."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("api_tokens.id", ondelete="CASCADE")
    )
    # Every form of this session carries it; a POST without it is refused (and audited).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    signed_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
