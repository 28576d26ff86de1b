"""structlog configuration and the worker interceptor that binds who-is-running to every line.

JSON when stderr is not a terminal (workers, CI), a readable console on one. Secrets never reach a
line: a processor masks API keys, bearer tokens and anything in a secret-named field.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from infra.settings import KeelSettings, get_settings

REDACTED = "***"
_SECRET_KEY_NAMES = re.compile(
    r"(api[_-]?key|authorization|password|secret|token|cookie|dsn|database_url)",
    re.IGNORECASE,
)
_SECRET_VALUE_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI-style keys
    re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{8,}"),  # Anthropic keys
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-~+/=]{8,}"),
    re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:)[^@\s]+(@)"),  # password in a DSN
    # keel's API tokens (infra/api_tokens.py): keel_tok_<id>_<secret>. The public id stays
    # readable; anything after it, or anything shaped like a token that is not one, goes.
    re.compile(r"(\bkeel_tok_[0-9a-f]{16}_)[A-Za-z0-9_\-]+"),
    re.compile(r"\bkeel_tok_(?![0-9a-f]{16}_\*)[A-Za-z0-9_\-]+"),
)
# Keys that match _SECRET_KEY_NAMES but hold no secret: token counts, and API token ids (the
# public `tok_…` half of a token, what a person needs to find and revoke it).
_TOKEN_COUNT_KEYS = {
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "token_id",
    "api_token_id",
}


def redact_text(text: str) -> str:
    for pattern in _SECRET_VALUE_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if key not in _TOKEN_COUNT_KEYS and _SECRET_KEY_NAMES.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(key, v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the last step before rendering, so nothing bypasses it."""
    return {key: _redact_value(key, value) for key, value in event_dict.items()}


class _RedactingFilter(logging.Filter):
    """For stdlib records that never pass through structlog (httpx, temporalio, alembic)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True  # a structlog event dict: redact_secrets handles it
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class _CurrentStderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever ``sys.stderr`` is now, so redirection after set-up still works."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_configured = False


def configure_logging(settings: KeelSettings | None = None, *, force: bool = False) -> None:
    global _configured
    if _configured and not force:
        return
    settings = settings or get_settings()
    level = getattr(logging, settings.log_level.upper())
    use_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # Redact before the event leaves structlog, so no handler ever sees a secret.
        processors=[
            *shared,
            redact_secrets,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            renderer,
        ],
    )
    handler = _CurrentStderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request lines from the HTTP clients would otherwise drown the useful events.
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "anthropic", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    _configured = True


class LogContextInterceptor(Interceptor):
    """Binds workflow_id, run_id, activity type and attempt to every log line an activity writes."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLogContext(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowLogContext


class _ActivityLogContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            activity=info.activity_type,
            activity_id=info.activity_id,
            attempt=info.attempt,
        ):
            return await self.next.execute_activity(input)


class _WorkflowLogContext(WorkflowInboundInterceptor):
    """Workflow code logs through ``workflow.logger`` (replay-safe); its records carry the ids in
    ``extra``. This binds them for anything structlog renders while the workflow task runs."""

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            workflow_type=info.workflow_type,
        ):
            return await self.next.execute_workflow(input)
