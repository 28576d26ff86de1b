"""Running the real ``keel`` CLI in a subprocess, pointed at the test's servers."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from infra.settings import KeelSettings
from tests.worker_processes import worker_environment

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
    def __init__(self, client: Client, settings: KeelSettings, **env: str) -> None:
        # Wide and colourless, so commands print on one line each, as a person copies them.
        self.env = worker_environment(
            client, settings, **{"COLUMNS": "250", "NO_COLOR": "1", **env}
        )

    async def __call__(self, *args: str, timeout: float = 90) -> CliResult:
        process = await asyncio.create_subprocess_exec(
            str(KEEL),
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode is not None
        return CliResult(process.returncode, out.decode(), err.decode())
