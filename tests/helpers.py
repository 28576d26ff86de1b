"""Helpers every test area shares: waiting for a condition without fixed sleeps, reading what
keel wrote (the ledger, the audit trail) for assertions, and running the real ``keel`` CLI."""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from sqlalchemy import select
from temporalio.client import Client

from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import AuditEvent, LlmCall
from tests.worker_processes import REPO_ROOT, worker_environment

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], object] = ...,
    timeout: float = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    accept: Callable[[T], object] = ...,
    timeout: float = ...,
    interval: float = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    accept: Callable[[Any], object] = bool,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> Any:
    """Poll ``probe`` (sync or async) until ``accept`` holds for its value, and return that value.

    ``timeout`` is a generous bound for a loaded machine, not a timing assertion; when it runs
    out the AssertionError shows the last value seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if accept(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still not there after {timeout}s: {value!r}")
        await asyncio.sleep(interval)


async def ledger_rows(
    workflow_id: str | None = None, *, tenant: str | None = None
) -> list[LlmCall]:
    """The ledger's rows, oldest first: one workflow's and/or one tenant's."""
    statement = select(LlmCall).order_by(LlmCall.id)
    if tenant is not None:
        statement = statement.where(LlmCall.tenant == tenant)
    if workflow_id is not None:
        statement = statement.where(LlmCall.workflow_id == workflow_id)
    async with session_factory()() as session:
        return list((await session.execute(statement)).scalars())


async def audit_events(workflow_id: str) -> list[AuditEvent]:
    """One workflow's audit trail, oldest first."""
    async with session_factory()() as session:
        result = await session.execute(
            select(AuditEvent).where(AuditEvent.workflow_id == workflow_id).order_by(AuditEvent.id)
        )
        return list(result.scalars())


KEEL = Path(sys.executable).parent / "keel"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class KeelCli:
    """The real ``keel`` command in a subprocess, pointed at the test's servers:
    ``await KeelCli(client, settings)("batch", "list")``."""

    def __init__(
        self, client: Client, settings: KeelSettings, *, columns: int = 250, **env: str
    ) -> None:
        # Wide and colourless, so commands print on one line each, as a person copies them.
        self.env = worker_environment(
            client, settings, **{"COLUMNS": str(columns), "NO_COLOR": "1", **env}
        )

    async def __call__(self, *args: str, timeout: float = 90) -> CliResult:
        process = await asyncio.create_subprocess_exec(
            str(KEEL),
            *args,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode is not None
        return CliResult(process.returncode, out.decode(), err.decode())


@asynccontextmanager
async def codec_server_process() -> AsyncIterator[str]:
    """The real `keel codec-server` process, with the suite's keys, on a free port: its URL."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starters.codec_server", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        first_line = (await asyncio.wait_for(server.stdout.readline(), 60)).decode()
        assert "keel codec-server on http://127.0.0.1:" in first_line, first_line
        yield first_line.split(" on ")[1].split()[0]
    finally:
        server.terminate()
        await server.wait()
