"""What a command that did not handle an error prints instead of a traceback.

Commands turn what they expect into messages of their own (``fail``); this is the floor under all
of them, for what any command can meet: Temporal or Postgres unreachable, Postgres or Temporal
refusing a request. Anything else is a bug and still shows its traceback.
"""

from __future__ import annotations

from types import TracebackType

from pydantic import AliasChoices, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from infra.settings import KeelSettings, get_settings
from infra.temporal_client import TemporalUnreachable

# (message, hint) as starters.output.fail prints them.
Explanation = tuple[str, str | None]


def _database_where() -> str:
    url = make_url(get_settings().effective_database_url)
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _database_hint() -> str:
    if get_settings().uses_embedded_postgres:
        return "start the dev stack with `keel dev up` (keel dev status shows what runs)"
    return "check DATABASE_URL and that Postgres is up"


def _passes_through(traceback: TracebackType | None, package: str) -> bool:
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module == package or module.startswith(package + "."):
            return True
        traceback = traceback.tb_next
    return False


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _setting_variables(field: str) -> str:
    """The environment variable(s) a settings field is read from."""
    info = KeelSettings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return " or ".join(str(choice) for choice in alias.choices)
    prefix = KeelSettings.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def _invalid_settings(error: ValidationError) -> Explanation:
    # The input is never echoed: the invalid value may be a key or a URL with a password.
    problems = "; ".join(
        f"{_setting_variables(str(problem['loc'][0])) if problem['loc'] else 'settings'}: "
        f"{problem['msg']}"
        for problem in error.errors()
    )
    return (
        f"invalid setting: {problems}",
        "fix that variable (in the environment or the .env file) and run the command again",
    )


def explain(error: BaseException) -> Explanation | None:
    """A message and a hint for ``error``, or None when it is not one keel expects anywhere."""
    if isinstance(error, ValidationError) and error.title == KeelSettings.__name__:
        return _invalid_settings(error)
    if isinstance(error, WorkflowAlreadyStartedError):
        return (
            f"a workflow with id {error.workflow_id!r} already exists",
            f"see it: keel show {error.workflow_id} · or choose another --id",
        )
    if isinstance(error, TemporalUnreachable):  # its message already says what to do
        return str(error), None
    if isinstance(error, RPCError):
        settings = get_settings()
        return (
            f"Temporal at {settings.effective_temporal_address} refused the request: "
            f"{error.message} ({error.status.name})",
            "keel dev status shows whether the stack runs; check TEMPORAL_ADDRESS and "
            "KEEL_TEMPORAL_NAMESPACE",
        )
    if isinstance(error, DBAPIError):
        return (
            f"Postgres at {_database_where()}: {_first_line(error.orig or error)}",
            _database_hint(),
        )
    # asyncpg raises the socket's own error when it cannot connect (refused, unknown host,
    # timeout); SQLAlchemy passes it through unwrapped.
    if isinstance(error, OSError) and (
        _passes_through(error.__traceback__, "asyncpg")
        or _passes_through(error.__traceback__, "sqlalchemy")
    ):
        return f"cannot reach Postgres at {_database_where()}: {error}", _database_hint()
    if isinstance(error, OSError) and error.filename is not None:  # a path given to a command
        return f"{error.filename}: {error.strerror}", "check the path and its permissions"
    return None
